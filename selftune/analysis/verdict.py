"""The sweep's verdict, as the report's first section shows it.

When a sweep ends it trains a compute-matched supervised control and writes `verdict.json`
(`selftune.search.verdict`; read here through `selftune.sweepfolder.read_verdict`): the best self-training
trial and the control scored the same way on val and, when the dataset has one, on test, per class.
The val comparison is selection-biased (the best of N trials against one control run); test was scored
once and never used for any choice, so it decides. A sweep without verdict.json has no verdict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from selftune.sweepfolder import read_verdict

SPLITS = ("val", "test")


def _num(v: Any) -> float:
    """A score from verdict.json as a float (NaN when missing or not a number)."""
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else float("nan")


@dataclass(frozen=True)
class Verdict:
    """verdict.json, read: the headline, both runs, and their scores on val and test."""

    record: dict[str, Any]

    @property
    def headline(self) -> str:
        return str(self.record.get("headline") or "VERDICT: (verdict.json has no headline)")

    @property
    def best_trial(self) -> dict[str, Any] | None:
        best = self.record.get("best_trial")
        return best if isinstance(best, dict) else None

    @property
    def control(self) -> dict[str, Any]:
        control = self.record.get("control")
        return control if isinstance(control, dict) else {}

    @property
    def scores(self) -> dict[str, dict[str, Any]]:
        scores = self.record.get("scores")
        return {s: scores[s] for s in SPLITS if isinstance(scores, dict) and isinstance(scores.get(s), dict)}

    @property
    def decisive_split(self) -> str | None:
        """test when the dataset has one (scored once, never chosen on), else val."""
        return next((s for s in ("test", "val") if s in self.scores), None)

    def split_note(self, split: str) -> str:
        if split == "val":
            n = self.record.get("self_training_trials", self.record.get("trials", "?"))
            return f"selection-biased: the best of {n} trials against one control run, so biased up"
        return "scored once, never used for any choice: this one decides"

    def splits(self) -> pd.DataFrame:
        """One row per split: images, best trial's mIoU, control's, best minus control (in IoU points)."""
        rows = []
        for split, s in self.scores.items():
            delta = _num(s.get("delta"))
            rows.append({"split": split, "images": s.get("images"), "best trial mIoU": _num(s.get("best")),
                         "control mIoU": _num(s.get("control")), "delta (points)": delta * 100,
                         "note": self.split_note(split)})
        return pd.DataFrame(rows, columns=["split", "images", "best trial mIoU", "control mIoU", "delta (points)",
                                           "note"])

    def per_class(self) -> pd.DataFrame:
        """One row per class: best, control and delta (IoU points) on each split, sorted by the delta on the
        decisive split, largest first; a class absent from a split (NaN IoU) sorts last."""
        cols: dict[str, dict[str, float]] = {}
        names: list[str] = []
        for split, s in self.scores.items():
            for name, d in (s.get("per_class") or {}).items():
                if name not in names:
                    names.append(name)
                d = d if isinstance(d, dict) else {}
                cols.setdefault(f"{split} best", {})[name] = _num(d.get("best"))
                cols.setdefault(f"{split} control", {})[name] = _num(d.get("control"))
                cols.setdefault(f"{split} delta (points)", {})[name] = _num(d.get("delta")) * 100
        df = pd.DataFrame({"class": names, **{k: [v.get(n, float("nan")) for n in names] for k, v in cols.items()}})
        key = f"{self.decisive_split} delta (points)"
        if key in df:
            df = df.sort_values(key, ascending=False, na_position="last", kind="stable")
        return df.reset_index(drop=True)

    def deltas(self, split: str | None = None) -> pd.Series:
        """Best minus control IoU points per class on `split` (default: the decisive one), NaN dropped, sorted."""
        split = split or self.decisive_split
        df = self.per_class()
        key = f"{split} delta (points)"
        if key not in df:
            return pd.Series(dtype=float)
        s = df.set_index("class")[key]
        return s[s.map(math.isfinite)].sort_values(ascending=False)

    def lines(self, top: int = 3) -> list[str]:
        """The terminal version: the headline, one line per split, and the `top` classes helped and hurt most."""
        out = [self.headline]
        for split, s in self.scores.items():
            best, control, delta = _num(s.get("best")), _num(s.get("control")), _num(s.get("delta"))
            note = f"; {self.split_note(split)}" if split == "val" else ""
            out.append(f"  {split}: best trial {best:.4f} vs control {control:.4f} mIoU ({delta * 100:+.2f} points"
                       f"{note})")
        d = self.deltas()
        if len(d):
            helped = ", ".join(f"{n} {v:+.1f}" for n, v in d.head(top).items() if v > 0) or "none"
            hurt = ", ".join(f"{n} {v:+.1f}" for n, v in d.tail(top)[::-1].items() if v < 0) or "none"
            out.append(f"  per class on {self.decisive_split} (IoU points, best minus control): helped {helped}; "
                       f"hurt {hurt}")
        return out


def load_verdict(path: str) -> Verdict | None:
    """The sweep's verdict, or None when the sweep has no verdict.json (control: false, or not finished)."""
    record = read_verdict(path)
    return Verdict(record) if record is not None else None
