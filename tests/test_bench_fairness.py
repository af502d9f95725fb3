"""bench/demo_fairness.py's reading of ended runs and its learning-curve plot, on hand-written metrics files."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("demo_fairness", ROOT / "bench" / "demo_fairness.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_run(folder: Path, vals: list[float], tests: list[float], status: str) -> None:
    folder.mkdir(parents=True)
    rows = [dict(iteration=50 * (i + 1), val_miou=v, test_miou=t, status="running")
            for i, (v, t) in enumerate(zip(vals, tests, strict=True))]
    rows[-1]["status"] = status
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_score_is_test_at_best_val_and_plot_is_a_png(tmp_path: Path) -> None:
    bench = _bench()
    _write_run(tmp_path / "supervised-s0", [0.30, 0.45, 0.40], [0.31, 0.41, 0.44], "early_stopped")
    _write_run(tmp_path / "supervised-s1", [0.35, 0.36], [0.30, 0.33], "completed")
    _write_run(tmp_path / "self_training_rounds-s0", [0.46, 0.50], [0.44, 0.47], "completed")
    rows = bench._rows(tmp_path / "supervised-s0")
    summary = bench._summary("supervised", 0, rows, wall_s=0)
    assert summary["test_at_best_val"] == 0.41 and summary["best_iteration"] == 100  # not the best test (0.44)
    assert bench._ended(rows) and not bench._ended(rows[:2])

    png = tmp_path / "curves.png"
    bench.plot_curves(tmp_path, ["self_training_rounds", "supervised"], 2, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert not list(tmp_path.glob("*.tmp.png"))


def test_demo_set_is_generated_once_and_another_spec_or_version_is_refused_by_name(tmp_path: Path) -> None:
    from selftune.data.demo import MARKER, DemoSpec

    bench = _bench()
    spec = DemoSpec(size=16, n_train=2, n_val=1, n_test=0, n_unlabeled=0, unlabeled_masks=True)
    demo = bench.demo_set(tmp_path / "demo", spec)
    assert len(list((demo / "train" / "images").iterdir())) == 2
    assert bench.demo_set(demo, spec) == demo  # the same spec: read, not generated again

    with pytest.raises(SystemExit, match=r"n_train=3 \(it has 2\)"):
        bench.demo_set(demo, DemoSpec(size=16, n_train=3, n_val=1, n_test=0, n_unlabeled=0, unlabeled_masks=True))
    meta = json.loads((demo / MARKER).read_text())
    (demo / MARKER).write_text(json.dumps({**meta, "version": 1}))
    with pytest.raises(SystemExit, match="generator v1"):
        bench.demo_set(demo, spec)
    (demo / MARKER).unlink()
    with pytest.raises(SystemExit, match="not a selftune demo set"):
        bench.demo_set(demo, spec)


def test_train_surveys_option_reaches_the_demo_spec(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from selftune.data.demo import DemoSpec

    bench = _bench()
    bench.demo_set(tmp_path / "demo", DemoSpec(size=16, n_train=2, n_val=1, n_test=0, n_unlabeled=0,
                                               unlabeled_masks=True, train_surveys=8))
    with pytest.raises(SystemExit, match=r"train_surveys=4 \(it has 8\)"):  # refused before any run starts
        bench.main(["--work", str(tmp_path), "--train-surveys", "4", "--seeds", "1", "--oracle-seeds", "0"])
    assert not (tmp_path / "runs").exists()
    with pytest.raises(SystemExit) as bad:
        bench.main(["--work", str(tmp_path), "--train-surveys", "17"])
    assert bad.value.code == 2 and "train_surveys must be between 1 and 16, got 17" in capsys.readouterr().err


def test_survey_split_puts_each_test_tile_with_its_survey(tmp_path: Path) -> None:
    """A test tile goes to the labelled-surveys root exactly when rendering it as a labelled tile changes nothing."""
    import numpy as np
    from PIL import Image

    from selftune.data.demo import DemoSpec, generate_demo, render_tile, tile_rng

    spec = DemoSpec(size=16, n_train=2, n_val=1, n_test=24, n_unlabeled=1, seed=3, train_surveys=4)
    demo = generate_demo(tmp_path / "demo", spec)
    module_spec = importlib.util.spec_from_file_location("demo_survey_split", ROOT / "bench" / "demo_survey_split.py")
    split = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(split)
    roots = split.split_roots(demo, tmp_path / "work")
    names = {k: sorted(p.name for p in (r / "test" / "images").iterdir()) for k, r in roots.items()}
    assert sorted(names["labelled surveys"] + names["other surveys"]) == [f"test_{i:04d}.png" for i in range(24)]
    assert names["labelled surveys"] and names["other surveys"]
    for key, files in names.items():
        for name in files:
            image = np.asarray(Image.open(demo / "test" / "images" / name))
            as_labelled, _ = render_tile(tile_rng(3, "test", int(name[5:9])), 16, seed=3, index=int(name[5:9]),
                                         surveys=4)
            assert np.array_equal(image, as_labelled) == (key == "labelled surveys"), (key, name)
    with pytest.raises(SystemExit, match="exists"):
        split.split_roots(demo, tmp_path / "work")
    quick = split.split_roots(demo, tmp_path / "quick", limit=2)
    assert [len(list((r / "test" / "images").iterdir())) for r in quick.values()] == [2, 2]
