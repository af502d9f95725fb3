"""Offline analysis of a real tiny sweep: tables, Optuna importance, figures, report, CLI, bad input,
half-finished sweeps, and the tools users already know (TensorBoard, optuna-dashboard, the notebook).

One sweep is run per module (about 50 s on 2 CPUs) and `analyze` runs on it once; the tests read
what they left on disk.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest

from selftune.analysis import analyze, load_history, load_study, load_trials, read_trials
from selftune.analysis.page import report_html
from selftune.analysis.report import Analysis
from selftune.cli import main
from selftune.errors import SelftuneError
from selftune.sweepfolder import optuna_state
from tests.helpers import tiny_config

ROOT = Path(__file__).resolve().parents[1]
TINY_BASE = tiny_config(log_images=True, num_threads=0)
SPACE_MODULE = '''
def tiny(trial, ctx):
    """A threshold, a log-scale ST weight, and an LR choice that includes one that diverges."""
    trial.suggest_float("threshold_base", 0.3, 0.95)
    trial.suggest_float("st_weight", 0.25, 3.0, log=True)
    trial.suggest_categorical("lr", [3e-4, 1e-3, 3e-3, 1e30])
    return {}
'''
FIGURES = ("progress", "learning_curves", "importance", "parallel_coordinates", "slice", "per_class_iou",
           "pseudo_labels", "verdict_per_class")  # the last one because the sweep trained its control
KNOWN_STATUSES = {"completed", "early_stopped", "stopped_by_asha", "stopped_by_budget", "diverged", "errored",
                  "running"}


@pytest.fixture(scope="module")
def sweep_dir(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six sequential trials with ASHA (reduction factor 2): some finish, some are cut. The seeded random
    searcher draws lr 1e30 (which diverges) for exactly one of them, the fourth."""
    import ray

    mod_dir = tmp_path_factory.mktemp("analysis_spaces")
    (mod_dir / "analysis_test_spaces.py").write_text(SPACE_MODULE)
    sys.path.insert(0, str(mod_dir))
    from selftune.search import SweepConfig, run_sweep

    sweep = SweepConfig(
        name="tiny", data=str(tiny_data), base=TINY_BASE, space="analysis_test_spaces:tiny", searcher="random", seed=17,
        num_samples=6, max_concurrent=1, reduction_factor=2, storage=str(tmp_path_factory.mktemp("results")),
        num_cpus=2, verbose=0, confirm_seeds=1, confirm_max_seeds=1, control_trials=1,  # the smallest verdict: 3 runs
    )
    try:
        summary = run_sweep(sweep)
    finally:
        ray.shutdown()
        sys.path.remove(str(mod_dir))
    return Path(summary.experiment_dir)


