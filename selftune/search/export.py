"""Export the best trial's (or top k trials') complete, resolved train config, with provenance."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from selftune import __version__
from selftune.errors import SelftuneError
from selftune.fileio import write_atomic
from selftune.spaces import apply_params
from selftune.sweepfolder import DIVERGED, ERRORED, METRIC, TRIAL_RUN_DIR, read_sweep_meta, read_trials
from selftune.trainable.config import TrainConfig


def rank_trials(path: str) -> list[dict[str, Any]]:
    """Trials with at least one evaluation, best val mIoU first; each with provenance and resolved config."""
    meta = read_sweep_meta(path)
    base = TrainConfig.from_dict(meta["base"])
    entries = []
    for t in read_trials(path):
        if t.outcome in (DIVERGED, ERRORED):
            continue
        scored = [r for r in t.results if isinstance(r.get(METRIC), int | float) and not math.isnan(r[METRIC])]
        if not scored:
            continue
        best = max(scored, key=lambda r: r[METRIC])
        ck_name = best.get("checkpoint_dir_name")
        checkpoint = f"{t.path}/{ck_name}" if ck_name and f"{t.path}/{ck_name}" in t.checkpoints else None
        config = apply_params(base, t.params)
        if config.method == "rounds" and meta.get("shared_stage_model"):  # as the trial ran: from the shared stage
            config = config.replace(teacher_checkpoint=meta["shared_stage_model"])
        entries.append({
            "trial_id": t.trial_id,
            "metric": METRIC,
            "value": float(best[METRIC]),
            "iteration": int(best.get("iteration", best.get("training_iteration", 0))),
            "outcome": t.outcome,
            "checkpoint": checkpoint,
            "best_model": f"{t.path}/{TRIAL_RUN_DIR}/best_model_ema.pt",
            "trial_path": t.path,
            "params": t.params,
            "selftune_version": __version__,
            "data_root": meta.get("data_root"),
            "data_fingerprint": meta.get("data_fingerprint"),
            "config": config.to_dict(),
        })
    entries.sort(key=lambda e: -e["value"])
    for rank, e in enumerate(entries, 1):
        e["rank"] = rank
    return entries


def render(entry: dict[str, Any]) -> str:
    """One exported config: provenance first, then the `config:` section `selftune train` reads."""
    provenance = {k: v for k, v in entry.items() if k not in ("config", "params")}
    doc = {"provenance": provenance, "params": entry["params"], "config": entry["config"]}
    return "# Exported by `selftune export`; `selftune train --config THIS_FILE` runs it.\n" + yaml.safe_dump(
        doc, sort_keys=False
    )


def export_best(path: str, top_k: int = 1) -> tuple[list[dict[str, Any]], str]:
    """The top-k entries and their YAML (documents separated by ---)."""
    if top_k < 1:
        raise SelftuneError(f"--top-k must be >= 1, got {top_k}")
    entries = rank_trials(path)
    if not entries:
        raise SelftuneError(f"{path} has no trial with a finished evaluation to export")
    chosen = entries[:top_k]
    return chosen, "---\n".join(render(e) for e in chosen)


def write_exports(path: str, out: Path, top_k: int) -> list[Path]:
    """top_k == 1: one file at `out`; otherwise `out` is a folder of rank_<r>.yaml files."""
    entries, _ = export_best(path, top_k)
    if top_k == 1:
        write_atomic(out, render(entries[0]))
        return [out]
    written = []
    for e in entries:
        p = out / f"rank_{e['rank']}.yaml"
        write_atomic(p, render(e))
        written.append(p)
    return written
