"""One rule for how a trial ended (`sweepfolder.outcome.trial_outcome`): the sweep's summary (export's entries),
`selftune analyze` (the trial table), the Optuna study's `selftune_status`, the console's lines and TensorBoard's
HPARAMS name every ending the same way. Before issue 33 the summary called a budget cut "stopped_by_asha" and the
study called an ASHA cut "stopped_by_budget"."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import yaml

from selftune.status import (
    COMPLETED,
    DIVERGED,
    EARLY_STOPPED,
    ERRORED,
    FAILED,
    STOPPED_BY_BUDGET,
    STOPPED_BY_SCHEDULER,
)

GRACE, MAX_T, RF = 10, 40, 2.0  # ASHA's rungs at 10 and 20


def _reports(iterations: list[int], last: str) -> list[dict[str, Any]]:
    return [{"iteration": it, "training_iteration": k + 1, "val_miou": 0.1 + 0.01 * it, "best_val_miou": 0.1 + 0.01 * it,
             "status": last if k == len(iterations) - 1 else "running"} for k, it in enumerate(iterations)]


# trial id -> (reports, Ray's status, errored, the ending every view must name)
TRIALS: dict[str, tuple[list[dict[str, Any]], str, bool, str]] = {
    "00001ran": (_reports([10, 20, 30, 40], COMPLETED), "TERMINATED", False, COMPLETED),
    "00002pat": (_reports([10, 20, 30], EARLY_STOPPED), "TERMINATED", False, EARLY_STOPPED),
    "00003div": (_reports([10, 20], DIVERGED), "TERMINATED", False, DIVERGED),
    "00004rung": (_reports([10, 20], "running"), "TERMINATED", False, STOPPED_BY_SCHEDULER),  # cut at rung 20
    "00005off": (_reports([10, 20, 30], "running"), "TERMINATED", False, STOPPED_BY_BUDGET),  # cut between rungs
    "00006err": (_reports([10], "running"), "ERROR", True, ERRORED),
    "00007none": ([], "TERMINATED", False, STOPPED_BY_BUDGET),  # ended by the sweep before its first report
}


def _sweep_folder(root: Path) -> Path:
    path = root / "agree"
    path.mkdir()
    meta = {"sweep": {"name": "agree", "space": "binary", "scheduler": "asha", "reduction_factor": RF},
            "base": {"method": "supervised"}, "class_names": ["background", "road"], "max_t": MAX_T,
            "grace_period": GRACE, "data_root": "/d", "metric": "val_miou"}
    (path / "selftune_sweep.yaml").write_text(yaml.safe_dump(meta))
    state = []
    for n, (tid, (reports, ray_status, errored, _)) in enumerate(TRIALS.items(), 1):
        folder = path / f"trial_{n:03d}_{tid}"
        folder.mkdir()
        (folder / "params.json").write_text(json.dumps({"lr": 1e-3}))
        (folder / "result.json").write_text("".join(json.dumps({**r, "trial_id": tid}) + "\n" for r in reports))
        if errored:
            (folder / "error.txt").write_text("RuntimeError: boom\n")
        state.append([json.dumps({"trial_id": tid, "status": ray_status, "relative_logdir": folder.name,
                                  "experiment_tag": f"{n}_x", "evaluated_params": {"lr": 1e-3}}), {}])
    (path / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps({"trial_data": state}))
    return path


def _study_statuses(tmp_path: Path, rungs: list[float]) -> dict[str, str]:
    """The Optuna study's `selftune_status` of each trial, told the reports as Ray tells the searcher (every report
    but the last through on_trial_result, the last with on_trial_complete)."""
    import optuna

    from selftune.search.adapter import make_searcher
    from selftune.search.study import open_optuna_storage
    from selftune.spaces import SpaceContext

    journal = f"journal:{tmp_path / 'optuna.journal'}"
    searcher = make_searcher("tpe", "binary", SpaceContext(2, MAX_T, 10), seed=0, num_samples=len(TRIALS),
                             max_concurrent=len(TRIALS), study_name="agree", storage_url=journal, rungs=rungs).searcher
    for tid, (reports, _, errored, _) in TRIALS.items():
        assert searcher.suggest(tid)
        for r in reports[:-1]:
            searcher.on_trial_result(tid, r)
        searcher.on_trial_complete(tid, reports[-1] if reports else None, error=errored)
    study = optuna.load_study(study_name="agree", storage=open_optuna_storage(journal))
    return {t.user_attrs["ray_trial_id"]: t.user_attrs["selftune_status"] for t in study.trials}


def _console_statuses(rungs: list[float]) -> dict[str, str]:
    from selftune.search.progress import ProgressLines

    class Trial:
        def __init__(self, tid: str) -> None:
            self.trial_id, self.experiment_tag, self.evaluated_params, self.last_result = tid, "1_x", {}, {}

    cb = ProgressLines("val_miou", rungs=rungs, every=1e9, file=io.StringIO())
    out = {}
    for tid, (reports, _, errored, _) in TRIALS.items():
        trial = Trial(tid)
        for r in reports:
            trial.last_result = r
            cb.on_trial_result(iteration=0, trials=[trial], trial=trial, result=r)
        out[tid] = cb._outcome(trial, errored)
    return out


def test_the_summary_analyze_the_study_and_the_console_name_each_ending_alike(tmp_path: Path) -> None:
    from selftune.analysis import load_trials
    from selftune.search.export import rank_trials
    from selftune.search.tensorboard import _trial_hparams
    from selftune.sweepfolder import read_sweep_meta, read_trials, sweep_rungs

    path = _sweep_folder(tmp_path)
    rungs = sweep_rungs(read_sweep_meta(str(path)))
    assert rungs == [10.0, 20.0]
    expected = {tid: want for tid, (*_, want) in TRIALS.items()}

    analyze = dict(zip(*load_trials(str(path))[["trial_id", "status"]].T.values, strict=True))
    records = read_trials(str(path))
    summary = {e["trial_id"]: e["outcome"] for e in rank_trials(str(path), "val_miou", "max")}
    hparams = {t.trial_id: _trial_hparams(t)["status"] for t in records}
    study = _study_statuses(tmp_path, rungs)
    console = _console_statuses(rungs)

    assert analyze == expected
    assert {t.trial_id: t.outcome for t in records} == expected
    assert summary == {tid: want for tid, want in expected.items() if want not in FAILED and TRIALS[tid][0]}
    assert hparams == expected
    assert study == expected
    assert console == expected


def test_the_trials_the_study_never_closed_get_the_folders_word(tmp_path: Path) -> None:
    """Trials Ray ended without telling the searcher (the sweep's end) are closed with the ending the sweep folder
    gives them, not a guess of the study's own."""
    import optuna

    from selftune.search.study import close_open_trials, open_optuna_storage

    url = f"journal:{tmp_path / 'optuna.journal'}"
    study = optuna.create_study(study_name="s", storage=open_optuna_storage(url), direction="maximize")
    at_rung, never = study.ask(), study.ask()
    for t, tid in ((at_rung, "a"), (never, "b")):
        t.set_user_attr("ray_trial_id", tid)
    at_rung.report(0.3, 20)
    assert close_open_trials(url, "s", {"a": STOPPED_BY_SCHEDULER, "b": STOPPED_BY_BUDGET}) == 2
    closed = optuna.load_study(study_name="s", storage=open_optuna_storage(url)).trials
    assert [(t.state.name, t.user_attrs["selftune_status"]) for t in closed] == [
        ("PRUNED", STOPPED_BY_SCHEDULER), ("PRUNED", STOPPED_BY_BUDGET)]
