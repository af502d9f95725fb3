"""`selftune sweep` and `selftune export`."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from selftune.errors import ConfigError, Interrupted
from selftune.trainable.config import parse_sets

_FLAG_KEYS = ("data", "space", "searcher", "scheduler", "num_samples", "max_concurrent", "time_budget_s",
              "storage", "name", "address", "cpus_per_trial", "gpus_per_trial", "seed", "max_t", "num_cpus",
              "budget_iters", "wandb_project", "mlflow_uri", "control", "confirm_seeds", "verbose")


def register(sub: Any) -> None:
    p = sub.add_parser(
        "sweep", help="run a hyperparameter sweep (Ray Tune + Optuna + ASHA)",
        description="Run a sweep from a sweep file (see docs/sweep.md), or --demo for a small sweep on the "
        "built-in demo data. Everything is checked before any trial starts.",
    )
    p.add_argument("sweep_file", nargs="?", help="sweep YAML file")
    p.add_argument("--demo", action="store_true", help="a complete small sweep on the demo data (about 10 min on 2 CPUs)")
    p.add_argument("--resume", metavar="PATH", help="continue the sweep in this sweep folder (storage/name)")
    p.add_argument("--restart-errored", action="store_true", help="with --resume: rerun errored trials from scratch "
                   "(default: resume them from their last checkpoint)")
    p.add_argument("--check", action="store_true", help="check the sweep file, data, space and storage, then exit")
    p.add_argument("--data", help="dataset root (default: the built-in demo data)")
    p.add_argument("--space", help="space name (methods, thresholds, thresholds_independent, thresholds_shared, wide, "
                   "supervised, s4gan, diverse_head, binary, binary_points) or module:function")
    p.add_argument("--searcher", choices=["tpe", "tpe-stock", "random"],
                   help="tpe (default: Optuna's TPE, told ASHA-stopped trials as PRUNED), tpe-stock (Ray's "
                   "OptunaSearch as is, which tells them COMPLETE) or random (uniform, same bookkeeping as tpe)")
    p.add_argument("--scheduler", choices=["asha", "fifo"],
                   help="asha (default: stop weak trials early at its rungs) or fifo (every trial runs to max_t)")
    p.add_argument("--num-samples", type=int, help="number of trials")
    p.add_argument("--max-concurrent", type=int, help="trials at once")
    p.add_argument("--time-budget-s", help="wall-clock budget for the sweep: seconds, or 90s, 10m, 1h30m")
    p.add_argument("--max-t", type=int, help="iterations a trial may run at most")
    p.add_argument("--cpus-per-trial", type=float,
                   help="CPUs Ray reserves for each trial; the trial sets its torch threads from it (default 1)")
    p.add_argument("--gpus-per-trial", type=float, help="GPUs Ray reserves for each trial (default 0: CPU only); "
                   "a fraction shares a GPU, e.g. 0.5 runs two trials on one (their memory is not isolated)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the in-process Ray (local runs)")
    p.add_argument("--storage", help="results folder or s3:// / gs:// URI (default: ./selftune_results)")
    p.add_argument("--name", help="sweep name (its sweep folder under storage)")
    p.add_argument("--address", help="Ray cluster to attach to ('auto' on a cluster node); default: start Ray here")
    p.add_argument("--seed", type=int, help="sampler seed")
    p.add_argument("--budget-iters", type=int, help="compute budget: stop once all trials ran this many iterations")
    p.add_argument("--wandb-project", help="also log every trial to this W&B project (pip install wandb)")
    p.add_argument("--mlflow-uri", help="also log every trial to MLflow, e.g. sqlite:///mlflow.db")
    p.add_argument("--control", choices=["tuned", "base", "none"],
                   help="the verdict's supervised arm: tuned (default: the best supervised trial, or a tuned "
                   "supervised search when the space has none), base (the base config, untuned) or none (no verdict)")
    p.add_argument("--no-control", dest="control", action="store_const", const="none",
                   help="no verdict (same as --control none)")
    p.add_argument("--confirm-seeds", type=int, help="fresh seeds per arm the verdict retrains with (default 3)")
    p.add_argument("--verbose", type=int, choices=[0, 1, 2, 3], help="console: 0 silent, 1 (default) a line per "
                   "finished trial and a status line a minute, 2 Ray's trial tables, 3 more")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a train config key of the base config (repeatable), e.g. --set max_iters=600")
    p.set_defaults(func=run_sweep_cmd)

    e = sub.add_parser("export", help="write the best trial's resolved train config (with provenance) as YAML",
                       description="Export the complete, resolved train config of the best trial (or the top k) "
                       "of a sweep, by --metric at each trial's best evaluation. `selftune train --config FILE` "
                       "takes it unchanged.")
    e.add_argument("path", help="the sweep folder (storage/name)")
    e.add_argument("--top-k", type=int, default=1, help="export the k best trials (default 1)")
    e.add_argument("--out", type=Path, help="output file (FILE.yaml: every exported config in it, separated by "
                   "---) or, for k>1 and a name without .yaml, a folder of rank_<r>.yaml files; default: print to stdout")
    e.add_argument("--metric", help="the metric to rank trials by, as `selftune analyze` takes it (default: the "
                   "sweep's own, its selftune_sweep.yaml `metric`; val_miou when it records none)")
    e.add_argument("--mode", choices=["max", "min"],
                   help="whether higher or lower --metric is better (default: min for losses and gaps, else max)")
    e.set_defaults(func=export_cmd)


def run_sweep_cmd(args: argparse.Namespace) -> int:
    from selftune.search.run import plan_sweep, resume_sweep, run_sweep
    from selftune.search.sweepfile import SweepConfig, demo_sweep

    if args.resume:
        _resume_takes_no(args)
        with _ctrl_c_says_how_to_resume(args.resume):
            summary = resume_sweep(args.resume, restart_errored=args.restart_errored, address=args.address,
                                   num_cpus=args.num_cpus)
        _print_summary(summary)
        return 0
    if args.restart_errored:
        raise ConfigError("--restart-errored goes with --resume PATH (it reruns a resumed sweep's errored trials)")
    if args.demo and args.sweep_file:
        raise ConfigError("give a sweep file or --demo, not both")
    sets = parse_sets(args.set)
    if args.demo or not args.sweep_file:  # the demo's derived lengths follow --set max_iters / --max-t
        sweep = demo_sweep(sets, max_t=args.max_t)
    else:
        sweep = SweepConfig.from_yaml(args.sweep_file)
    if not args.demo and not args.sweep_file:
        print("selftune: no sweep file given; running the demo sweep (--demo)", file=sys.stderr)
    changes = {k: getattr(args, k) for k in _FLAG_KEYS if getattr(args, k, None) is not None}
    if sets:
        changes["base"] = {**sweep.base, **sets}
    sweep = SweepConfig.from_dict({**sweep.to_dict(), **changes})
    if args.check:
        plan = plan_sweep(sweep)
        print(f"sweep {sweep.name!r} is valid: data {plan.data_root} ({plan.num_classes} classes), space "
              f"{sweep.space!r}, max_t {plan.max_t}, grace period {plan.grace_period}, "
              + (f"shared stage {plan.stage_iters} iterations, " if plan.stage_iters else "")
              + f"storage {plan.experiment_dir}")
        return 0
    with _ctrl_c_says_how_to_resume(sweep_folder(sweep)):
        summary = run_sweep(sweep)
    _print_summary(summary)
    return 0


def sweep_folder(sweep: Any) -> str:
    """Where `sweep` writes: its storage (made absolute, as the driver makes it) and name."""
    from selftune.sweepfolder import REMOTE_SCHEMES, experiment_path

    storage = sweep.storage if sweep.storage.startswith(REMOTE_SCHEMES) else str(Path(sweep.storage).expanduser().resolve())
    return experiment_path(storage, sweep.name)


@contextlib.contextmanager
def _ctrl_c_says_how_to_resume(folder: str) -> Iterator[None]:
    """Ctrl-C outside the trials (the shared stage, the verdict's confirmation runs, starting Ray): one message, the
    `selftune sweep --resume` command when the sweep's record is written, else that nothing was (exit 130). During
    the trials Ray Tune catches it and `adapter.fit` raises `Interrupted` itself."""
    try:
        yield
    except KeyboardInterrupt:
        from selftune.sweepfolder import SWEEP_FILE, is_remote

        folder = folder if is_remote(folder) else str(Path(folder).expanduser().resolve())
        if is_remote(folder) or (Path(folder) / SWEEP_FILE).is_file():
            raise Interrupted(f"Ctrl-C stopped the sweep before it ended; it is not finished, so no best config or "
                              f"verdict was written. Continue it with `selftune sweep --resume {folder}`: what it "
                              "trained so far goes on from its checkpoints") from None
        raise Interrupted("Ctrl-C stopped the sweep before its record was written; nothing of it is on disk: run the "
                          "same command again") from None


def _resume_takes_no(args: argparse.Namespace) -> None:
    """A resumed sweep runs what its folder recorded: a flag that would change it is refused by name, not ignored."""
    given = [f"--{k.replace('_', '-')}" for k in _FLAG_KEYS if k not in ("address", "num_cpus")
             and getattr(args, k, None) is not None]
    given += ["--set"] * bool(args.set) + ["--demo"] * args.demo + ["--check"] * args.check
    given += [f"the sweep file {args.sweep_file}"] * bool(args.sweep_file)
    if given:
        raise ConfigError(f"--resume {args.resume} continues the sweep as its selftune_sweep.yaml recorded it (its "
                          f"data, space, base config and budgets); {', '.join(given)} would change it: drop "
                          f"{'it' if len(given) == 1 else 'them'}, or start a new sweep with another --name")


def _print_summary(summary: Any) -> None:
    from selftune.search.verdict import summary_lines

    print(f"\nsweep folder: {summary.experiment_dir} ({summary.trials} trials)")
    best = summary.best
    if best is None:
        print("no trial finished an evaluation; nothing to export")
        return
    print(f"best trial:   {best['trial_id']} ({best['config']['method']})  {best['metric']} {best['value']:.4f} at "
          f"iteration {best['iteration']} "
          f"({best['outcome']})")
    print(f"best config:  {summary.best_config_path}")
    print(f"checkpoint:   {best['checkpoint']}")
    print(f"best model:   {best['best_model']}")
    print(f"retrain with: selftune train --config {summary.best_config_path} --data {best['data_root']}")
    print(f"analyse with: selftune analyze {summary.experiment_dir}")
    if summary.verdict is not None:  # the one thing the sweep was for: once, last, where the eye lands
        print("\n" + "\n".join(summary_lines(summary.verdict)))


def export_cmd(args: argparse.Namespace) -> int:
    from selftune.search.export import export_best, summary_line, write_exports

    path = args.path if "://" in args.path else str(Path(args.path).resolve())
    if args.out is None:  # the YAML goes to stdout, what was exported to stderr
        entries, text = export_best(path, args.top_k, args.metric, args.mode)
        sys.stdout.write(text)
        for entry in entries:
            print(f"selftune: exported {summary_line(entry)}", file=sys.stderr)
        return 0
    for p, entry in write_exports(path, args.out, args.top_k, args.metric, args.mode):
        print(f"wrote {p}: {summary_line(entry)}")
    return 0
