"""`selftune compare` on sweep folders written by hand in the layout a sweep leaves (selftune_sweep.yaml, Ray's
experiment state, one folder per trial with params.json and result.json): no Ray, no training, seconds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from selftune.analysis.compare import compare, importance_table, incumbents, overview, status_table
from selftune.cli import main

CLASSES = ["background", "road"]


def make_sweep(root: Path, name: str, trials: list[dict[str, Any]], *, method: str = "ema_self_training",
               verdict: dict[str, Any] | None = None, metric: str | None = None) -> Path:
    """A sweep folder: each trial is {id, params, curve: [(iteration, val_miou)], status (the last report's),
    ray: Ray's status}."""
    path = root / name
    path.mkdir(parents=True)
    meta = {"sweep": {"name": name, "space": "hand", "scheduler": "asha", "cpus_per_trial": 1.0},
            "base": {"method": method}, "class_names": CLASSES, "max_t": 40, "grace_period": 10, "data_root": "/d"}
    if metric is not None:
        meta["metric"] = metric  # the sweep's own metric, as selftune_sweep.yaml records it
    (path / "selftune_sweep.yaml").write_text(yaml.safe_dump(meta))
    state = []
    for n, t in enumerate(trials, 1):
        folder = f"selftune_trial_{t['id']}_{n}_x"
        (path / folder).mkdir()
        (path / folder / "params.json").write_text(json.dumps(t["params"]))
        lines = []
        for k, (it, v) in enumerate(t["curve"]):
            last = k == len(t["curve"]) - 1
            lines.append(json.dumps({"trial_id": t["id"], "iteration": it, "training_iteration": k + 1,
                                     "val_miou": v, "val_loss": 1 - v, "val_iou/background": v + 0.1,
                                     "val_iou/road": v - 0.1, "timestamp": 1_700_000_000 + 60 * n + k,
                                     "time_total_s": 10.0 * (k + 1), "time_this_iter_s": 10.0,
                                     "status": t["status"] if last else "running"}))
        (path / folder / "result.json").write_text("\n".join(lines) + "\n")
        state.append([json.dumps({"trial_id": t["id"], "status": t.get("ray", "TERMINATED"),
                                  "relative_logdir": folder, "experiment_tag": f"{n}_x"}), {}])
    (path / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps({"trial_data": state}))
    if verdict is not None:
        (path / "verdict.json").write_text(json.dumps(verdict))
    return path


def trials(n: int, lift: float = 0.0) -> list[dict[str, Any]]:
    """n trials, every third cut by ASHA at its rung at iteration 30; values rise with the trial's lr."""
    out = []
    for i in range(n):
        lr = 0.001 * (i + 1)
        top = 0.2 + 0.05 * i + lift
        cut = i % 3 == 2
        curve = [(10, top / 2), (20, top * 0.8)] + ([(30, top * 0.85)] if cut else [(30, top * 0.9), (40, top)])
        out.append({"id": f"t{i}", "params": {"lr": lr, "st_weight": 0.5 + i / 10, "method": "rounds" if i % 2
                                              else "ema_self_training"},
                    "curve": curve, "status": "running" if cut else "completed"})
    return out


VERDICT = {"trials": 5, "self_training_trials": 5, "control": {"iterations": 40}, "best_trial": {
    "trial_id": "t4", "method": "ema_self_training"}, "scores": {
    "val": {"best": 0.45, "control": 0.40, "delta": 0.05, "per_class": {}},
    "test": {"best": 0.42, "control": 0.44, "delta": -0.02, "per_class": {}}},
    "headline": "VERDICT: self-training (ema_self_training, trial t4) does NOT beat the compute-matched supervised "
                "control on test: 0.4200 vs 0.4400 mIoU (-2.00 points)"}


@pytest.fixture
def two(tmp_path: Path) -> tuple[Path, Path]:
    a = make_sweep(tmp_path, "wide", trials(6), verdict=VERDICT)
    b = make_sweep(tmp_path, "narrow", trials(3, lift=0.2), method="rounds")
    return a, b


def test_compare_writes_a_report_with_the_figure_and_prints_the_tables(two: tuple[Path, Path], tmp_path: Path,
                                                                       capsys) -> None:
    from PIL import Image

    out = tmp_path / "cmp"
    assert main(["compare", str(two[0]), str(two[1]), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("compare 2 sweeps on val_miou (max)")
    table = printed.split("\n\n")[1].splitlines()
    assert table[0].split()[:4] == ["sweep", "trials", "iterations", "best"]
    assert table[1].split()[:6] == ["wide", "6", str(4 * 40 + 2 * 30), "0.4", "t4", "ema_self_training"]
    assert table[2].split()[:6] == ["narrow", "3", str(2 * 40 + 30), "0.45", "t1", "rounds"]
    assert "does NOT beat control on test (-2.00 points)" in table[1]
    assert "wide: VERDICT: self-training (ema_self_training, trial t4) does NOT beat" in printed
    assert f"wrote {out}: report.html, progress.png/.html, overview.csv" in printed

    report = (out / "report.html").read_text()
    for section in ("Overview", "Verdicts", "Incumbents", "Trials per status", "Importance"):
        assert f"<h2>{section}</h2>" in report, section
    assert report.count("data:image/png;base64,") == 1 and "href='progress.html'" in report
    assert 'src="plotly.min.js"' in (out / "progress.html").read_text() and (out / "plotly.min.js").is_file()
    with Image.open(out / "progress.png") as im:
        assert im.size[0] >= 800 and im.size[1] >= 400
    assert (out / "overview.csv").read_text().splitlines()[0].startswith("sweep,trials,statuses,iterations")


def test_the_tables_side_by_side(two: tuple[Path, Path]) -> None:
    c = compare([str(p) for p in two], write=False)
    assert c.png and not c.files  # rendered, nothing written
    inc = incumbents(c).set_index("sweep")
    assert inc.loc["wide", "best trial"] == "t4" and inc.loc["wide", "method"] == "ema_self_training"
    assert inc.loc["narrow", "method"] == "rounds"  # the trial's method parameter, not the base config's
    assert inc.loc["wide", "params"] == "lr=0.005, st_weight=0.9"
    st = status_table(c).set_index("sweep")
    assert st.loc["wide", "completed"] == 4 and st.loc["wide", "stopped by ASHA"] == 2 and st.loc["wide", "total"] == 6
    assert st.loc["narrow", "completed"] == 2 and st.loc["narrow", "stopped by ASHA"] == 1
    imp = importance_table(c)
    assert list(imp.columns) == ["parameter", "wide", "narrow"]
    assert imp["wide"].str.endswith("(#1)").sum() == 1  # ranks within each sweep
    assert set(imp["narrow"]) == {"-"}  # 3 scored trials: too few for importances
    assert overview(c)["verdict"].tolist() == ["does NOT beat control on test (-2.00 points)", "-"]

    by_loss = compare([str(p) for p in two], write=False, metric="val_loss")
    assert by_loss.mode == "min" and overview(by_loss)["best val_loss"].tolist() == ["0.6", "0.55"]


def test_the_default_metric_is_the_one_every_sweep_recorded(tmp_path: Path) -> None:
    a = make_sweep(tmp_path / "a", "a", trials(3), metric="val_loss")
    b = make_sweep(tmp_path / "b", "b", trials(3), metric="val_loss")
    other = make_sweep(tmp_path / "c", "c", trials(3), metric="val_miou")
    assert (compare([str(a), str(b)], write=False).metric, compare([str(a), str(b)], write=False).mode) == \
        ("val_loss", "min")
    assert compare([str(a), str(other)], write=False).metric == "val_miou"  # they differ: the default one


def test_same_names_are_told_apart_and_bad_input_is_one_message(tmp_path: Path, capsys) -> None:
    a = make_sweep(tmp_path / "x", "s", trials(3))
    b = make_sweep(tmp_path / "y", "s", trials(3))
    b2 = make_sweep(tmp_path / "z", "other", trials(3))
    c = compare([str(a), str(b), str(b2)], write=False)
    assert [e.label for e in c.sweeps] == ["s (1)", "s (2)", "other"]  # same name, same folder name: numbered
    assert main(["compare", str(a)]) == 2
    assert "compare needs at least two sweep folders" in capsys.readouterr().err
    assert main(["compare", str(a), str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
