"""`selftune compare` on sweep folders written by hand in the layout a sweep leaves (selftune_sweep.yaml, Ray's
experiment state, one folder per trial with params.json and result.json): no Ray, no training, seconds."""

from __future__ import annotations

from pathlib import Path

import pytest

from selftune.analysis.compare import compare, importance_table, incumbents, overview, status_table
from selftune.cli import main
from tests.helpers import make_sweep, sweep_trials

HEADLINE = ("VERDICT: NO CLEAR DIFFERENCE between self-training and supervised: ema_self_training (trial t4) vs "
            "tuned supervised (trial t2), test mIoU -2.00 points, 95% CI [-6.10, +2.10]; 3 fresh seeds per arm, 40 "
            "iterations each from scratch")
VERDICT = {"format": 2, "outcome": "no clear difference", "split": "test", "statistic": "mIoU", "headline": HEADLINE,
           "lines": [HEADLINE, "  self-training: test mIoU 42.00 (per seed 41.0, 42.0, 43.0)"],
           "difference": {"mean": -0.02, "low": -0.061, "high": 0.021}, "flags": [], "per_class": {}, "runs": [],
           "arms": {"self_training": {"method": "ema_self_training", "trial_id": "t4", "tuned": True, "mean": 0.42},
                    "supervised": {"method": "supervised", "trial_id": "t2", "tuned": True, "mean": 0.44}}}
OLD_VERDICT = {"headline": "VERDICT: self-training (ema_self_training, trial t4) beats the compute-matched supervised "
               "control on test: 0.4400 vs 0.4200 mIoU (+2.00 points)", "scores": {"test": {"delta": 0.02}}}


@pytest.fixture
def two(tmp_path: Path) -> tuple[Path, Path]:
    a = make_sweep(tmp_path, "wide", sweep_trials(6), verdict=VERDICT)
    b = make_sweep(tmp_path, "narrow", sweep_trials(3, lift=0.2), method="rounds")
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
    assert "no clear difference: -2.00 [-6.10, +2.10] on test" in table[1]
    assert f"wide: {HEADLINE}" in printed
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
    assert overview(c)["verdict"].tolist() == ["no clear difference: -2.00 [-6.10, +2.10] on test", "-"]

    by_loss = compare([str(p) for p in two], write=False, metric="val_loss")
    assert by_loss.mode == "min" and overview(by_loss)["best val_loss"].tolist() == ["0.6", "0.55"]


def test_the_default_metric_is_the_one_every_sweep_recorded(tmp_path: Path) -> None:
    a = make_sweep(tmp_path / "a", "a", sweep_trials(3), metric="val_loss")
    b = make_sweep(tmp_path / "b", "b", sweep_trials(3), metric="val_loss")
    other = make_sweep(tmp_path / "c", "c", sweep_trials(3), metric="val_miou")
    assert (compare([str(a), str(b)], write=False).metric, compare([str(a), str(b)], write=False).mode) == \
        ("val_loss", "min")
    assert compare([str(a), str(other)], write=False).metric == "val_miou"  # they differ: the default one


def test_same_names_are_told_apart_and_bad_input_is_one_message(tmp_path: Path, capsys) -> None:
    a = make_sweep(tmp_path / "x", "s", sweep_trials(3))
    b = make_sweep(tmp_path / "y", "s", sweep_trials(3))
    b2 = make_sweep(tmp_path / "z", "other", sweep_trials(3))
    c = compare([str(a), str(b), str(b2)], write=False)
    assert [e.label for e in c.sweeps] == ["s (1)", "s (2)", "other"]  # same name, same folder name: numbered
    assert main(["compare", str(a)]) == 2
    assert "compare needs at least two sweep folders" in capsys.readouterr().err
    assert main(["compare", str(a), str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_an_old_verdict_reads_labelled_and_never_as_a_win(tmp_path: Path) -> None:
    """A sweep written before the confirmation runs: its one-run "beats" is shown as an old verdict, no interval."""
    from selftune.analysis.verdict import load_verdict

    path = make_sweep(tmp_path, "old", sweep_trials(3), verdict=OLD_VERDICT)
    v = load_verdict(str(path))
    assert v is not None and v.outcome is None and v.cell() == "old verdict, no interval"
    assert "old verdict (before confirmation runs)" in v.lines()[1] and not len(v.per_class())
