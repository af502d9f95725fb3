"""Issue 19: a run survives crashes, broken files, noisy pools, odd class counts and bad input, with real files
and real tiny models (no mocks)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from selftune.cli import main
from tests.helpers import TINY_SETS, Reports, crash_and_resume, read_metrics, same, sets, tiny


def files_under(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} if root.exists() else {}


# ---------------------------------------------------------------------- bad input: one message, exit 2 (defect 10)


def test_a_bad_set_value_is_one_message_for_train_and_sweep(tiny_data: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    rc = main(["train", "--data", str(tiny_data), "--out", str(out), "--no-progress", "--set", "thresholds=[0.5,"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    (line,) = err.strip().splitlines()
    assert line.startswith("selftune: error: --set thresholds: value '[0.5,' is not valid YAML")
    assert not out.exists()
    rc = main(["sweep", "--check", "--storage", str(tmp_path / "sweeps"), "--set", "thresholds=[0.5,"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("selftune: error: --set thresholds: value '[0.5,' is not valid")
    assert not (tmp_path / "sweeps").exists()


def test_a_loop_of_symlinks_in_the_pool_is_one_message(tiny_data: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "data"
    shutil.copytree(tiny_data, root)
    (root / "unlabeled" / ".selftune_index.txt").unlink(missing_ok=True)
    pool = root / "unlabeled" / "images"
    os.symlink(pool / "b", pool / "a")
    os.symlink(pool / "a", pool / "b")
    before = files_under(root)
    rc = main(["data", "check", str(root)])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    (line,) = err.strip().splitlines()
    assert str(pool) in line and "loop" in line
    assert files_under(root) == before  # no index written


@pytest.mark.parametrize("where", ["a file", "under a file", "under /proc"])
def test_an_unusable_out_folder_is_one_message(tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               where: str) -> None:
    if where == "under /proc" and not Path("/proc/self").exists():
        pytest.skip("no /proc here")
    (tmp_path / "afile").write_text("not a folder")
    out = {"a file": tmp_path / "afile", "under a file": tmp_path / "afile" / "run",
           "under /proc": Path("/proc/selftune-test/run")}[where]
    before = files_under(tmp_path)
    rc = main(["train", "--data", str(tiny_data), "--out", str(out), "--no-progress", *sets("max_iters=4")])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    (line,) = err.strip().splitlines()
    assert line.startswith("selftune: error:") and str(out) in line
    assert files_under(tmp_path) == before


# ---------------------------------------------------------------------- datasets without 7 classes (defect 7)


def with_classes(tiny_data: Path, root: Path, k: int) -> Path:
    """A copy of the tiny data with `k` classes: ids folded into 0..k-1 (fewer than 7) or 7..k-1 unused (more)."""
    import numpy as np
    from PIL import Image

    shutil.copytree(tiny_data, root)
    (root / "classes.csv").write_text("id,name\n" + "".join(f"{i},class {i}\n" for i in range(k)))
    for mask in root.glob("*/masks/*.png"):
        ids = np.asarray(Image.open(mask))
        Image.fromarray((ids % k).astype(np.uint8)).save(mask)
    return root


@pytest.fixture(scope="module")
def three_and_eleven(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    top = tmp_path_factory.mktemp("classes")
    return with_classes(tiny_data, top / "three", 3), with_classes(tiny_data, top / "eleven", 11)


def test_the_default_thresholds_follow_the_class_count(three_and_eleven: tuple[Path, Path], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    three, eleven = three_and_eleven
    short = ["--no-progress"]
    for item in [*(s for s in TINY_SETS if not s.startswith("thresholds=")), "max_iters=4", "eval_every=4"]:
        short += ["--set", item]  # the default thresholds, not the 7 values the CLI tests give
    rc = main(["train", "--data", str(three), "--out", str(tmp_path / "three"), *short])
    assert rc == 0, capsys.readouterr().err
    saved = yaml.safe_load((tmp_path / "three" / "config.yaml").read_text())
    assert saved["thresholds"] == [0.5] * 3  # the config the run trained, saved with it
    rc = main(["train", "--data", str(three), "--out", str(tmp_path / "three"), "--resume", *short,
               "--set", "max_iters=4"])
    assert rc == 0, capsys.readouterr().err  # the same defaults resume the fitted run
    rc = main(["train", "--data", str(eleven), "--out", str(tmp_path / "eleven"), *short, "--set", "thresholds=[0.3]"])
    assert rc == 0, capsys.readouterr().err
    assert yaml.safe_load((tmp_path / "eleven" / "config.yaml").read_text())["thresholds"] == [0.3] * 11
    capsys.readouterr()
    rc = main(["train", "--data", str(eleven), "--out", str(tmp_path / "bad"), *short,
               "--set", "thresholds=[0.5, 0.6, 0.7]"])
    err = capsys.readouterr().err
    assert rc == 2 and "thresholds has 3 values but the dataset has 11 classes" in err
    assert "one value per class (11) or one value for all" in err and not (tmp_path / "bad").exists()


def test_a_sweep_on_eleven_classes_plans_with_the_defaults(three_and_eleven: tuple[Path, Path], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["sweep", "--check", "--data", str(three_and_eleven[1]), "--storage", str(tmp_path / "sweeps"),
               "--set", "crop_size=32"])  # the demo's 64 px crop on these 32 px tiles is refused by name
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "(11 classes)" in captured.out


# ---------------------------------------------------------------------- a runaway loss (defect 6)


def test_an_exploding_run_is_diverged_not_completed(tiny_data: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    explode = sets("max_iters=6", "lr=1000", "warmup_iters=0", "grad_clip=0")
    rc = main(["train", "--data", str(tiny_data), "--out", str(tmp_path / "run"), "--no-progress", *explode])
    out = capsys.readouterr().out
    assert rc == 3 and "status: diverged" in out
    assert "over divergence_factor 100 times its early reference" in out
    rc = main(["train", "--data", str(tiny_data), "--out", str(tmp_path / "off"), "--no-progress", *explode,
               "--set", "divergence_factor=0"])
    assert rc == 0 and "status: completed" in capsys.readouterr().out  # 0 disables the check (finite losses)


# ---------------------------------------------------------------------- two checkpoints, and why one is unreadable (defect 4)


def test_a_truncated_state_falls_back_to_the_previous_checkpoint(tiny_data: Path, tmp_path: Path) -> None:
    import torch

    from selftune.trainable.loop import train
    run = tmp_path / "run"
    cfg = tiny(max_iters=4, eval_every=2, log_images=False, fp_weight=0.0, strong_aug=False)
    train(cfg, tiny_data, run, progress=False)
    state, previous = run / "checkpoint" / "state.pt", run / "state.prev.pt"
    assert torch.load(previous, weights_only=True)["iteration"] == 2  # the one before, outside checkpoint/
    assert sorted(p.name for p in (run / "checkpoint").iterdir()) == ["state.pt"]  # what Ray copies: one state
    whole = torch.load(state, weights_only=True)
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    reports = Reports()
    with pytest.warns(UserWarning, match=rf"cannot read checkpoint {state}: the file is truncated.*"
                                         rf"resuming from the previous checkpoint {previous} \(iteration 2\)"):
        result = train(cfg, tiny_data, run, resume_from=run / "checkpoint", reporter=reports, progress=False)
    assert result.status == "completed" and [m["iteration"] for m, _ in reports] == [4]
    assert [m["iteration"] for m in read_metrics(run)] == [2, 4]
    again = torch.load(state, weights_only=True)  # steps 3-4 replayed exactly
    assert all(torch.equal(again["ema"][k], whole["ema"][k]) for k in whole["ema"])


@pytest.mark.parametrize(("content", "why"), [
    (b"", "the file is empty (0 bytes)"),
    (None, "the file is truncated"),
    (b"hello, not a checkpoint", "not a torch file (it starts with b'hell')"),
])
def test_an_unreadable_checkpoint_says_why(tmp_path: Path, content: bytes | None, why: str) -> None:
    import torch

    from selftune.errors import DataError
    from selftune.trainable import checkpoint as ckpt

    path = tmp_path / "state.pt"
    if content is None:
        torch.save({"x": torch.zeros(100)}, path)
        content = path.read_bytes()[:-40]
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        ckpt.load(path)
    assert str(err.value).startswith(f"cannot read checkpoint {path}: {why}")


def test_resume_without_a_readable_checkpoint_names_both_files(tiny_data: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    (run / "checkpoint").mkdir(parents=True)
    (run / "checkpoint" / "state.pt").write_bytes(b"")
    rc = main(["train", "--data", str(tiny_data), "--out", str(run), "--resume", "--no-progress", *sets()])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert f"cannot read checkpoint {run / 'checkpoint' / 'state.pt'}: the file is empty (0 bytes)" in err
    (run / "state.prev.pt").write_bytes(b"PK\x03\x04cut")
    rc = main(["train", "--data", str(tiny_data), "--out", str(run), "--resume", "--no-progress", *sets()])
    err = capsys.readouterr().err
    assert rc == 2 and "the previous checkpoint cannot be used either" in err
    assert f"{run / 'state.prev.pt'}: the file is truncated" in err


# ---------------------------------------------------------------------- a crash between checkpoint and metrics line (defect 3)


def test_a_metrics_line_lost_after_its_checkpoint_comes_back_on_resume(tiny_data: Path, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from selftune.trainable.loop import train
    def drop_last_line(path: Path) -> None:
        path.write_text("".join(path.read_text().splitlines(keepends=True)[:-1]))

    run = tmp_path / "run"
    cfg = tiny(max_iters=4, eval_every=2, log_images=False, fp_weight=0.0, strong_aug=False)
    train(cfg, tiny_data, run, progress=False)
    whole = read_metrics(run)
    drop_last_line(run / "metrics.jsonl")  # as if the run died between checkpoint 4 and its metrics line
    result = train(cfg, tiny_data, run, resume_from=run / "checkpoint", progress=False)
    assert result.message.startswith("nothing to do")
    assert same(read_metrics(run), whole)  # the finished run's last line is back, from state.pt
    drop_last_line(run / "metrics.jsonl")
    train(cfg.replace(max_iters=6), tiny_data, run, resume_from=run / "checkpoint", progress=False)
    assert [m["iteration"] for m in read_metrics(run)] == [2, 4, 6]
    assert same(read_metrics(run)[:2], whole)  # the lost line is the one the crashed attempt evaluated
    ea = EventAccumulator(str(run), size_guidance={"scalars": 0})
    ea.Reload()
    assert sorted({e.step for e in ea.Scalars("val_miou")}) == [2, 4, 6]


# ---------------------------------------------------------------------- a noisy unlabelled pool, a run that died early (defect 5)


def test_unreadable_pool_images_are_skipped_counted_and_resume_stays_exact(tiny_data: Path, tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from selftune.data import unlabeled_index
    from selftune.data.validate import UNLABELED_SAMPLE
    from selftune.trainable.loop import train
    root = tmp_path / "data"
    shutil.copytree(tiny_data, root)
    index = unlabeled_index(root)
    broken = [root / "unlabeled" / "images" / rel for rel in index[UNLABELED_SAMPLE:UNLABELED_SAMPLE + 3]]
    for path in broken:  # beyond the files data check decodes
        path.write_bytes(b"\x89PNG\r\n\x1a\ncut short")
    assert main(["data", "check", str(root)]) == 0
    capsys.readouterr()

    cfg = tiny(max_iters=8, log_images=False, fp_weight=0.0, strong_aug=False)
    skipped = r"unlabelled image skipped at step \d+: cannot decode .*: corrupt or not an image"
    with pytest.warns(UserWarning, match=skipped):
        result = train(cfg, root, tmp_path / "full", progress=False)
    assert result.status == "completed"
    full = read_metrics(tmp_path / "full")
    assert sum(m["unlabeled_skipped"] for m in full) > 0
    with pytest.warns(UserWarning):
        crash_and_resume(cfg, root, tmp_path / "resumed", at=4)
    assert same(read_metrics(tmp_path / "resumed"), full)  # batch t is still a pure function of t


def test_a_run_that_died_before_its_first_checkpoint_can_be_run_again(tiny_data: Path, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from selftune.trainable.config import TrainConfig

    def dead_run(run: Path) -> list[str]:
        run.mkdir()
        (run / "config.yaml").write_text(TrainConfig().to_yaml())  # what a run writes before its first step
        (run / "metrics.jsonl").write_text("")
        return ["train", "--data", str(tiny_data), "--out", str(run), "--no-progress",
                *sets("max_iters=4", "eval_every=4")]

    argv = dead_run(tmp_path / "run")
    with pytest.warns(UserWarning, match=rf"output folder {tmp_path / 'run'} holds a run that stopped before its "
                                         "first checkpoint"):
        rc = main(argv)
    assert rc == 0 and "status: completed" in capsys.readouterr().out
    rc = main(argv)  # now it holds a run: refused as before
    assert rc == 2 and "already holds a run" in capsys.readouterr().err
    rc = main([*dead_run(tmp_path / "other"), "--resume"])
    err = capsys.readouterr().err
    assert rc == 2 and "no checkpoint to resume from" in err and "can be started again" in err
