"""The supervised control and the verdict: does self-training beat supervised training given the same compute?

After the trials, the sweep trains one compute-matched control: the base config's model, supervised,
for as many iterations as the longest trial ran (continued from the shared stage when there is one,
as the rounds trials are), patience off, its best val evaluation kept. Then the best self-training
trial's best model and the control's are scored the same way on val and, when the dataset has one,
on test (scored once here, never used for any choice). The val comparison is selection-biased: it
is the best of N trials against one control run. No Ray here; `adapter.run_task` runs these on a node.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from selftune.trainable.config import TrainConfig

SELF_TRAINING = ("ema_self_training", "rounds", "s4gan")


def control_config(base: TrainConfig, iterations: int, stage_model: str | None) -> TrainConfig:
    """The control: `base`'s model, supervised, `iterations` steps, patience off; from the shared stage if given."""
    return base.as_supervised(max_iters=iterations, patience=0, init_checkpoint=stage_model, log_images=False,
                              report_test=False)


def train_run(config: dict[str, Any], data_root: str, out_dir: str, progress: bool = False) -> dict[str, Any]:
    """Train `config` into `out_dir`, resuming it if a checkpoint is there (a sweep resumed after a crash)."""
    from selftune.trainable import checkpoint as ckpt
    from selftune.trainable.loop import train

    out = Path(out_dir)
    state = out / ckpt.CHECKPOINT_DIR / ckpt.STATE_FILE
    result = train(TrainConfig.from_dict(config), Path(data_root), out, progress=progress,
                   resume_from=state.parent if state.is_file() else None)
    return {"status": result.status, "best_val_miou": result.best_val_miou, "best_iteration": result.best_iteration,
            "iterations": result.iterations, "best_model": str(out / ckpt.BEST_FILE), "message": result.message}


def compare_models(best_model: str, control_model: str, data_root: str) -> dict[str, Any]:
    """Both models scored on val and (if the dataset has it) test: mIoU and per-class IoU, best minus control."""
    from selftune.data import split_exists
    from selftune.trainable.evaluation import score_model_file

    out: dict[str, Any] = {}
    for split in ("val", "test"):
        if split == "test" and not split_exists(Path(data_root), "test"):
            continue
        a, b = score_model_file(best_model, data_root, split), score_model_file(control_model, data_root, split)
        out[split] = {
            "images": a.images, "best": a.miou, "control": b.miou, "delta": a.miou - b.miou,
            "per_class": {name: {"best": x, "control": y, "delta": x - y}
                          for name, x, y in zip(a.class_names, a.iou, b.iou, strict=True)},
        }
    return out


def verdict(best: dict[str, Any] | None, control: dict[str, Any], scores: dict[str, Any], n_trials: int,
            n_self_training: int) -> dict[str, Any]:
    """The verdict record (verdict.json): `best` is the best self-training trial's export entry (or None)."""
    record: dict[str, Any] = {"trials": n_trials, "self_training_trials": n_self_training, "control": control,
                              "best_trial": None, "scores": scores}
    if best is not None:
        record["best_trial"] = {k: best[k] for k in ("trial_id", "value", "iteration", "outcome", "best_model")}
        record["best_trial"]["method"] = best["config"]["method"]
    record["headline"] = headline(record)
    return record


def headline(v: dict[str, Any]) -> str:
    """The verdict's first line, plain: does the best self-training trial beat the control?"""
    if v.get("best_trial") is None:
        return (f"VERDICT: no self-training trial finished an evaluation ({v['trials']} trials); nothing to compare "
                "with the supervised control")
    val, test = v["scores"].get("val"), v["scores"].get("test")
    decisive = test if test is not None else val
    where = "test" if test is not None else "val (no test split)"
    wins = decisive is not None and math.isfinite(decisive["delta"]) and decisive["delta"] > 0
    method = v["best_trial"]["method"]
    words = "beats" if wins else "does NOT beat"
    line = (f"VERDICT: self-training ({method}, trial {v['best_trial']['trial_id']}) {words} the compute-matched "
            f"supervised control on {where}: {decisive['best']:.4f} vs {decisive['control']:.4f} mIoU "
            f"({decisive['delta'] * 100:+.2f} points)")
    if test is not None and val is not None:
        line += f"; val {val['delta'] * 100:+.2f} (best of {v['self_training_trials']} trials vs one run: biased up)"
    return line


def summary_lines(v: dict[str, Any], top: int = 3) -> list[str]:
    """The headline, then the classes self-training helps and hurts most."""
    lines = [v["headline"]]
    split = "test" if "test" in v["scores"] else "val"
    per_class = v["scores"].get(split, {}).get("per_class", {})
    ranked = sorted(((d["delta"], n) for n, d in per_class.items() if math.isfinite(d["delta"])), reverse=True)
    if ranked:
        helped = ", ".join(f"{n} {d * 100:+.1f}" for d, n in ranked[:top] if d > 0) or "none"
        hurt = ", ".join(f"{n} {d * 100:+.1f}" for d, n in reversed(ranked[-top:]) if d < 0) or "none"
        lines.append(f"per class on {split} (IoU points, best trial minus control): helped {helped}; hurt {hurt}")
    return lines


__all__ = ["compare_models", "control_config", "headline", "summary_lines", "train_run", "verdict"]
