"""Data benchmarks: indexing a huge unlabelled pool, and unlabelled batch throughput.

    python bench/bench_data.py [--quick]        (or: python -m bench.bench_data)

1. Index: a 358,000-file tree of empty .png files in nested folders (like the users' 357,791
   patches; --quick: 50,000), timed with `unlabeled_index` cold (no index yet), warm (index
   reused) and after adding one file (rebuild). Goal: cold <= 5 s.
2. Throughput: a 50,000-image pool of 64 px PNGs (--quick: 5,000) through `make_batches` with
   the `scale_crop_flip` transform (crop 64, scale 1-1.25, flips), batch 8, in images/s for
   num_workers 0 and 2. Files are fresh, so reads come from the page cache.

Prints a markdown table and writes bench/out/bench_data.csv (bench/out is gitignored).
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from selftune.data import UnlabeledDataset, make_batches, unlabeled_index, unlabeled_index_path
from selftune.trainable.augment import crop_transform

OUT = Path(__file__).resolve().parent / "out"


def make_tree(top: Path, n: int, per_folder: int = 500, folders_per_group: int = 40) -> None:
    """n empty .png files in folders of `per_folder`, grouped two levels deep."""
    made = 0
    f = 0
    while made < n:
        d = top / f"g{f // folders_per_group:03d}" / f"f{f % folders_per_group:03d}"
        d.mkdir(parents=True)
        k = min(per_folder, n - made)
        for i in range(k):
            os.close(os.open(d / f"p{made + i:07d}.png", os.O_CREAT | os.O_WRONLY, 0o644))
        made += k
        f += 1


def age_dirs(top: Path, seconds: float = 3600) -> None:
    """Date the folders back, as on a dataset that has been on disk a while (fresh folders are re-listed)."""
    t = time.time() - seconds
    for dirpath, _, _ in os.walk(top):
        os.utime(dirpath, (t, t))


def bench_index(work: Path, n: int) -> list[dict]:
    root = work / "index"
    top = root / "unlabeled" / "images"
    t0 = time.perf_counter()
    make_tree(top, n)
    made_s = time.perf_counter() - t0
    age_dirs(top)
    rows = []
    t0 = time.perf_counter()
    files = unlabeled_index(root)
    rows.append(dict(bench="index", case=f"cold ({n:,} files)", value=time.perf_counter() - t0, unit="s"))
    assert len(files) == n
    t0 = time.perf_counter()
    assert len(unlabeled_index(root)) == n
    rows.append(dict(bench="index", case="warm (index reused)", value=time.perf_counter() - t0, unit="s"))
    first = top / files[0]
    (first.parent / "added.png").write_bytes(b"")
    t0 = time.perf_counter()
    assert len(unlabeled_index(root)) == n + 1
    rows.append(dict(bench="index", case="one file added (rebuild)", value=time.perf_counter() - t0, unit="s"))
    size_mb = unlabeled_index_path(root).stat().st_size / 1e6
    print(f"  made the tree in {made_s:.1f} s; index file {size_mb:.1f} MB", file=sys.stderr)
    shutil.rmtree(root)
    return rows


def make_png_pool(root: Path, n: int, size: int = 64) -> None:
    """n PNG tiles (64 distinct demo tiles, copied) in folders of 1,000."""
    import io

    from PIL import Image

    from selftune.data.demo import render_tile, tile_rng

    blobs = []
    for i in range(64):
        buf = io.BytesIO()
        Image.fromarray(render_tile(tile_rng(0, "unlabeled", i), size, shifted=True)[0]).save(buf, format="PNG")
        blobs.append(buf.getvalue())
    top = root / "unlabeled" / "images"
    for i in range(n):
        d = top / f"part{i // 1000:03d}"
        if i % 1000 == 0:
            d.mkdir(parents=True)
        (d / f"u{i:06d}.png").write_bytes(blobs[i % len(blobs)])


def bench_throughput(work: Path, n: int, images: int, batch_size: int = 8) -> list[dict]:
    root = work / "pool"
    make_png_pool(root, n)
    pool = UnlabeledDataset(root, unlabeled_index(root))
    tf = crop_transform(crop=64, scale_min=1.0, scale_max=1.25, hflip=True, vflip=True, ignore_index=255)
    rows = []
    for workers in (0, 2):
        it = make_batches(pool, batch_size=batch_size, seed=0, stream=1, start_iter=0, num_workers=workers,
                          transform=tf)
        for _ in range(5):  # start the workers, warm up
            next(it)
        steps = images // batch_size
        t0 = time.perf_counter()
        for _ in range(steps):
            next(it)
        dt = time.perf_counter() - t0
        del it
        rows.append(dict(bench="throughput", case=f"num_workers={workers} (pool {n:,}, batch {batch_size})",
                         value=steps * batch_size / dt, unit="images/s"))
    shutil.rmtree(root)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="50,000-file index tree and a 5,000-image pool")
    p.add_argument("--dir", type=Path, default=None, help="scratch folder (default: a temporary folder)")
    args = p.parse_args(argv)
    n_index = 50_000 if args.quick else 358_000
    n_pool = 5_000 if args.quick else 50_000
    env = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads "
           f"{torch.get_num_threads()}, Python {platform.python_version()}, torch {torch.__version__}, "
           f"numpy {np.__version__}")
    print(f"bench_data{' --quick' if args.quick else ''}: {env}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="selftune-bench-", dir=args.dir) as tmp:
        work = Path(tmp)
        rows = bench_index(work, n_index)
        rows += bench_throughput(work, n_pool, images=n_pool)
    print("\n| bench | case | value | unit |\n|---|---|---|---|")
    for r in rows:
        v = f"{r['value']:.3f}" if r["unit"] == "s" else f"{r['value']:,.0f}"
        print(f"| {r['bench']} | {r['case']} | {v} | {r['unit']} |")
    OUT.mkdir(parents=True, exist_ok=True)
    out = OUT / f"bench_data{'_quick' if args.quick else ''}.csv"
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["bench", "case", "value", "unit", "env"])
        w.writeheader()
        for r in rows:
            w.writerow({**r, "env": env})
    print(f"\nwrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
