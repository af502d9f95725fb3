"""Where does self-training gain on the demo data? Test mIoU on tiles of the labelled surveys vs the others.

    python bench/demo_survey_split.py --demo bench/out/fairness_v6/demo \
        bench/out/fairness_v6/runs_v6_rounds/{supervised,supervised_continued,self_training_rounds}-s0

Since demo v6 the labelled tiles come from the first `train_surveys` of the 16 survey styles, while val,
test and the unlabelled pool come from all 16. This splits the demo set's test tiles by survey (the survey
is the first draw of each tile's generator, as in `render_tile`) into two data roots of symlinks under
`--work`, and scores each run folder's `best_model_ema.pt` on both with `selftune evaluate`.
Prints a table and writes it as CSV with `--csv`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from pathlib import Path


def split_roots(demo: Path, work: Path, limit: int | None = None) -> dict[str, Path]:
    """Two data roots under WORK whose test split holds the tiles of the labelled surveys, or of the rest
    (at most `limit` tiles each)."""
    from selftune.data.demo import MARKER, N_STYLES, tile_rng

    meta = json.loads((demo / MARKER).read_text())
    seed, surveys = meta["spec"]["seed"], meta["spec"].get("train_surveys", N_STYLES)
    roots = {"labelled surveys": work / "test_seen", "other surveys": work / "test_unseen"}
    for root in roots.values():
        if root.exists():
            raise SystemExit(f"{root} exists; remove it or pass another --work")
        (root / "test" / "images").mkdir(parents=True)
        (root / "test" / "masks").mkdir(parents=True)
        for name in ("classes.csv", "train", "val", "unlabeled"):
            (root / name).symlink_to((demo / name).resolve())
    taken = dict.fromkeys(roots, 0)
    for image in sorted((demo / "test" / "images").glob("test_*.png")):
        index = int(image.stem.split("_")[1])
        survey = int(tile_rng(seed, "test", index).integers(N_STYLES))  # render_tile's first draw
        kind = "labelled surveys" if survey < surveys else "other surveys"
        if limit is not None and taken[kind] >= limit:
            continue
        taken[kind] += 1
        root = roots[kind]
        (root / "test" / "images" / image.name).symlink_to(image.resolve())
        (root / "test" / "masks" / image.name).symlink_to((demo / "test" / "masks" / image.name).resolve())
    return roots


def test_miou(checkpoint: Path, data: Path) -> float:
    from selftune.cli import main as cli

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        if cli(["evaluate", "--checkpoint", str(checkpoint), "--data", str(data), "--split", "test"]) != 0:
            raise SystemExit(f"selftune evaluate failed on {checkpoint}")
    line = next(x for x in out.getvalue().splitlines() if x.startswith("mIoU"))
    return float(line.split()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="run folders holding best_model_ema.pt")
    p.add_argument("--demo", type=Path, required=True, help="the demo set the runs trained on")
    p.add_argument("--work", type=Path, default=Path("bench/out/survey_split"), help="where the split roots go")
    p.add_argument("--csv", type=Path, help="also write the table here")
    p.add_argument("--quick", action="store_true", help="only 8 test tiles of each kind (a check, not a measurement)")
    args = p.parse_args(argv)
    import pandas as pd

    roots = split_roots(args.demo, args.work, 8 if args.quick else None)
    counts = {k: len(list((r / "test" / "images").iterdir())) for k, r in roots.items()}
    rows = [{"run": f"{run.parent.name}/{run.name}", **{f"{k} ({counts[k]} tiles)": 100 * test_miou(
        run / "best_model_ema.pt", r) for k, r in roots.items()}} for run in args.runs]
    df = pd.DataFrame(rows)
    print(df.round(1).to_string(index=False))
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        df.round(2).to_csv(args.csv, index=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
