"""The `selftune` command: one parser, subcommands registered by each subpackage.

Each subcommand module exposes `register(subparsers)`, which adds its parser and sets
`func(args) -> int`. Heavy imports (torch, ray) happen inside `func`, so `--help` is fast.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

from selftune import __version__
from selftune.errors import Interrupted, SelftuneError


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
        with readable_warnings(), _one_writer(args):
            return int(args.func(args) or 0)
    except Interrupted as exc:  # Ctrl-C: not an error of the input, and the message says how to go on
        print(f"selftune: interrupted: {exc}", file=sys.stderr)
        return exc.exit_code
    except SelftuneError as exc:
        print(f"selftune: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("selftune: interrupted", file=sys.stderr)
        return 130


PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


@contextlib.contextmanager
def readable_warnings() -> Iterator[None]:
    """While a command runs, a warning prints as one line, `selftune: warning: MESSAGE`, without Python's source
    line, and each message once (the same words warned from two places, e.g. a config checked by `--check` and
    again by the sweep, print once). One from outside selftune (torch, matplotlib) names its kind and where it came
    from. Filters and the formatter are put back at the end, so a test's `pytest.warns` still sees every warning."""
    saved = warnings.formatwarning

    def one_line(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 line: str | None = None) -> str:
        text = str(message).strip()
        if not os.path.abspath(filename).startswith(PACKAGE_DIR + os.sep):
            text += f" ({category.__name__}, {os.path.basename(filename)}:{lineno})"
        return f"selftune: warning: {text}\n"

    with warnings.catch_warnings():
        warnings.onceregistry.clear()  # "once" per command, not per process (tests call main many times)
        warnings.filterwarnings("once", category=UserWarning)
        warnings.formatwarning = one_line
        try:
            yield
        finally:
            warnings.formatwarning = saved


def _one_writer(args: argparse.Namespace) -> Any:
    """`train --out DIR`: DIR is held against a second writer for the command's life (`fileio.folder_lock`; a
    second `selftune train --out DIR` is refused naming this one's pid). Sweeps hold their sweep folder in
    `selftune.search.run`."""
    if args.command == "train" and getattr(args, "out", None) is not None:
        from selftune.fileio import folder_lock

        return folder_lock(args.out, "run folder", "choose another --out")
    return contextlib.nullcontext()
