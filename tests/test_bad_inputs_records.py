"""Issue 35, damaged or missing records and moved sweep folders: a deleted verdict.json is said to be missing where
the verdict would be (when best_config.yaml carries one, or the sweep ended with a control); a verdict.json of the
right format with the wrong types is named, never a traceback; a trial's garbage result.json is named and never read
as "stopped by the sweep budget"; paths a sweep recorded inside its folder are read inside the folder where it is now.
(A real sweep interrupted, resumed, copied and exported: tests/test_sweep_interrupt.py.)"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from selftune.cli import main
from selftune.sweepfolder import (
    DAMAGED,
    STOPPED_BY_BUDGET,
    read_sweep_meta,
    read_trials,
    read_verdict,
    rebase,
    recorded_folder,
    resolve_meta,
    verdict_problem,
)
from tests.helpers import make_sweep, sweep_trials

VERDICT = {"format": 2, "outcome": "helps", "split": "test", "headline": "VERDICT: HELPS +3.00 [+1.00, +5.00]",
           "lines": ["VERDICT: HELPS +3.00 [+1.00, +5.00]"], "flags": [], "difference": {"mean": 0.03},
           "arms": {"self_training": {"method": "rounds"}, "supervised": {"method": "supervised"}},
           "runs": [{"arm": "self_training", "seed": 1000, "test": 0.4}], "per_class": {"road": {"mean": 0.1}}}


def _analyze(folder: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["analyze", str(folder), "--out", str(out)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _set_control(folder: Path, control: str) -> None:
    meta = yaml.safe_load((folder / "selftune_sweep.yaml").read_text())
    meta["sweep"]["control"] = control
    (folder / "selftune_sweep.yaml").write_text(yaml.safe_dump(meta))


# ---------------------------------------------------------------------- verdict.json missing


def test_a_deleted_verdict_that_best_config_carries_is_said_missing(tmp_path: Path, capsys) -> None:
    folder = make_sweep(tmp_path, "s", sweep_trials(3), verdict=VERDICT)
    _set_control(folder, "tuned")
    (folder / "best_config.yaml").write_text(yaml.safe_dump({"provenance": {"verdict": {
        "headline": VERDICT["headline"]}}, "config": {}}))
    code, before = _analyze(folder, tmp_path / "a", capsys)
    assert code == 0 and "VERDICT: HELPS" in before and "missing" not in before
    (folder / "verdict.json").unlink()
    code, text = _analyze(folder, tmp_path / "b", capsys)
    first = text.strip().splitlines()[0]
    assert code == 0 and first.startswith(f"VERDICT: {folder}/verdict.json is missing")
    assert "best_config.yaml carries the verdict" in first and "HELPS +3.00" in first
    assert f"selftune sweep --resume {folder}" in first
    assert "verdict.json is missing" in (tmp_path / "b" / "report.html").read_text()


def test_a_sweep_that_ended_with_a_control_and_no_verdict_says_it_is_missing(tmp_path: Path, capsys) -> None:
    folder = make_sweep(tmp_path, "s", sweep_trials(3))
    _set_control(folder, "base")
    (folder / "best_config.yaml").write_text(yaml.safe_dump({"provenance": {}, "config": {}}))
    code, text = _analyze(folder, tmp_path / "a", capsys)
    assert code == 0 and "verdict.json is missing: the sweep ran with control 'base'" in text


@pytest.mark.parametrize(("control", "ended", "says"), [
    ("none", True, None),  # control: none writes no verdict: nothing is missing
    ("tuned", False, "no verdict.json yet: the sweep (control 'tuned') writes it when it ends"),
])
def test_no_verdict_is_not_called_missing_when_none_is_due(tmp_path: Path, control: str, ended: bool,
                                                           says: str | None) -> None:
    folder = make_sweep(tmp_path, "s", sweep_trials(3))
    _set_control(folder, control)
    if ended:
        (folder / "best_config.yaml").write_text(yaml.safe_dump({"provenance": {}, "config": {}}))
    assert verdict_problem(str(folder)) == says or (says and says in str(verdict_problem(str(folder))))


def test_compare_warns_about_a_missing_verdict_naming_it(tmp_path: Path) -> None:
    folder = make_sweep(tmp_path, "s", sweep_trials(3))
    other = make_sweep(tmp_path, "t", sweep_trials(3))
    _set_control(folder, "tuned")
    (folder / "best_config.yaml").write_text(yaml.safe_dump({"provenance": {}, "config": {}}))
    with pytest.warns(UserWarning, match=rf"{folder}/verdict.json is missing: the sweep ran with control 'tuned'"):
        assert main(["compare", str(folder), str(other), "--out", str(tmp_path / "c")]) == 0


# ---------------------------------------------------------------------- verdict.json of the wrong types


@pytest.mark.parametrize(("change", "says"), [
    ({"arms": [1, 2]}, "`arms` should be a mapping, got list"),
    ({"runs": [3]}, "`runs` entry 0 should be a mapping, got int"),
    ({"per_class": ["road"]}, "`per_class` should be a mapping, got list"),
    ({"per_class": {"road": 0.1}}, "`per_class` entry 'road' should be a mapping, got float"),
    ({"lines": "VERDICT: HELPS"}, "`lines` should be a list, got str"),
    ({"flags": 3}, "`flags` should be a list, got int"),
    ({"difference": [0.03]}, "`difference` should be a mapping, got list"),
    ({"headline": ["x"]}, "`headline` should be a string, got list"),
])
def test_a_verdict_of_the_wrong_types_is_named_not_a_traceback(tmp_path: Path, capsys, change: dict,
                                                                 says: str) -> None:
    folder = make_sweep(tmp_path, "s", sweep_trials(3), verdict={**VERDICT, **change})
    other = make_sweep(tmp_path, "t", sweep_trials(3))
    code, text = _analyze(folder, tmp_path / "a", capsys)
    assert code == 0 and f"{folder}/verdict.json is damaged ({says}" in text
    assert "Traceback" not in text and "HELPS" not in text.split("is damaged")[0]  # never read as a verdict
    with pytest.warns(UserWarning, match=r"verdict.json is damaged \(`"):
        assert main(["compare", str(folder), str(other), "--out", str(tmp_path / "c")]) == 0
    with pytest.warns(UserWarning, match="verdict.json is damaged"):
        assert read_verdict(str(folder)) is None


def test_a_verdict_of_the_right_types_reads(tmp_path: Path) -> None:
    folder = make_sweep(tmp_path, "s", sweep_trials(3), verdict=VERDICT)
    assert read_verdict(str(folder)) == VERDICT and verdict_problem(str(folder)) is None


# ---------------------------------------------------------------------- a trial's result.json


def _first_trial(folder: Path) -> Path:
    return sorted(p for p in folder.iterdir() if p.is_dir())[0]


@pytest.mark.parametrize("garbage", ["garbage\n", "\x00\x01binary\n", '{"iteration": 10, "val_m\n{"iteration"'])
def test_a_garbage_result_json_is_named_and_not_read_as_stopped_by_the_budget(tmp_path: Path, capsys,
                                                                              garbage: str) -> None:
    trials = sweep_trials(3)
    folder = make_sweep(tmp_path, "s", trials)
    trial = _first_trial(folder)
    (trial / "result.json").write_text(garbage)
    with pytest.warns(UserWarning, match=rf"{trial.name}/result.json is damaged"):
        record = next(t for t in read_trials(str(folder)) if t.path == str(trial))
    assert record.outcome == DAMAGED and record.damaged and str(trial / "result.json") in record.damaged
    with pytest.warns(UserWarning, match=rf"{trial}/result.json is damaged"):
        code, text = _analyze(folder, tmp_path / "a", capsys)
    assert code == 0
    assert "1 record damaged" in text and "stopped by the sweep budget" not in text
    assert "cut by the sweep's budget" not in text  # the advice blamed the budget before
    assert any(f"{trial}/result.json is damaged" in line and line.lstrip().startswith("!")  # read this first
               for line in text.splitlines())
    with pytest.warns(UserWarning, match="result.json is damaged"):
        assert main(["export", str(folder), "--top-k", "3"]) == 0  # the other trials still export, this one not
    exported = [line for line in capsys.readouterr().err.splitlines() if line.startswith("selftune: exported")]
    assert len(exported) == 2 and not any(f"trial {record.trial_id}," in line for line in exported)


def test_garbage_inside_result_json_marks_the_trial_even_with_reports_around_it(tmp_path: Path) -> None:
    folder = make_sweep(tmp_path, "s", sweep_trials(3))
    trial = _first_trial(folder)
    lines = (trial / "result.json").read_text().splitlines()
    (trial / "result.json").write_text("\n".join([lines[0], "not json", *lines[1:]]) + "\n")
    with pytest.warns(UserWarning, match=r"result.json is damaged \(line 2 of 5 not a JSON report\)"):
        record = next(t for t in read_trials(str(folder)) if t.path == str(trial))
    assert record.outcome == DAMAGED and len(record.results) == 4  # what reads is kept, the ending is not guessed


def test_a_last_line_cut_by_a_killed_driver_is_not_damage(tmp_path: Path, recwarn) -> None:
    folder = make_sweep(tmp_path, "s", sweep_trials(3))
    trial = _first_trial(folder)
    text = (trial / "result.json").read_text()
    (trial / "result.json").write_text(text + '{"trial_id": "t0", "iteration": 5')  # no newline: cut mid-write
    record = next(t for t in read_trials(str(folder)) if t.path == str(trial))
    assert record.damaged is None and record.outcome != DAMAGED and len(record.results) == 4
    assert not [w for w in recwarn if "damaged" in str(w.message)]


def test_a_trial_ended_by_the_budget_before_its_first_report_still_reads_so(tmp_path: Path, capsys) -> None:
    folder = make_sweep(tmp_path, "s", sweep_trials(3))
    (_first_trial(folder) / "result.json").write_text("")  # no report: not damage
    code, text = _analyze(folder, tmp_path / "a", capsys)
    assert code == 0 and "record damaged" not in text and STOPPED_BY_BUDGET.replace("_", " ") not in text
    assert "stopped by the sweep budget" in text


# ---------------------------------------------------------------------- paths recorded inside a moved folder


def _meta(folder: str, *, stage_iters: int = 10, journal: bool = True) -> dict:
    return {"sweep": {"name": "s"}, "data_root": "/data",
            "base": {"method": "rounds", "init_checkpoint": f"{folder}/shared_stage/best_model_ema.pt",
                     "teacher_checkpoint": "/elsewhere/model.pt"},
            "optuna_storage": f"journal:{folder}/optuna_journal.log" if journal else "postgresql://db/x",
            "shared_stage_model": f"{folder}/shared_stage/best_model_ema.pt" if stage_iters else "/mine/stage.pt",
            "shared_stage_iters": stage_iters}


def test_paths_inside_the_folder_where_a_sweep_ran_are_read_inside_the_folder_where_it_is() -> None:
    meta = resolve_meta(_meta("/old/results/s"), "/new/place/s")
    assert meta["shared_stage_model"] == "/new/place/s/shared_stage/best_model_ema.pt"
    assert meta["optuna_storage"] == "journal:/new/place/s/optuna_journal.log"
    assert meta["base"]["init_checkpoint"] == "/new/place/s/shared_stage/best_model_ema.pt"
    assert meta["base"]["teacher_checkpoint"] == "/elsewhere/model.pt"  # outside the sweep: as recorded
    assert meta["data_root"] == "/data"
    assert resolve_meta(_meta("/new/place/s"), "/new/place/s") == _meta("/new/place/s")  # not moved: unchanged
    assert resolve_meta(_meta("/old/s"), "s3://bucket/s") == _meta("/old/s")  # remote: read as recorded


def test_the_folder_where_a_sweep_ran_is_found_from_its_stage_without_a_journal() -> None:
    assert recorded_folder(_meta("/old/s", journal=False)) == "/old/s"
    assert recorded_folder(_meta("/old/s", journal=False, stage_iters=0)) is None  # a stage given from elsewhere
    meta = resolve_meta(_meta("/old/s", journal=False, stage_iters=0), "/new/s")
    assert meta["shared_stage_model"] == "/mine/stage.pt"
    assert rebase("/old/s2/x", "/old/s", "/new/s") == "/old/s2/x"  # a sibling folder of the same prefix is not inside


def test_a_copied_sweep_folder_reads_its_own_stage(tmp_path: Path) -> None:
    old = tmp_path / "old" / "s"
    old.mkdir(parents=True)
    (old / "selftune_sweep.yaml").write_text(yaml.safe_dump(_meta(str(old))))
    new = tmp_path / "new" / "s"
    shutil.copytree(old, new)
    shutil.rmtree(old)
    assert read_sweep_meta(str(new))["shared_stage_model"] == str(new / "shared_stage" / "best_model_ema.pt")
