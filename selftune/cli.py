"""The `selftune` command: one parser, subcommands registered by each subpackage.

Each subcommand module exposes `register(subparsers)`, which adds its parser and sets
`func(args) -> int`. Heavy imports (torch, ray) happen inside `func`, so `--help` is fast.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence
from typing import Any

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
        with _one_writer(args):
            return int(args.func(args) or 0)
    except SelftuneError as exc:
        print(f"selftune: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("selftune: interrupted", file=sys.stderr)
        return 130


def _one_writer(args: argparse.Namespace) -> Any:
    """`train --out DIR`: DIR is held against a second writer for the command's life (`fileio.folder_lock`; a
    second `selftune train --out DIR` is refused naming this one's pid). Sweeps hold their sweep folder in
    `selftune.search.run`."""
    if args.command == "train" and getattr(args, "out", None) is not None:
        from selftune.fileio import folder_lock

        return folder_lock(args.out, "run folder", "choose another --out")
    return contextlib.nullcontext()
