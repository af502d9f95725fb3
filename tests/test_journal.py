"""A torn last line in the Optuna journal (a driver killed mid-write, a full disk) is repaired, not fatal."""

from __future__ import annotations

import errno
from pathlib import Path

import optuna
import pytest

from selftune.errors import SelftuneError, StorageError
from selftune.search.study import open_optuna_storage
from selftune.sweepfolder.journal import repair_journal, torn_tail


def _journal(path: Path) -> None:
    study = optuna.create_study(study_name="s", storage=open_optuna_storage(f"journal:{path}"))
    for x in (0.1, 0.2):
        t = study.ask()
        t.suggest_float("x", 0, 1)
        study.tell(t, x)


def test_a_torn_last_line_is_dropped_and_the_study_reads_again(tmp_path: Path) -> None:
    journal = tmp_path / "optuna_journal.log"
    _journal(journal)
    intact = journal.read_bytes()
    assert torn_tail(journal) == 0
    with open(journal, "ab") as f:
        f.write(b'{"op_code": 5, "worker_id": "ab')  # half a line: what ENOSPC or a SIGKILL leaves
    broken = tmp_path / "unrepaired.log"  # unrepaired, the next line written lands on the torn one...
    broken.write_bytes(journal.read_bytes() + intact.splitlines(keepends=True)[-1] * 2)
    with pytest.raises(ValueError):  # ...and every later read fails (JSONDecodeError): what issue 19 saw
        optuna.load_study(study_name="s", storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(broken))))
    with pytest.warns(UserWarning, match="dropped a torn last line"):
        study = optuna.load_study(study_name="s", storage=open_optuna_storage(f"journal:{journal}"))
    assert [t.value for t in study.trials] == [0.1, 0.2]
    assert journal.read_bytes() == intact
    assert len(list(tmp_path.glob("optuna_journal.log.torn-*"))) == 1  # the torn file is kept
    assert repair_journal(journal) == 0


def test_analysis_reads_a_torn_journal_without_touching_it(tmp_path: Path) -> None:
    from pyarrow.fs import LocalFileSystem

    from selftune.analysis.study import _journal_study

    journal = tmp_path / "optuna_journal.log"
    _journal(journal)
    with open(journal, "ab") as f:
        f.write(b'{"op_code": 5, "wo')
    torn = journal.read_bytes()
    with pytest.warns(UserWarning, match="dropped a torn last line"):
        study = _journal_study(LocalFileSystem(), str(journal), "s")
    assert len(study.trials) == 2
    assert journal.read_bytes() == torn  # analysis reads a copy; the sweep's own files are left alone


def test_a_full_disk_is_one_message() -> None:
    err = StorageError(errno.ENOSPC, "cannot write x: no space left on the device")
    assert isinstance(err, SelftuneError) and isinstance(err, OSError) and str(err).startswith("cannot write x")

