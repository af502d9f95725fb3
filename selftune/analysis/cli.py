"""`selftune analyze PATH`: trial tables, figures and an HTML report of a sweep, plus a terminal summary;
`selftune compare A B [C...]`: several sweeps side by side."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "analyze", help="trial tables, figures and an HTML report of a sweep",
        description="Analyse a sweep folder offline (local, NFS, or s3:// / gs://; no Ray cluster needed): "
        "write trials.parquet/.csv, history.parquet, figures (PNG and interactive HTML) and report.html, "
        "and print the top trials, the status counts and what to run next. See docs/analysis.md.",
    )
    p.add_argument("path", help="the sweep folder (storage/name)")
    p.add_argument("--out", help="output folder (default: PATH/analysis); only files of this command are written there")
    p.add_argument("--metric", default=None,
                   help="the metric to rank, plot and compute importance for (default: the sweep's own, its "
                   "selftune_sweep.yaml `metric`; val_miou when it records none)")
    p.add_argument("--mode", choices=["max", "min"],
                   help="whether higher or lower --metric is better (default: min for losses and gaps, else max)")
    p.add_argument("--color-by", metavar="PARAM",
                   help="hyperparameter that colours the learning curves (default: the most important one)")
    p.add_argument("--top-k", type=int, default=5, help="trials in the summary table and the per-class IoU plot (default 5)")
    p.add_argument("--watch", type=float, nargs="?", const=30.0, metavar="SECONDS",
                   help="while the sweep runs: analyse it again every SECONDS (default 30), rewriting the report "
                   "(which then reloads itself) and printing one status line each time; Ctrl-C ends it. Put it "
                   "after PATH")
    p.add_argument("--watch-rounds", type=int, metavar="N",
                   help="with --watch: stop after N rounds (for scripts and tests; default: until Ctrl-C)")
    p.set_defaults(func=analyze_cmd)

    c = sub.add_parser(
        "compare", help="several sweeps side by side: best so far against compute, incumbents, importances",
        description="Compare sweep folders offline: each sweep's best value so far against the optimizer "
        "iterations its trials ran (one figure), the best trial with its method and parameters, trials per status, "
        "importances and verdicts side by side. Writes report.html, progress.png/.html and overview.csv to --out "
        "and prints the tables. See docs/analysis.md.",
    )
    c.add_argument("paths", nargs="+", metavar="PATH", help="two or more sweep folders (storage/name)")
    c.add_argument("--out", default="compare", help="output folder (default: ./compare)")
    c.add_argument("--metric", help="the metric to compare (default: the one every sweep recorded as its own, "
                   "else val_miou)")
    c.add_argument("--mode", choices=["max", "min"],
                   help="whether higher or lower --metric is better (default: min for losses and gaps, else max)")
    c.set_defaults(func=compare_cmd)


def analyze_cmd(args: argparse.Namespace) -> int:
    from selftune.analysis.report import analyze, print_summary, watch
    from selftune.errors import SelftuneError

    metric = args.metric or sweep_metric(args.path)
    if args.watch is not None:
        return watch(args.path, args.out, every=args.watch, rounds=args.watch_rounds, metric=metric,
                     mode=args.mode, color_by=args.color_by, top_k=args.top_k)
    if args.watch_rounds is not None:
        raise SelftuneError("--watch-rounds needs --watch")
    result = analyze(args.path, args.out, metric=metric, mode=args.mode, color_by=args.color_by,
                     top_k=args.top_k)
    print_summary(result, args.top_k)
    return 0


def sweep_metric(path: str) -> str:
    """The metric the sweep at `path` optimised (its selftune_sweep.yaml `metric`), or val_miou without one."""
    from selftune.sweepfolder import METRIC, read_sweep_meta

    metric = read_sweep_meta(path).get("metric")
    return metric if isinstance(metric, str) and metric else METRIC


def compare_cmd(args: argparse.Namespace) -> int:
    from selftune.analysis.compare import compare, print_comparison

    print_comparison(compare(args.paths, args.out, metric=args.metric, mode=args.mode))
    return 0
