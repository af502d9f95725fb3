"""The sweep's verdict, as the report, `analyze` and `compare` show it: read from verdict.json, never recomputed.

When a sweep ends it retrains its best self-training config and its best supervised config with fresh seeds and
writes `verdict.json` (`selftune.search.verdict`; read here through `selftune.sweepfolder.read_verdict`): the
answer (helps / hurts / no clear difference), the mean paired difference on test with its 95% interval, each
arm, each confirmation run, per class, and the flags. Its `lines` are what the console printed: every view
shows those words. Sweeps written before the confirmation (format 1: the best trial against one untuned
control run, no interval) still read, labelled as such.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import pandas as pd

from selftune.sweepfolder import read_verdict, verdict_problem

OLD_FORMAT = ("old verdict (before confirmation runs): the best trial against one untuned control run, no interval; "
              "rerun the sweep's verdict to get one")


def _num(v: Any) -> float:
    """A score from verdict.json as a float (NaN when missing or not a number)."""
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else float("nan")


def _pts(x: Any) -> str:
    v = _num(x)
    return "-" if not math.isfinite(v) else f"{v * 100:+.2f}"


@dataclass(frozen=True)
class Verdict:
    """verdict.json, read."""

    record: dict[str, Any]

    @property
    def current(self) -> bool:
        """Written by the confirmation (format 2) rather than by the one-run comparison before it."""
        return self.record.get("format") == 2

    @property
    def headline(self) -> str:
        return str(self.record.get("headline") or "VERDICT: (verdict.json has no headline)")

    @property
    def outcome(self) -> str | None:
        """helps | hurts | no clear difference; None without a comparison (or in an old verdict)."""
        out = self.record.get("outcome") if self.current else None
        return out if isinstance(out, str) else None

    @property
    def split(self) -> str | None:
        if self.current:
            return self.record.get("split")
        scores = self.record.get("scores") or {}
        return next((s for s in ("test", "val") if isinstance(scores.get(s), dict)), None)

    @property
    def difference(self) -> dict[str, Any]:
        d = self.record.get("difference") if self.current else None
        return d if isinstance(d, dict) else {}

    @property
    def flags(self) -> list[str]:
        flags = [str(f) for f in self.record.get("flags") or []] if self.current else []
        return flags if self.current else [OLD_FORMAT]

    def lines(self) -> list[str]:
        """The terminal version, as the sweep printed it."""
        lines = self.record.get("lines") if self.current else None
        if isinstance(lines, list) and lines:
            return [str(x) for x in lines]
        return [self.headline, f"  note: {OLD_FORMAT}"]

    def cell(self) -> str:
        """The verdict in a few words (compare's overview): the answer, the difference and its interval."""
        if not self.current:
            return "old verdict, no interval"
        d = self.difference
        if self.outcome is None or not d:
            return "no comparison"
        return f"{self.outcome}: {_pts(d.get('mean'))} [{_pts(d.get('low'))}, {_pts(d.get('high'))}] on {self.split}"

    def arms(self) -> pd.DataFrame:
        """One row per arm: where its config came from, whether tuned, its mean score over the confirmation seeds."""
        cols = ["arm", "method", "trial", "tuned", f"{self.split} mean", "per seed"]
        if not self.current or self.outcome is None:
            return pd.DataFrame(columns=cols)
        rows = []
        for arm in ("self_training", "supervised"):
            a = self.record.get("arms", {}).get(arm, {})
            per_seed = [_num(r.get(self.split)) for r in self.record.get("runs", []) if r.get("arm") == arm]
            rows.append({"arm": arm.replace("_", "-"), "method": a.get("method"), "trial": a.get("trial_id") or
                         "base config", "tuned": bool(a.get("tuned")), f"{self.split} mean": _num(a.get("mean")),
                         "per seed": ", ".join(f"{x * 100:.1f}" for x in per_seed)})
        return pd.DataFrame(rows, columns=cols)

    def runs(self) -> pd.DataFrame:
        """The confirmation runs: arm, seed, status, best val evaluation (of the sweep's metric, named as it is), the
        decisive split's score."""
        metric = str(self.record.get("metric") or "val_miou")  # each run's `best_val_miou` holds its best of it
        rows = [{"arm": str(r.get("arm", "")).replace("_", "-"), "seed": r.get("seed"), "status": r.get("status"),
                 f"best {metric}": _num(r.get("best_val_miou")), "best at": r.get("best_iteration"),
                 "iterations": r.get("iterations"), str(self.split): _num(r.get(self.split))}
                for r in (self.record.get("runs") or [] if self.current else [])]
        return pd.DataFrame(rows)

    def per_class(self) -> pd.DataFrame:
        """One row per class: the mean difference (IoU points), its interval, and helped / hurt where the interval
        excludes 0; largest difference first."""
        cols = ["class", "difference (points)", "low", "high", "word"]
        if not self.current:
            return pd.DataFrame(columns=cols)
        rows = [{"class": n, "difference (points)": _num(d.get("mean")) * 100, "low": _num(d.get("low")) * 100,
                 "high": _num(d.get("high")) * 100, "word": d.get("word", "")}
                for n, d in (self.record.get("per_class") or {}).items() if isinstance(d, dict)]
        df = pd.DataFrame(rows, columns=cols)
        return df.sort_values("difference (points)", ascending=False, kind="stable").reset_index(drop=True)


def load_verdict(path: str, *, warn: bool = True) -> Verdict | None:
    """The sweep's verdict, or None when the sweep has no verdict.json (control: none, or not finished) or one that
    cannot be read. With `warn`, a damaged one, or a missing one the sweep should have, is warned about, naming the
    file (the words of `verdict_note`, which a caller showing them itself asks for instead)."""
    record = read_verdict(path, warn=False)
    if record is None and warn and (why := verdict_problem(path)):
        warnings.warn(why, stacklevel=2)
    return Verdict(record) if record is not None else None


def verdict_note(path: str, meta: dict[str, Any] | None = None) -> str | None:
    """Why the sweep at `path` has no verdict to show though it should (verdict.json damaged, or missing while its
    best_config.yaml carries one or it ended with a control), or that it has not ended yet; None otherwise."""
    return verdict_problem(path, meta)
