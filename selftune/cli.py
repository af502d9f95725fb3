"""The `selftune` command: one parser, subcommands registered by each subpackage.

Each subcommand module exposes `register(subparsers)`, which adds its parser and sets
`func(args) -> int`. Heavy imports (torch, ray) happen inside `func`, so `--help` is fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from selftune import __version__
from selftune.errors import SelftuneError


def build_parser() -> argparse.ArgumentParser:
    from selftune.analysis import cli as analysis_cli
    from selftune.data import cli as data_cli
    from selftune.search import cli as search_cli
    from selftune.trainable import train_cli

    parser = argparse.ArgumentParser(
        prog="selftune",
        description="Hyperparameter search for semi-supervised (self-training) segmentation.",
    )
    parser.add_argument("--version", action="version", version=f"selftune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    data_cli.register(sub)
    train_cli.register(sub)
    search_cli.register(sub)
    analysis_cli.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (2 for a user error)."""
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        return int(args.func(args) or 0)
    except SelftuneError as exc:
        print(f"selftune: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("selftune: interrupted", file=sys.stderr)
        return 130
