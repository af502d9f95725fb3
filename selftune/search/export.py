"""Export the best trial's (or top k trials') complete, resolved train config, with provenance."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import yaml

from selftune import __version__
from selftune.errors import SelftuneError
from selftune.fileio import write_atomic
from selftune.spaces import apply_params
from selftune.sweepfolder import (
    METRIC,
    STAGE_DIR,
    TRIAL_RUN_DIR,
    metric_mode,
    read_sweep_meta,
    read_trials,
    trials_that_count,
)
from selftune.trainable.config import TrainConfig

# Ray's bookkeeping in every report: left out when the available metrics are listed
_RAY_KEYS = frozenset({"timestamp", "training_iteration", "time_this_iter_s", "time_total_s", "pid",
                       "time_since_restore", "iterations_since_restore", "iteration", "round", "done"})


def _score(r: dict[str, Any], metric: str) -> float | None:
    v = r.get(metric)
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else None


def rank_trials(path: str, metric: str | None = None, mode: str | None = None) -> list[dict[str, Any]]:
    """Trials with at least one evaluation, best `metric` first (highest, or lowest for a loss: `mode` from the
    name unless given); each with provenance and resolved config, at its best evaluation by `metric`.
    Without `metric`, the sweep's own (`metric` in selftune_sweep.yaml; val_miou when it records none)."""
    import pandas as pd

    from selftune.trainable.methods import get_method  # imports torch: here, not at `selftune --help`

    meta = read_sweep_meta(path)
    if metric is None:
        metric = meta.get("metric") if isinstance(meta.get("metric"), str) and meta.get("metric") else METRIC
    mode = mode or metric_mode(metric)
    if mode not in ("max", "min"):
        raise SelftuneError(f"mode must be 'max' or 'min', got {mode!r}")
    sign = 1.0 if mode == "max" else -1.0
    base = TrainConfig.from_dict(meta["base"])
    records = read_trials(path)
    _check_metric(metric, records)
    bests: dict[int, dict[str, Any]] = {}
    for i, t in enumerate(records):
        scored = [r for r in t.results if _score(r, metric) is not None]
        if scored:
            bests[i] = max(scored, key=lambda r: sign * _score(r, metric))  # the first of equal best ones
    table = pd.DataFrame({"status": [t.outcome for t in records],
                          f"best.{metric}": [bests[i][metric] if i in bests else None for i in range(len(records))]})
    entries = []
    # the one rule of the trials that count, analysis' too: a value of the metric, not diverged, errored or damaged
    for i in trials_that_count(table, metric).index:
        t, best = records[i], bests[i]
        ck_name = best.get("checkpoint_dir_name")
        checkpoint = f"{t.path}/{ck_name}" if ck_name and f"{t.path}/{ck_name}" in t.checkpoints else None
        config = apply_params(base, t.params)
        if meta.get("shared_stage_model") and get_method(config.method).uses_shared_stage:  # as the trial ran
            config = config.replace(teacher_checkpoint=meta["shared_stage_model"])
            _check_stage_model(path, meta["shared_stage_model"])
        entries.append({
            "trial_id": t.trial_id,
            "metric": metric,
            "mode": mode,
            "value": float(best[metric]),
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
    entries.sort(key=lambda e: -sign * e["value"])
    for rank, e in enumerate(entries, 1):
        e["rank"] = rank
    return entries


def _check_stage_model(path: str, model: str) -> None:
    """The shared stage's model an exported config starts from: read in this sweep folder (a copied folder points
    into itself), and warned about, naming it, when the folder lacks it (copied without shared_stage/)."""
    if "://" in model or Path(model).is_file():
        return
    warnings.warn(f"the shared stage's model {model}, which the exported rounds config starts from "
                  f"(teacher_checkpoint), is missing from {path}: copy its {STAGE_DIR}/ folder with the sweep, or "
                  "`selftune train` from this config fails naming it", stacklevel=3)


def _check_metric(metric: str, records: list[Any]) -> None:
    """A metric no trial reported is one message listing those they did (per-class ones as name/<class>)."""
    seen: dict[str, None] = {}
    for t in records:
        for r in t.results:
            for k, v in r.items():
                if isinstance(v, int | float) and not isinstance(v, bool):
                    seen.setdefault(k, None)
    if not seen or metric in seen:
        return  # no evaluation at all is export_best's message
    names = [n for n in seen if "/" not in n and n not in _RAY_KEYS]
    per_class = sorted({n.split("/", 1)[0] + "/<class>" for n in seen if "/" in n})
    raise SelftuneError(f"metric {metric!r} is not reported by any trial; available: {', '.join(names + per_class)}")



def summary_line(entry: dict[str, Any]) -> str:
    """One exported trial, as the command prints it: rank, trial id, its score and where it was reached."""
    return (f"rank {entry['rank']}: trial {entry['trial_id']}, {entry['metric']} {entry['value']:.4f} at iteration "
            f"{entry['iteration']} ({entry['outcome']})")


def render(entry: dict[str, Any]) -> str:
    """One exported config: provenance first, then the `config:` section `selftune train` reads."""
    provenance = {k: v for k, v in entry.items() if k not in ("config", "params")}
    doc = {"provenance": provenance, "params": entry["params"], "config": entry["config"]}
    return "# Exported by `selftune export`; `selftune train --config THIS_FILE` runs it.\n" + yaml.safe_dump(
        doc, sort_keys=False
    )


def export_best(path: str, top_k: int = 1, metric: str | None = None, mode: str | None = None
                ) -> tuple[list[dict[str, Any]], str]:
    """The top-k entries by `metric` and their YAML (documents separated by ---)."""
    if top_k < 1:
        raise SelftuneError(f"--top-k must be >= 1, got {top_k}")
    entries = rank_trials(path, metric, mode)
    if not entries:
        raise SelftuneError(f"{path} has no trial with a finished evaluation to export")
    chosen = entries[:top_k]
    return chosen, "---\n".join(render(e) for e in chosen)


YAML_SUFFIXES = (".yaml", ".yml")


def write_exports(path: str, out: Path, top_k: int, metric: str | None = None, mode: str | None = None
                  ) -> list[tuple[Path, dict[str, Any]]]:
    """One file at `out` when top_k == 1 or `out` names a YAML file (the k configs in it, separated by ---);
    otherwise `out` is a folder of rank_<r>.yaml files. Returns (file, entry)."""
    entries, text = export_best(path, top_k, metric, mode)
    if top_k == 1 or Path(out).suffix.lower() in YAML_SUFFIXES:
        write_atomic(out, text)
        return [(Path(out), e) for e in entries]
    written = []
    for e in entries:
        p = out / f"rank_{e['rank']}.yaml"
        write_atomic(p, render(e))
        written.append((p, e))
    return written
