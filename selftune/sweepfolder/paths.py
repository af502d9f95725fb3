"""Paths a sweep folder records, read against where the folder is now.

The driver records absolute paths (the shared stage's model in selftune_sweep.yaml, the Optuna journal, the
checkpoints a trial starts from). A sweep folder copied or moved elsewhere must point into itself, never into the
folder it was copied from (deleted since, or replaced by another sweep of the same name): each recorded path that
lay inside the folder where the sweep ran is read as the same path inside the folder where it is now.
"""

from __future__ import annotations

import os
import posixpath
from typing import Any

from selftune.sweepfolder.layout import JOURNAL_FILE, STAGE_DIR, is_remote

PATH_KEYS = ("teacher_checkpoint", "init_checkpoint")  # a train config's keys that name files of earlier runs


def recorded_folder(meta: dict[str, Any]) -> str | None:
    """The sweep folder where the sweep ran, as its record holds it: the folder of its default Optuna journal
    (<folder>/optuna_journal.log), else the folder of the shared stage it trained (<folder>/shared_stage/...);
    None when the record holds neither (an Optuna database, a stage given as a checkpoint from elsewhere)."""
    journal = meta.get("optuna_storage")
    if isinstance(journal, str) and journal.startswith("journal:") and \
            posixpath.basename(journal.removeprefix("journal:")) == JOURNAL_FILE:
        return posixpath.dirname(journal.removeprefix("journal:"))
    stage, iters = meta.get("shared_stage_model"), meta.get("shared_stage_iters")
    if isinstance(stage, str) and isinstance(iters, int) and iters > 0:  # trained into <folder>/shared_stage
        parent = posixpath.dirname(stage)
        if posixpath.basename(parent) == STAGE_DIR:
            return posixpath.dirname(parent)
    return None


def rebase(value: Any, recorded: str | None, folder: str) -> Any:
    """`value`, a path recorded while the sweep ran in `recorded`, read in the sweep folder `folder`: a path inside
    `recorded` becomes the same path inside `folder`; any other value is returned as is."""
    if not isinstance(value, str) or not recorded or is_remote(value):
        return value
    recorded = recorded.rstrip("/")
    if value == recorded:
        return folder
    if value.startswith(recorded + "/"):
        return folder.rstrip("/") + value[len(recorded):]
    return value


def rebase_config(config: dict[str, Any], recorded: str | None, folder: str) -> dict[str, Any]:
    """A train config (a dict) with its checkpoint paths (`PATH_KEYS`) read in `folder` (see `rebase`)."""
    return {k: rebase(v, recorded, folder) if k in PATH_KEYS else v for k, v in config.items()}


def resolve_meta(meta: dict[str, Any], path: str) -> dict[str, Any]:
    """selftune_sweep.yaml's record with every path that pointed into the folder where the sweep ran pointing into
    `path`, where it is now (a local folder; a remote one is read as recorded)."""
    if is_remote(path) or "://" in path:
        return meta
    folder = os.path.abspath(os.path.expanduser(path))
    recorded = recorded_folder(meta)
    if recorded is None or recorded.rstrip("/") == folder:
        return meta
    out = dict(meta)
    for key in ("shared_stage_model", "optuna_storage"):
        value = out.get(key)
        if key == "optuna_storage" and isinstance(value, str) and value.startswith("journal:"):
            out[key] = "journal:" + rebase(value.removeprefix("journal:"), recorded, folder)
        elif key in out:
            out[key] = rebase(value, recorded, folder)
    if isinstance(out.get("base"), dict):
        out["base"] = rebase_config(out["base"], recorded, folder)
    return out


__all__ = ["PATH_KEYS", "rebase", "rebase_config", "recorded_folder", "resolve_meta"]