@pytest.fixture(scope="module")
def before(sweep_dir: Path) -> dict[str, float]:
    """Every file of the sweep folder and its mtime, before any analysis wrote anything."""
    return {str(p.relative_to(sweep_dir)): p.stat().st_mtime for p in sweep_dir.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def analysis(sweep_dir: Path, before: dict[str, float]) -> Analysis:
    return analyze(str(sweep_dir))  # default out: PATH/analysis


# ---------------------------------------------------------------------- the API


def test_load_trials_has_one_row_per_trial_with_params_metrics_and_status(sweep_dir: Path) -> None:
    trials = load_trials(str(sweep_dir))
    records = {r.trial_id: r for r in read_trials(str(sweep_dir))}
    assert len(trials) == len(records) == 6
    assert set(trials["status"]) <= KNOWN_STATUSES
    assert {"completed", "stopped_by_asha"} <= set(trials["status"]), trials["status"].tolist()
    for _, row in trials.iterrows():
        rec = records[row["trial_id"]]
        assert {k: row[f"param.{k}"] for k in rec.params} == rec.params
        assert row["iteration"] == rec.results[-1]["iteration"]
        scores = [r["val_miou"] for r in rec.results if math.isfinite(r["val_miou"])]
        assert row["best.val_miou"] == pytest.approx(max(scores))
        best = max((r for r in rec.results if math.isfinite(r["val_miou"])), key=lambda r: r["val_miou"])
        assert row["best_iteration"] == best["iteration"]
        assert row["best.val_iou/road"] == pytest.approx(best["val_iou/road"])  # metrics at the best evaluation
        assert row["final.val_miou"] == pytest.approx(rec.results[-1]["val_miou"])
        assert row["wall_time_s"] > 0 and row["cpu_hours"] == pytest.approx(row["wall_time_s"] / 3600)
        assert row["gpu_hours"] == 0
        if row["status"] != "diverged":
            assert Path(row["checkpoint"], "state.pt").is_file()  # the best checkpoint Ray kept
            assert Path(row["best_model"]).is_file()
    ranked = trials[~trials["status"].isin(["diverged", "errored"])]["best.val_miou"].tolist()
    assert ranked == sorted(ranked, reverse=True)  # best first
    diverged = trials[trials["status"] == "diverged"]
    assert (diverged["param.lr"] == 1e30).all()
    assert all(isinstance(m, str) and "diverged" in m for m in diverged["message"])

    assert str(trials["started_at"].dtype) == str(trials["ended_at"].dtype) == "datetime64[ms, UTC]"
    assert (trials["started_at"] < trials["ended_at"]).all()
    by_loss = load_trials(str(sweep_dir), metric="val_loss")  # a loss ranks lowest first
    losses = by_loss[~by_loss["status"].isin(["diverged", "errored"])]["best.val_loss"].tolist()
    assert losses == sorted(losses)


def test_load_history_is_long_format_with_every_reported_metric(sweep_dir: Path) -> None:
    history = load_history(str(sweep_dir))
    records = read_trials(str(sweep_dir))
    assert len(history) == sum(len(r.results) for r in records)
    assert not history.duplicated(["trial_id", "iteration"]).any()
    for name in ("val_miou", "val_miou_raw", "val_loss", "train_miou", "train_val_gap", "best_val_miou", "lr",
                 "loss_sup", "loss_st", "st_weight", "st_count", "st_ratio", "val_iou/road", "st_count/road",
                 "st_ratio/road", "threshold/road", "report_status", "node_id", "training_iteration",
                 "time_total_s"):
        assert name in history.columns, name
    assert "status" not in history.columns  # the report's own status is report_status: not the trial's status
    assert history["report_status"].tolist() == [r["status"] for t in sorted(records, key=lambda r: r.trial_id)
                                                 for r in t.results]
    one = records[0]
    rows = history[history["trial_id"] == one.trial_id]
    assert rows["iteration"].tolist() == [r["iteration"] for r in one.results]
    assert rows["val_miou"].tolist() == pytest.approx([r["val_miou"] for r in one.results], nan_ok=True)


def test_statuses_agree_with_the_optuna_study(sweep_dir: Path, analysis: Analysis) -> None:
    study = load_study(str(sweep_dir))
    assert len(study.trials) == 6
    states = analysis.trials.set_index("trial_id")["optuna_state"]
    for trial_id, status in analysis.trials.set_index("trial_id")["status"].items():
        assert states[trial_id] == optuna_state(status), (trial_id, status)


def test_importance_comes_from_optuna_over_completed_and_pruned_trials(analysis: Analysis) -> None:
    imp = analysis.importance
    assert imp.ok, imp.note
    assert set(imp.values) <= {"threshold_base", "st_weight", "lr"}
    assert sum(imp.values.values()) == pytest.approx(1.0)
    assert "PED-ANOVA" in imp.evaluator
    t = analysis.trials
    assert imp.n_trials == int(t["status"].isin(["completed", "early_stopped", "stopped_by_asha"]).sum())
    assert analysis.color_by == imp.ranked()[0]  # learning curves coloured by the most important one


def test_importances_side_by_side_and_the_complete_only_one_is_optunas(sweep_dir: Path, analysis: Analysis) -> None:
    """The report's two columns differ only in the trials: the COMPLETE-only one is what optuna.importance (and
    optuna-dashboard) compute on the persisted study, with the same evaluator."""
    from optuna.importance import PedAnovaImportanceEvaluator

    from selftune.analysis.study import COMPLETE_COLUMN, SELFTUNE_COLUMN

    report = (sweep_dir / "analysis" / "report.html").read_text()
    section = report.split("<h2>Importance</h2>")[1].split("<h2>")[0]
    assert f"<th>{SELFTUNE_COLUMN}</th>" in section and f"<th>{COMPLETE_COLUMN}</th>" in section
    assert "Same evaluator, different trials" in section
    study = load_study(str(sweep_dir))
    complete = analysis.complete_importance
    assert complete.n_trials == sum(t.state.name == "COMPLETE" for t in study.trials)
    assert complete.n_trials >= 2, "the fixture's sweep should complete at least 2 trials"
    expected = optuna.importance.get_param_importances(
        study, evaluator=PedAnovaImportanceEvaluator(target_quantile=analysis.importance.quantile))
    assert list(complete.values) == list(expected) and complete.values == pytest.approx(expected)
    assert complete.quantile == analysis.importance.quantile  # the same evaluator as selftune's column
    for p, v in complete.values.items():
        assert f"<td>{p}</td>" in section and f"{v:.3f} (#{list(expected).index(p) + 1})" in section


def test_param_importances_takes_a_path_like_its_siblings(sweep_dir: Path, analysis: Analysis) -> None:
    from selftune.analysis import load_sweep, param_importances

    by_path, astudy = param_importances(str(sweep_dir))
    assert by_path == analysis.importance and len(astudy.trials) == analysis.importance.n_trials
    assert param_importances(sweep_dir)[0] == by_path  # a PathLike too
    old_form, _ = param_importances(load_sweep(str(sweep_dir)), load_study(str(sweep_dir)))
    assert old_form == by_path
    assert param_importances(str(sweep_dir), metric="val_loss")[0].n_trials == by_path.n_trials


def test_export_takes_the_metric_analyze_takes_and_says_what_it_exported(sweep_dir: Path, tmp_path: Path,
                                                                         capsys) -> None:
    import yaml

    from selftune.search import export
    from selftune.sweepfolder import metric_mode

    for m, mode in (("val_miou", "max"), ("val_loss", "min"), ("train_val_gap", "min"), ("val_iou/road", "max")):
        assert metric_mode(m) == mode, m  # one rule (sweepfolder) for the sweep, export and analysis
    out = tmp_path / "best.yaml"
    assert main(["export", str(sweep_dir), "--metric", "val_loss", "--out", str(out)]) == 0
    best = load_trials(str(sweep_dir), metric="val_loss").iloc[0]  # lowest val_loss first, as analyze ranks
    prov = yaml.safe_load(out.read_text())["provenance"]
    assert (prov["trial_id"], prov["metric"], prov["mode"]) == (best["trial_id"], "val_loss", "min")
    assert prov["value"] == pytest.approx(best["best.val_loss"]) and prov["iteration"] == best["best_iteration"]
    assert capsys.readouterr().out == (f"wrote {out}: rank 1: trial {best['trial_id']}, val_loss "
                                       f"{best['best.val_loss']:.4f} at iteration {best['best_iteration']} "
                                       f"({prov['outcome']})\n")

    assert main(["export", str(sweep_dir)]) == 0  # YAML on stdout, what was exported on stderr
    printed = capsys.readouterr()
    top = load_trials(str(sweep_dir)).iloc[0]
    assert yaml.safe_load(printed.out)["provenance"]["trial_id"] == top["trial_id"]
    assert printed.err.startswith(f"selftune: exported rank 1: trial {top['trial_id']}, val_miou ")
    assert main(["export", str(sweep_dir), "--metric", "accuracy"]) == 2
    assert "metric 'accuracy' is not reported by any trial; available: val_miou" in capsys.readouterr().err

    own = tmp_path / "own_metric"  # a sweep that recorded val_loss as its own metric: export's default
    shutil.copytree(sweep_dir, own, ignore=shutil.ignore_patterns("checkpoint_*", "*.pt", "analysis", "control"))
    meta = yaml.safe_load((own / "selftune_sweep.yaml").read_text())
    (own / "selftune_sweep.yaml").write_text(yaml.safe_dump({**meta, "metric": "val_loss"}))
    assert export.rank_trials(str(own))[0]["trial_id"] == best["trial_id"]
    assert export.rank_trials(str(own))[0]["metric"] == "val_loss"


def test_load_trials_reads_uris_through_pyarrow(sweep_dir: Path) -> None:
    trials = load_trials(f"file://{sweep_dir}")
    assert len(trials) == 6
    assert all(p.startswith("file://") for p in trials["path"])
    assert trials["best.val_miou"].tolist() == load_trials(str(sweep_dir))["best.val_miou"].tolist()


def test_outputs_can_go_to_a_remote_filesystem(sweep_dir: Path) -> None:
    """An --out URI is written through pyarrow (here its in-memory mock filesystem, standing in for s3://)."""
    from selftune.analysis.report import Output

    out = Output("mock:///bucket/analysis")
    assert out.remote and out.write("a.txt", "hello") == "mock:///bucket/analysis/a.txt"
    with out.fs.open_input_stream("bucket/analysis/a.txt") as f:
        assert f.read() == b"hello"
    a = analyze(str(sweep_dir), "mock:///bucket/analysis")
    assert "mock:///bucket/analysis/report.html" in a.files and "mock:///bucket/analysis/trials.parquet" in a.files
    assert not (sweep_dir / "bucket").exists()


# ---------------------------------------------------------------------- what analyze writes


def test_analyze_writes_tables_figures_and_a_self_contained_report(
    sweep_dir: Path, analysis: Analysis, before: dict[str, float]
) -> None:
    from PIL import Image

    out = sweep_dir / "analysis"
    assert Path(analysis.out) == out
    assert pd.read_parquet(out / "trials.parquet")["trial_id"].tolist() == analysis.trials["trial_id"].tolist()
    assert len(pd.read_csv(out / "trials.csv")) == 6
    assert len(pd.read_parquet(out / "history.parquet")) == len(analysis.history)
    for name in FIGURES:
        with Image.open(out / f"{name}.png") as im:
            assert im.size[0] >= 600 and im.size[1] >= 250, name
        html = (out / f"{name}.html").read_text()
        assert 'src="plotly.min.js"' in html and 'src="http' not in html  # works offline
    assert (out / "plotly.min.js").stat().st_size > 1_000_000
    report = (out / "report.html").read_text()
    assert report.count("data:image/png;base64,") == len(FIGURES)
    for name in FIGURES:
        assert f"href='{name}.html'" in report
    assert "What to run next" in report and "stopped by ASHA" in report
    # 6 trials: fewer than range advice needs, said before the trials are ranked (or that nothing was learned)
    alert = "Too few trials to advise on ranges" if "Too few trials" in report else "No class was learned"
    assert report.index("<h2>Read this first</h2>") < report.index(alert) < report.index("<h2>Top")
    assert f"selftune export {sweep_dir}" in report
    if (analysis.trials["status"] == "diverged").any():
        assert "diverged, with lr 1e+30" in report
    # nothing but the analysis folder changed in the sweep folder, and no temporary file was left
    after = {str(p.relative_to(sweep_dir)): p.stat().st_mtime for p in sweep_dir.rglob("*") if p.is_file()}
    assert {k: v for k, v in after.items() if not k.startswith("analysis/")} == before
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_cli_prints_the_summary_and_writes_to_out(sweep_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "an"
    keep = out / "mine.txt"  # a user's file in the out folder stays as it is
    out.mkdir()
    keep.write_text("mine")
    rc = main(["analyze", str(sweep_dir), "--out", str(out), "--top-k", "3", "--color-by", "st_weight"])
    printed = capsys.readouterr().out
    assert rc == 0
    assert "sweep tiny: 6 trials:" in printed and "stopped by ASHA" in printed
    assert "what to run next:" in printed and "most important:" in printed
    assert "  over COMPLETE trials only (as optuna.importance counts): " in printed
    assert printed.index("read this first:\n  ! ") < printed.index(" rank ") < printed.index("what to run next:")
    assert printed.startswith("VERDICT: ")  # the sweep trained its control: the verdict comes first
    table = next(b for b in printed.split("\n\n") if b.lstrip().startswith("rank")).splitlines()
    assert table[0].split()[:4] == ["rank", "trial", "status", "best"] and len(table) == 4  # header + top 3
    assert (out / "report.html").is_file() and keep.read_text() == "mine"
    assert "coloured by st_weight" in (out / "learning_curves.html").read_text()


# ---------------------------------------------------------------------- bad input


def test_bad_input_gets_a_clear_message_and_exit_code_2(sweep_dir: Path, tmp_path: Path, capsys) -> None:
    cases = [
        ([str(tmp_path)], "is not a selftune sweep folder (no selftune_sweep.yaml in it)"),
        ([str(sweep_dir.parent)], "sweeps inside it: tiny"),
        ([str(tmp_path / "missing")], "does not exist"),
        ([str(sweep_dir), "--metric", "val_mIoU"], "did you mean 'val_miou'?"),
        ([str(sweep_dir), "--metric", "accuracy"], "available: val_miou, val_miou_raw, val_loss"),
        ([str(sweep_dir), "--color-by", "learning_rate"], "parameters: lr, st_weight, threshold_base"),
    ]
    for args, message in cases:
        assert main(["analyze", *args, "--out", str(tmp_path / "o")]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("selftune: error: ") and message in err, (args, err)

    empty = tmp_path / "started"  # the driver wrote its record, no trial has reported yet
    empty.mkdir()
    shutil.copy(sweep_dir / "selftune_sweep.yaml", empty)
    with pytest.raises(SelftuneError, match="no trial with a finished evaluation"):
        load_trials(str(empty))
    assert main(["analyze", str(empty)]) == 2
    assert not (empty / "analysis").exists()


def test_half_finished_sweep_is_analysed_as_far_as_it_got(sweep_dir: Path, tmp_path: Path) -> None:
    """A driver killed mid-sweep: one trial RUNNING with its last result.json line cut, one PENDING with no
    folder yet."""
    half = tmp_path / "half"
    shutil.copytree(sweep_dir, half, ignore=shutil.ignore_patterns("checkpoint_*", "*.pt", "analysis"))
    (half / "best_config.yaml").unlink()
    records = read_trials(str(half))
    running = next(r for r in records if len(r.results) >= 3)
    pending = next(r for r in reversed(records) if r.trial_id != running.trial_id)
    state_file = next(half.glob("experiment_state-*.json"))
    state = json.loads(state_file.read_text())
    for entry in state["trial_data"]:
        t = json.loads(entry[0])
        if t["trial_id"] in (running.trial_id, pending.trial_id):
            t["status"] = "RUNNING" if t["trial_id"] == running.trial_id else "PENDING"
            entry[0] = json.dumps(t)
    state_file.write_text(json.dumps(state))
    result = Path(running.path) / "result.json"
    lines = result.read_text().splitlines(keepends=True)
    result.write_text("".join(lines[:2]) + lines[2][: len(lines[2]) // 2])  # cut mid-line
    shutil.rmtree(pending.path)

    a = analyze(str(half), write=False)
    t = a.trials.set_index("trial_id")
    assert len(t) == 6
    assert t.loc[running.trial_id, "status"] == "running" and t.loc[running.trial_id, "reports"] == 2
    assert t.loc[running.trial_id, "iteration"] == running.results[1]["iteration"]
    assert t.loc[pending.trial_id, "status"] == "running" and t.loc[pending.trial_id, "reports"] == 0
    assert pd.isna(t.loc[pending.trial_id, "best.val_miou"])
    assert len(a.history[a.history["trial_id"] == running.trial_id]) == 2
    assert any("still running or pending" in s for s in a.next_steps)
    assert all(f.png for f in a.figures if f.name != "importance")


# ---------------------------------------------------------------------- the tools users know


def test_tensorboard_finds_every_trial_with_scalars_and_image_panels(sweep_dir: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    trials = read_trials(str(sweep_dir))
    classes = [k.removeprefix("val_iou/") for k in trials[0].results[0] if k.startswith("val_iou/")]
    assert len(classes) == 7
    for t in trials:
        acc = EventAccumulator(str(Path(t.path) / "train"), size_guidance={"scalars": 0, "images": 0}).Reload()
        scalars = set(acc.Tags()["scalars"])
        for c in classes:
            assert {f"val_iou/{c}", f"st_count/{c}", f"st_ratio/{c}", f"threshold/{c}"} <= scalars, t.trial_id
        assert {"val_miou", "lr", "loss_sup", "loss_st", "st_count", "st_weight"} <= scalars
        steps = [e.step for e in acc.Scalars("val_miou")]
        assert steps == [r["iteration"] for r in t.results]  # logged at the loop's iteration
        assert acc.Scalars("lr")[0].value == pytest.approx(t.results[0]["lr"], rel=1e-6)
        if t.results[-1]["status"] != "diverged":
            assert "val/panel" in acc.Tags()["images"]
            panel = acc.Images("val/panel")[-1]
            assert panel.width == 4 * 32 and panel.height >= 32  # input | truth | pseudo-label | prediction

    mux = EventMultiplexer().AddRunsFromDirectory(str(sweep_dir))  # what `tensorboard --logdir PATH` does
    runs = set(mux.Runs())
    for t in trials:
        assert str(Path(Path(t.path).name) / "train") in runs


def test_optuna_dashboard_reads_the_journal(sweep_dir: Path) -> None:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(sweep_dir / "optuna_journal.log")))
    study = optuna.load_study(study_name="tiny", storage=storage)
    records = {json.dumps(r.params, sort_keys=True): r for r in read_trials(str(sweep_dir))}
    assert len(study.trials) == len(records)
    states = {t.state.name for t in study.trials}
    assert {"COMPLETE", "PRUNED"} <= states
    for ot in study.trials:
        rec = records[json.dumps(ot.params, sort_keys=True)]
        assert set(ot.params) == {"threshold_base", "st_weight", "lr"}
        if ot.state.name in ("COMPLETE", "PRUNED"):
            assert ot.intermediate_values  # one value per evaluation, at the loop's iteration
            assert set(ot.intermediate_values) <= {r["iteration"] for r in rec.results}

    optuna_dashboard = pytest.importorskip("optuna_dashboard")
    from optuna_dashboard._storage_url import get_storage

    # `optuna-dashboard PATH/optuna_journal.log` guesses a JournalStorage from a file path
    guessed = get_storage(str(sweep_dir / "optuna_journal.log"))
    assert isinstance(guessed, JournalStorage)
    app = optuna_dashboard.wsgi(guessed)  # the dashboard's app, called as a server would, without a server

    def get(path: str) -> dict:
        status: list[str] = []
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": "", "SERVER_NAME": "localhost",
                   "SERVER_PORT": "8080", "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http",
                   "wsgi.input": io.BytesIO()}
        body = b"".join(app(environ, lambda s, headers, *exc: status.append(s)))
        assert status[0].startswith("200"), (path, status)
        return json.loads(body)

    summaries = get("/api/studies")["study_summaries"]
    # the space has no supervised method: the verdict's tuned control search is a second study in the journal
    assert [s["study_name"] for s in summaries] == ["tiny", "control_search"]
    detail = get(f"/api/studies/{summaries[0]['study_id']}")
    assert len(detail["trials"]) == 6 and {"Complete", "Pruned"} <= {t["state"] for t in detail["trials"]}
    assert detail["has_intermediate_values"]


def test_notebook_runs_headless_on_the_sweep(sweep_dir: Path, tmp_path: Path) -> None:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(ROOT / "notebooks" / "sweep_analysis.ipynb", as_version=4)
    os.environ["SELFTUNE_SWEEP"] = str(sweep_dir)  # the kernel inherits it; the parameter cell reads it
    try:
        # "python3" resolves to this interpreter through ipykernel: no `ipykernel install` needed
        NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    finally:
        del os.environ["SELFTUNE_SWEEP"]
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert not [o.text for o in outputs if o.output_type == "stream" and o.name == "stderr"]  # tqdm's warning too
    text = "".join(o.get("text", "") for o in outputs)
    assert "sweep 'tiny'" in text and "tiny {" in text  # the meta line and the study's state counts
    assert "Same evaluator, different trials" in text  # the importances, both columns
    assert '"selftune_results/demo"' in nb.cells[1].source  # the default is the folder the demo writes
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 2


# ---------------------------------------------------------------------- the verdict and the methods


def _copy_sweep(sweep_dir: Path, dest: Path) -> Path:
    """The fixture's sweep without its checkpoints, models and analysis (the tables and the study are all there)."""
    shutil.copytree(sweep_dir, dest, ignore=shutil.ignore_patterns("checkpoint_*", "*.pt", "analysis", "control"))
    return dest


HEADLINE = ('VERDICT: self-training HELPS: rounds (trial abc_00001) vs tuned supervised (trial abc_00003), val mI'
            'oU +5.00 points, 95% CI [+1.00, +9.00]; 3 fresh seeds per arm, 40 iterations each from scratch')
HAND_VERDICT = {  # val only (no test split), as verdict.json writes it
    "format": 2, "outcome": "helps", "split": "val", "statistic": "mIoU", "headline": HEADLINE, "seeds": [1000, 1001, 1002],
    "lines": [HEADLINE, "  self-training: val mIoU 35.00 (per seed 34.0, 35.0, 36.0)",
              "  supervised: val mIoU 30.00 (per seed 29.0, 30.0, 31.0)",
              "  per class (val IoU points, intervals excluding 0 only): helped road +20.00 [+5.00, +35.00]; hurt none",
              "  note: val: the split the trials were selected on (the dataset has no test split)"],
    "difference": {"mean": 0.05, "low": 0.01, "high": 0.09}, "flags": [],
    "arms": {"self_training": {"method": "rounds", "trial_id": "abc_00001", "tuned": True, "mean": 0.35},
             "supervised": {"method": "supervised", "trial_id": "abc_00003", "tuned": True, "mean": 0.30}},
    "runs": [{"arm": arm, "seed": 1000 + i, "status": "completed", "best_val_miou": 0.3, "best_iteration": 40,
              "iterations": 40, "val": base + i / 100} for i in range(3)
             for arm, base in (("self_training", 0.34), ("supervised", 0.29))],
    "per_class": {"road": {"mean": 0.20, "low": 0.05, "high": 0.35, "word": "helped"},
                  "building": {"mean": -0.10, "low": -0.25, "high": 0.05, "word": ""},
                  "open land": {"mean": 0.05, "low": -0.10, "high": 0.20, "word": ""}},
}


def test_the_verdict_and_the_methods_lead_the_report_and_the_summary(sweep_dir: Path, tmp_path: Path) -> None:
    from PIL import Image

    from selftune.analysis.result import summary_text

    copy = _copy_sweep(sweep_dir, tmp_path / "tiny")
    (copy / "verdict.json").write_text(json.dumps(HAND_VERDICT))
    methods = {}
    for i, params_file in enumerate(sorted(copy.glob("*/params.json"))):  # as the methods space names them
        params = json.loads(params_file.read_text())
        params["method"] = ("ema_self_training", "rounds", "supervised")[i % 3]
        params_file.write_text(json.dumps(params))
        methods[params_file.parent.name] = params["method"]

    a = analyze(str(copy), str(tmp_path / "out"))
    report = (tmp_path / "out" / "report.html").read_text()
    h2 = [part.split("</h2>")[0] for part in report.split("<h2>")[1:]]
    assert h2[:4] == ["Verdict", "Methods", "Read this first", "Top 5 trials"], h2
    verdict_part = report.split("<h2>Verdict</h2>")[1].split("<h2>Methods</h2>")[0]
    assert HEADLINE in verdict_part and "helped road +20.00 [+5.00, +35.00]" in verdict_part
    assert verdict_part.count("data:image/png;base64,") == 1  # the per-class figure, in this section
    rows = verdict_part.split("Per class")[1].split("</table>")[0].split("<tr>")[1:]
    assert [r.split("<td>")[1].split("</td>")[0] for r in rows] == ["road", "open land", "building"]
    assert "+20.0" in rows[0] and "helped" in rows[0] and "-10.0" in rows[2] and "hurt" not in rows[2]
    assert "Confirmation runs" in verdict_part and verdict_part.count("abc_0000") >= 2
    with Image.open(tmp_path / "out" / "verdict_per_class.png") as im:
        assert im.size[0] >= 600 and im.size[1] >= 250
    assert report.count("id='verdict_per_class'") == 1  # not again among the figures

    t = a.trials
    m = a.methods.set_index("method")
    assert set(m.index) == {"ema_self_training", "rounds", "supervised"}
    for method, row in m.iterrows():
        mine = t[t["param.method"] == method]
        assert row["trials"] == len(mine)
        scored = mine[~mine["status"].isin(["diverged", "errored"])]["best.val_miou"].dropna()
        assert row["best val_miou"] == pytest.approx(scored.max()) if len(scored) else math.isnan(row["best val_miou"])
    assert a.methods["best val_miou"].dropna().is_monotonic_decreasing  # best method first

    text = summary_text(a)
    assert text.startswith("\n".join(HAND_VERDICT["lines"]) + "\n")  # the sweep's own words
    assert "per method (val_miou):" in text and text.index("per method") < text.index("sweep tiny:")


def test_a_sweep_without_a_verdict_shows_none(analysis: Analysis) -> None:
    from dataclasses import replace

    from selftune.analysis.page import report_html

    a = replace(analysis, verdict=None, figures=[f for f in analysis.figures if f.name != "verdict_per_class"])
    report = report_html(a, 5)
    assert "<h2>Verdict</h2>" not in report and "VERDICT" not in report and "verdict_per_class" not in report
    assert "<h2>Methods</h2>" not in report  # the fixture's space has no method parameter
    assert a.summary().startswith("sweep tiny: ")


def test_the_real_verdict_is_the_first_section(sweep_dir: Path, analysis: Analysis) -> None:
    """The fixture's sweep trained its control, so it has the verdict.json search writes."""
    record = json.loads((sweep_dir / "verdict.json").read_text())
    report = (sweep_dir / "analysis" / "report.html").read_text()
    assert report.split("<h2>")[1].startswith("Verdict</h2>")
    assert record["headline"] in report
    assert analysis.summary().splitlines()[0] == record["headline"]
    assert analysis.verdict.split == "test" and len(analysis.verdict.arms()) == 2
    assert len(analysis.verdict.runs()) == 2  # 1 fresh seed per arm


def test_compare_the_sweep_with_a_copy_missing_one_trial(sweep_dir: Path, tmp_path: Path, capsys) -> None:
    """`selftune compare` on the real sweep and a copy of it without its second-best trial (and its verdict)."""
    from selftune.analysis.compare import compare

    trials = load_trials(str(sweep_dir))
    gone = trials.iloc[1]
    copy = _copy_sweep(sweep_dir, tmp_path / "minus_one")
    shutil.rmtree(copy / Path(gone["path"]).name)
    state_file = next(copy.glob("experiment_state-*.json"))
    state = json.loads(state_file.read_text())
    state["trial_data"] = [e for e in state["trial_data"] if json.loads(e[0])["trial_id"] != gone["trial_id"]]
    state_file.write_text(json.dumps(state))
    (copy / "verdict.json").unlink()

    assert main(["compare", str(sweep_dir), str(copy), "--out", str(tmp_path / "cmp")]) == 0
    printed = capsys.readouterr().out
    assert (tmp_path / "cmp" / "report.html").is_file() and (tmp_path / "cmp" / "progress.png").is_file()
    c = compare([str(sweep_dir), str(copy)], write=False)
    assert [e.label for e in c.sweeps] == ["tiny", "minus_one"]  # both are named tiny: the folder tells them apart
    assert [len(e.sweep.trials) for e in c.sweeps] == [6, 5]
    assert c.sweeps[0].iterations - c.sweeps[1].iterations == gone["iteration"]
    assert c.sweeps[0].best["trial_id"] == c.sweeps[1].best["trial_id"] == trials.iloc[0]["trial_id"]
    assert c.sweeps[0].verdict is not None and c.sweeps[1].verdict is None
    assert f"tiny: {c.sweeps[0].verdict.headline}" in printed


# ---------------------------------------------------------------------- watching a running sweep


def test_watch_rewrites_a_self_refreshing_report_and_prints_a_line_a_round(sweep_dir: Path, analysis: Analysis,
                                                                           tmp_path: Path, capsys) -> None:
    import re

    out = tmp_path / "live"
    assert main(["analyze", str(sweep_dir), "--out", str(out), "--watch", "5", "--watch-rounds", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    best = load_trials(str(sweep_dir)).iloc[0]
    assert re.fullmatch(r"\[\d\d:\d\d:\d\d\] round 1: 6 trials: \d+ completed, .*; best val_miou "
                        rf"{best['best.val_miou']:.4f} \(trial {best['trial_id']}\)", lines[0]), lines[0]
    assert lines[1:] == [f"report: {out}/report.html"]
    assert "http-equiv" not in (out / "report.html").read_text()  # the final page stays put
    assert "<meta http-equiv='refresh' content='5'>" in report_html(analysis, 5, refresh=5)  # the live ones reload
    assert "http-equiv" not in (Path(analysis.out) / "report.html").read_text()  # only in watch mode


def test_watch_waits_for_a_first_evaluation_and_ctrl_c_ends_it(sweep_dir: Path, tmp_path: Path, capsys,
                                                              monkeypatch) -> None:
    import time

    starting = tmp_path / "starting"  # the driver wrote its record, no trial has reported yet
    starting.mkdir()
    shutil.copy(sweep_dir / "selftune_sweep.yaml", starting)
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 2:
            raise KeyboardInterrupt  # Ctrl-C while waiting for the next round

    monkeypatch.setattr(time, "sleep", sleep)
    assert main(["analyze", str(starting), "--watch"]) == 0
    printed = capsys.readouterr().out
    assert printed.count(": waiting: ") == 2 and "(no trials yet)" in printed and "stopped watching" in printed
    assert slept == [30.0, 30.0]  # the default period
    assert not (starting / "analysis").exists()

    for args, message in ([["--watch-rounds", "1"], "--watch-rounds needs --watch"],
                          [["--watch", "0"], "--watch takes seconds > 0"]):
        assert main(["analyze", str(sweep_dir), *args]) == 2
        assert message in capsys.readouterr().err
