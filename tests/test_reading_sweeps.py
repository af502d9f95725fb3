"""The smaller pieces of reading a sweep: folder names keep whole values, `compare A A` warns, `export --out
FILE.yaml` writes that file, the final `--watch` page does not reload, TensorBoard's HPARAMS declares every
trial's knobs. Sweep folders are written by hand (tests/test_importance.py, tests/test_compare.py): no Ray."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from selftune.cli import main
from selftune.sweepfolder import read_trials, trial_dirname
from selftune.sweepfolder.layout import TRIAL_DIR_MAX
from tests.helpers import flat_space, methods_space, write_sweep


def test_trial_folder_names_keep_whole_values() -> None:
    name = trial_dirname(4, "1a2b3c4d", {"method": "ema_self_training", "lr": 0.00031, "warmup_iters": 13})
    assert name == "trial_004_1a2b3c4d_method=ema_self_training_lr=0.00031_warmup_iters=13"
    long = trial_dirname(7, "1a2b3c4d", {"method": "rounds", "schedule": "x" * 60, "lr": 0.001})
    assert long == "trial_007_1a2b3c4d_method=rounds_lr=0.001"  # a value too long is left out whole, not cut
    assert len(long) <= TRIAL_DIR_MAX


def test_compare_the_same_folder_twice_warns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = write_sweep(tmp_path, "wide", flat_space, n=6)
    out = tmp_path / "cmp"
    assert main(["compare", str(a), str(a) + "/", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"warning: {a} is given 2 times" in printed.splitlines()[1]
    assert f"warning: {a} is given 2 times" in (out / "report.html").read_text()


def test_export_top_k_to_a_yaml_file_writes_that_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_sweep(tmp_path, "wide", flat_space, n=6)
    out = tmp_path / "best.yaml"
    assert main(["export", str(path), "--top-k", "3", "--out", str(out)]) == 0
    assert out.is_file()
    docs = list(yaml.safe_load_all(out.read_text()))
    assert [d["provenance"]["rank"] for d in docs] == [1, 2, 3]
    assert capsys.readouterr().out.count(f"wrote {out}: rank ") == 3
    folder = tmp_path / "configs"  # no .yaml: a folder of rank_<r>.yaml, as before
    assert main(["export", str(path), "--top-k", "2", "--out", str(folder)]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["rank_1.yaml", "rank_2.yaml"]


def test_the_final_watch_page_does_not_reload(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from selftune.analysis import report

    path = write_sweep(tmp_path, "live", methods_space, n=12)
    pages: list[str] = []
    real = report.report_html

    def spy(a: Any, top_k: int, refresh: float | None = None) -> str:
        pages.append(real(a, top_k, refresh))
        return pages[-1]

    monkeypatch.setattr(report, "report_html", spy)
    monkeypatch.setattr(time, "sleep", lambda s: None)
    out = tmp_path / "an"
    assert main(["analyze", str(path), "--out", str(out), "--watch", "7", "--watch-rounds", "2"]) == 0
    assert [("http-equiv='refresh' content='7'" in p) for p in pages] == [True, True, False]
    final = (out / "report.html").read_text()
    assert "http-equiv" not in final and final == pages[-1]
    assert capsys.readouterr().out.splitlines()[-1] == f"report: {out}/report.html"


def _hparams_of(run: Path) -> tuple[set[str], set[str]]:
    """(the experiment summary's hparams, the session's hparams) written into a trial's run folder."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(run), size_guidance={"tensors": 0})
    acc.Reload()
    declared: set[str] = set()
    session: set[str] = set()
    for tag, content in acc.PluginTagToContent("hparams").items():
        data = plugin_data_pb2.HParamsPluginData.FromString(content)
        if tag == "_hparams_/experiment":
            declared = {h.name for h in data.experiment.hparam_infos}
        elif tag == "_hparams_/session_start_info":
            session = set(data.session_start_info.hparams)
    return declared, session


def test_hparams_declares_every_trials_knobs(tmp_path: Path) -> None:
    """The first trial (a supervised one here) no longer decides the columns: every run declares the union."""
    from selftune.search.tensorboard import write_hparams

    path = write_sweep(tmp_path, "tb", methods_space, n=12)
    records = read_trials(str(path))
    for t in records:
        (Path(t.path) / "train").mkdir()
    assert write_hparams(records) == len(records)
    union = {k for t in records for k in t.params} | {"status", "trial_id"}
    assert {"dice_weight", "st_weight", "rounds", "ema_decay"} <= union
    for t in records:
        declared, session = _hparams_of(Path(t.path) / "train")
        assert declared == union, t.trial_id
        assert session == set(t.params) | {"status", "trial_id"}  # each trial reports only what it has
    assert json.loads((Path(records[0].path) / "params.json").read_text())  # untouched


def test_the_notebook_finds_the_demo_sweep_from_notebooks_and_shows_only_filled_columns(tmp_path: Path) -> None:
    """Jupyter (and nbconvert) run a notebook in its own folder: notebooks/, under the folder the demo ran in."""
    import os

    import nbformat
    from nbclient import NotebookClient

    write_sweep(tmp_path / "selftune_results", "demo", methods_space, n=24)
    (tmp_path / "notebooks").mkdir()
    nb = nbformat.read(Path(__file__).parents[1] / "notebooks" / "sweep_analysis.ipynb", as_version=4)
    env = os.environ.pop("SELFTUNE_SWEEP", None)
    try:
        NotebookClient(nb, timeout=180, kernel_name="python3",
                       resources={"metadata": {"path": str(tmp_path / "notebooks")}}).execute()
    finally:
        if env is not None:
            os.environ["SELFTUNE_SWEEP"] = env
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"], [o.get("evalue") for o in outputs]
    table = next(o for o in nb.cells[4].outputs if "text/html" in o.get("data", {}))["data"]["text/plain"]
    header = table.splitlines()[0].split()
    assert header[5] == "param.method"  # the method first, then the knobs most of the rows have
    text = "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in outputs)
    assert "knobs ranked within its trials" in text and "optuna-dashboard shows:" in text
