"""Issue 29, half-written sweep folders: a truncated, empty or invalid selftune_sweep.yaml is one message naming it
in every command that reads it; a trial's params.json cut in half is read from what else the trial holds, with a
warning naming it. And a resumed sweep on changed data is refused by name before Ray starts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from selftune.cli import main
from selftune.sweepfolder import read_sweep_meta, read_trials
from tests.helpers import make_sweep, sweep_trials

DRIVER_RECORD = {"selftune_version": "x", "sweep": {"name": "s"}, "base": {"method": "ema_self_training"},
                 "data_root": "/d", "data_fingerprint": "0" * 16, "class_names": ["background", "road"],
                 "max_t": 40, "grace_period": 10, "optuna_storage": "journal:/x", "metric": "val_miou"}


@pytest.mark.parametrize(("text", "says"), [
    ("", "is empty"),
    ("sweep: {name: s\nbase: [\n", "is damaged (not valid YAML"),
    ("- a list\n", "is not a sweep record (expected a mapping, got list)"),
    ("sweep: 3\n", "`sweep` should be a mapping, got 3"),
    (yaml.safe_dump(DRIVER_RECORD, sort_keys=False).split("class_names")[0], "is cut short (no class_names, max_t"),
])
@pytest.mark.parametrize("command", ["export", "analyze", "compare", "resume"])
def test_a_broken_sweep_record_is_one_message(tmp_path: Path, capsys, text: str, says: str, command: str) -> None:
    folder = make_sweep(tmp_path, "s", sweep_trials(3))
    other = make_sweep(tmp_path, "t", sweep_trials(3))
    (folder / "selftune_sweep.yaml").write_text(text)
    argv = {"export": ["export", str(folder)], "analyze": ["analyze", str(folder), "--out", str(tmp_path / "a")],
            "compare": ["compare", str(other), str(folder), "--out", str(tmp_path / "c")],
            "resume": ["sweep", "--resume", str(folder)]}[command]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    [line] = [x for x in err.splitlines() if x.startswith("selftune: error:")]
    assert f"{folder}/selftune_sweep.yaml" in line and says in line, line
    assert "copy it again" in line


def test_a_hand_written_record_is_still_read(tmp_path: Path) -> None:
    folder = make_sweep(tmp_path, "s", sweep_trials(2))
    assert read_sweep_meta(str(folder))["max_t"] == 40  # no selftune_version: not held to the driver's keys


def test_params_cut_in_half_are_read_from_the_state(tmp_path: Path) -> None:
    folder = make_sweep(tmp_path, "s", sweep_trials(3))
    trial_dir = sorted(p for p in folder.iterdir() if p.is_dir())[0]
    params = json.loads((trial_dir / "params.json").read_text())
    state_file = next(folder.glob("experiment_state-*.json"))
    state = json.loads(state_file.read_text())
    for row in state["trial_data"]:  # Ray's state holds the searched params too
        t = json.loads(row[0])
        if t["relative_logdir"] == trial_dir.name:
            row[0] = json.dumps({**t, "evaluated_params": params})
    state_file.write_text(json.dumps(state))
    text = (trial_dir / "params.json").read_text()
    (trial_dir / "params.json").write_text(text[: len(text) // 2])
    with pytest.warns(UserWarning, match=rf"{trial_dir.name}/params.json is damaged .* read from Ray's experiment"):
        trials = read_trials(str(folder))
    assert len(trials) == 3 and next(t for t in trials if t.path == str(trial_dir)).params == params


def test_params_cut_with_nothing_else_leave_the_trial_out(tmp_path: Path, capsys) -> None:
    folder = make_sweep(tmp_path, "s", sweep_trials(3))
    trial_dir = sorted(p for p in folder.iterdir() if p.is_dir())[0]
    (trial_dir / "params.json").write_text('{"lr": 0.0')
    with pytest.warns(UserWarning, match=r"params.json is damaged .* that trial is left out"):
        assert len(read_trials(str(folder))) == 2
    with pytest.warns(UserWarning):
        assert main(["export", str(folder)]) == 0  # the other trials still export


def test_a_damaged_verdict_is_named(tmp_path: Path) -> None:
    from selftune.sweepfolder import read_verdict

    folder = make_sweep(tmp_path, "s", sweep_trials(2), verdict={"outcome": "helps"})
    (folder / "verdict.json").write_text('{"outcome": "he')
    with pytest.warns(UserWarning, match=r"verdict.json is damaged"):
        assert read_verdict(str(folder)) is None


# ---------------------------------------------------------------------- resume on changed data


def _recorded_sweep(tiny_data: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the data and a sweep folder recorded on it, as a driver killed right after its record leaves."""
    from selftune.search.run import plan_sweep
    from selftune.search.sweepfile import SweepConfig
    from tests.helpers import tiny_config

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data, ignore=shutil.ignore_patterns(".*"))
    plan = plan_sweep(SweepConfig(name="s", data=str(data), base=tiny_config(max_iters=4, eval_every=2, warmup_iters=1,
                                                                    st_start_iter=1, st_rampup_iters=2),
                                  space="thresholds_shared", num_samples=1, control="none",
                                  storage=str(tmp_path / "results")))
    folder = Path(plan.experiment_dir)
    folder.mkdir(parents=True)
    (folder / "selftune_sweep.yaml").write_text(yaml.safe_dump(plan.meta(), sort_keys=False))
    return data, folder


def test_resume_on_relabelled_data_is_refused_by_name(tiny_data: Path, tmp_path: Path, capsys) -> None:
    data, folder = _recorded_sweep(tiny_data, tmp_path)
    mask = sorted((data / "val" / "masks").glob("*.png"))[0]
    m = np.array(Image.open(mask))
    m[0, 0] = (m[0, 0] + 1) % 7
    Image.fromarray(m).save(mask)
    code = main(["sweep", "--resume", str(folder)])
    err = capsys.readouterr().err
    assert code == 2 and f"the dataset at {data} changed since sweep 's' started" in err
    assert "put that data back" in err and not list(folder.glob("experiment_state*"))
