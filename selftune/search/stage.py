"""The shared first stage: the base config's model trained supervised once, before any trial, into
<sweep>/shared_stage; every trial of a method that uses it (rounds) starts from its best model."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from selftune.search.plan import stage_config
from selftune.sweepfolder import STAGE_DIR

if TYPE_CHECKING:
    from selftune.search.plan import SweepPlan


def train_shared_stage(plan: SweepPlan) -> None:
    """Train the shared first stage into <sweep>/shared_stage before any trial (resumed if it was cut short), as a
    Ray task holding the CPUs (and GPUs) of the trials that will run at once, its torch threads set to match."""
    s = plan.sweep.shared_stage
    if not s or "max_iters" not in s:
        return
    from selftune.search import adapter
    from selftune.search.verdict import train_run
    from selftune.trainable.config import TrainConfig
    from selftune.trainable.loop import metric_label

    sw = plan.sweep
    cpus = adapter.largest_node_cpus(sw.cpus_per_trial * sw.max_concurrent)
    cfg = stage_config(TrainConfig.from_dict(plan.base), int(s["max_iters"])).replace(num_threads=max(1, int(cpus)))
    out = Path(plan.experiment_dir) / STAGE_DIR
    print(f"selftune: shared first stage: {cfg.arch}/{cfg.encoder}, supervised, {cfg.max_iters} iterations, "
          f"{cpus:g} CPUs -> {out}", file=sys.stderr)
    [done] = adapter.run_tasks([(train_run, (cfg.to_dict(), plan.data_root, str(out)))], cpus=cpus,
                               gpus=sw.gpus_per_trial, desc="shared stage",
                               progress=lambda: (iterations_done(out), cfg.max_iters))
    print(f"selftune: shared first stage {done['status']}: best {metric_label(cfg.select_metric)} "
          f"{done['best_val_miou']:.4f} at iteration {done['best_iteration']}", file=sys.stderr)


def iterations_done(run_dir: Path) -> int:
    """The last evaluated iteration in a run folder's metrics.jsonl (0 before its first evaluation)."""
    import json

    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return 0
    for line in reversed(lines):
        try:
            return int(json.loads(line).get("iteration", 0))
        except (ValueError, AttributeError):
            continue
    return 0


__all__ = ["iterations_done", "train_shared_stage"]
