"""`selftune train` and `selftune evaluate` through the real command line entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from selftune.cli import main
from tests.helpers import sets


def test_train_then_resume_then_evaluate(tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    rc = main(["train", "--data", str(tiny_data), "--out", str(run), "--no-progress", *sets("max_iters=4", "eval_every=4")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "status: completed" in out and "best val mIoU:" in out
    assert str(run / "best_model_ema.pt") in out
    assert (run / "config.yaml").is_file() and (run / "checkpoint" / "state.pt").is_file()

    rc = main(["train", "--data", str(tiny_data), "--out", str(run), "--resume", "--no-progress",
               *sets("max_iters=8", "eval_every=4")])
    assert rc == 0
    assert [json.loads(line)["iteration"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [4, 8]
    capsys.readouterr()

    png = tmp_path / "plots" / "confusion.png"
    rc = main(["evaluate", "--checkpoint", str(run / "best_model_ema.pt"), "--data", str(tiny_data),
               "--confusion", str(png)])
    out = capsys.readouterr().out
    assert rc == 0
    for name in ("background", "water body", "snake fruit", "open land", "mIoU"):
        assert name in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    rc = main(["evaluate", "--checkpoint", str(run / "checkpoint"), "--data", str(tiny_data), "--split", "val"])
    assert rc == 0
    assert "split 'val'" in capsys.readouterr().out

    rc = main(["evaluate", "--checkpoint", str(run), "--data", str(tiny_data), "--tta", "d4"])
    out = capsys.readouterr().out
    assert rc == 0 and "test-time augmentation d4" in out and "mIoU" in out

    # d4 needs square images: a copy of the data whose test tiles are cut to 32x24 fails by name, flip still runs
    import shutil

    from PIL import Image

    wide = tmp_path / "nonsquare"
    shutil.copytree(tiny_data, wide)
    for sub in ("images", "masks"):
        for f in (wide / "test" / sub).iterdir():
            Image.open(f).crop((0, 0, 24, 32)).save(f)
    rc = main(["evaluate", "--checkpoint", str(run), "--data", str(wide), "--tta", "d4"])
    captured = capsys.readouterr()
    assert rc != 0 and "--tta d4 needs square images" in captured.err and "32x24" in captured.err
    rc = main(["evaluate", "--checkpoint", str(run), "--data", str(wide), "--tta", "flip"])
    assert rc == 0 and "test-time augmentation flip" in capsys.readouterr().out


def test_train_exit_codes(tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc = main(["train", "--data", str(tiny_data), "--out", str(tmp_path / "d"), "--no-progress",
               *sets("max_iters=6", "lr=1e30", "grad_clip=0")])
    assert rc == 3
    assert "status: diverged" in capsys.readouterr().out
    rc = main(["train", "--data", str(tiny_data), "--out", str(tmp_path / "x"), *sets("learning_rate=0.1")])
    assert rc == 2
    assert "unknown config key 'learning_rate'" in capsys.readouterr().err
    rc = main(["train", "--data", str(tiny_data), "--resume", *sets()])
    assert rc == 2
    assert "--resume needs --out" in capsys.readouterr().err
