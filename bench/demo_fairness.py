"""Is the demo data a fair testbed for tuning self-training? Supervised-only vs oracle vs self-training.

    python bench/demo_fairness.py               # 3 seeds, demo_config (1,200 iterations), 2 runs at a time
    python bench/demo_fairness.py --iters 600   # the same, 600 iterations (the cosine schedule ends at 600)
    python bench/demo_fairness.py --quick       # 1 seed, 300 iterations
    python bench/demo_fairness.py --set class_weighting=inverse_freq --runs runs_norm_w --oracle-seeds 0
                                                # every arm's settings, the runs' folder, no oracle
    python bench/demo_fairness.py --arms supervised,self_training_rounds,supervised_continued --oracle-seeds 0 \
        --runs runs_rounds                      # self-training in rounds, and its compute-matched control
    python bench/demo_fairness.py --arms supervised,self_training_rounds --st-set min_accept_ratio=0.2 \
        --oracle-seeds 0 --runs runs_rounds_floor  # rounds with a class-balanced acceptance floor
    python bench/demo_fairness.py --iters 2400 --runs runs_2400 --seeds 1 --oracle-seeds 0  # a longer budget
    python bench/demo_fairness.py --arms supervised,self_training_rounds,supervised_continued,\
self_training_round3,supervised_continued2 --st-set min_accept_ratio=0.2 --oracle-seeds 0 --runs runs_round3
                                                # a third round, and a control continued twice
    python bench/demo_fairness.py --arms supervised,self_training_rounds,supervised_continued --oracle-seeds 0 \
        --st-set min_accept_ratio=0.2 --st-set unlabeled_batch_size=24 --runs runs_ub24
                                                # round 2 with 3 unlabelled tiles per labelled one (FixMatch's mu)
    python bench/demo_fairness.py --arms supervised,self_training_rounds,supervised_continued --oracle-seeds 0 \
        --st-set min_accept_ratio=0.2 --seeds 1 --n-train 12 --work bench/out/fairness_n12 --runs runs_n12_rounds
                                                # rounds on a demo set with 12 labelled tiles (its own --work)
    python bench/demo_fairness.py --arms supervised,self_training_rounds,supervised_continued --oracle-seeds 1 \
        --st-set min_accept_ratio=0.2 --train-surveys 4 --work bench/out/fairness_s4 --runs runs_s4_rounds
                                                # labelled tiles from 4 of the 16 surveys (its own --work)
    python bench/demo_fairness.py --arms supervised,self_training,s4gan --oracle-seeds 0 --runs runs_s4gan
                                                # s4GAN against supervised and the mean teacher, same iterations

Arms, each with `demo_config()` (V3.1 scaled to the demo data) and the real `selftune train` loop:
- supervised: method=supervised on the 24 labelled tiles;
- self-training: method=ema_self_training with the unlabelled pool and the field's standard settings
  (ST_SETTINGS: FixMatch/UniMatch's 0.95 threshold for every class, ST weight 1.0, colour jitter +
  CutMix for the student, and their pseudo-label loss over all unlabelled pixels). V3.1's own
  thresholds (0.45-0.60) accept ~98% of pixels on the demo data and collapse, so they are not
  "sensible settings" here; `--st-set key=value` changes the arm;
- self_training_rounds: round 2 of self-training in rounds (ST++, Noisy Student, seed 003). The same
  settings, but the pseudo-labels come from the supervised arm's best model of the same seed, frozen
  (`teacher_checkpoint`), the student starts from it (`init_checkpoint`) and self-training starts at
  iteration 0. `--st-set` changes it too;
- supervised_continued: its control. The supervised arm's best model trained on for as many iterations
  again, labelled tiles only, so that a gain of the rounds arm is not just the longer training;
- self_training_round3, supervised_continued2: round 3 of each. Self-training in rounds again, its frozen
  teacher and start now the self_training_rounds arm's best model; its control continues the
  supervised_continued arm once more;
- s4gan: method=s4gan (the users' V1 and V2, seeds 001-002) with S4GAN_SETTINGS, V2 scaled to the demo like
  demo_config scales V3.1: lambda_fm 0.1, discriminator LR 1e-4, the image gate 0.05 -> 0.20 over the run,
  ST weight 1.0 ramped from 0.1; V2's discriminator warmup (500 of 50,000 iterations, with ST from 500) becomes
  40, the demo's ST start. The network keeps the demo's optimiser and LR (the seeds' 2.5e-4 is DeepLab-v2's
  SGD), so only the method differs from the other arms. `--s4gan-set` changes it;
- oracle: method=supervised on the labelled tiles plus the whole unlabelled pool with its true labels
  (the generator's `--unlabeled-masks`), i.e. all tiles' labels.
The score is the test mIoU of the EMA model at the evaluation with the best val mIoU (the test split
is never used for selection). Goals: oracle - supervised >= 15 mIoU points; self-training - supervised
>= 4 points, as a mean over the seeds. Writes docs/bench_results/demo_fairness.csv
(demo_fairness_<runs>.csv with --runs other than runs).
`--set key=value` changes every arm. A run folder that holds an unfinished run is resumed; one whose
run has ended (completed, early_stopped or diverged) is read, not trained again.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "bench_results"
ST_SETTINGS = {"thresholds": "[0.95,0.95,0.95,0.95,0.95,0.95,0.95]", "st_weight": "1.0", "strong_aug": "true",
               "st_loss_normalization": "all_pixels"}
S4GAN_SETTINGS = {"lambda_fm": "0.1", "lr_d": "1e-4", "threshold_st": "0.2", "threshold_st_schedule": "linear",
                  "threshold_st_start": "0.05", "d_warmup_iters": "40", "st_weight": "1.0", "st_weight_start": "0.1"}


def demo_set(demo: Path, spec) -> Path:
    """The demo set at DEMO, generated from SPEC (a DemoSpec) if absent. One made by another generator version
    or spec is refused by name rather than mixed into a comparison."""
    import dataclasses

    from selftune.data.demo import DEMO_VERSION, MARKER, generate_demo

    if not demo.exists():
        return generate_demo(demo, spec)
    try:
        meta = json.loads((demo / MARKER).read_text())
    except (OSError, ValueError):
        raise SystemExit(f"{demo} is not a selftune demo set (no readable {MARKER}); choose another --work") from None
    if meta.get("version") != DEMO_VERSION:
        raise SystemExit(f"{demo} was made by demo generator v{meta.get('version')}, this is v{DEMO_VERSION}; "
                         "choose another --work")
    wanted = dataclasses.asdict(spec)
    if diff := {k: v for k, v in meta.get("spec", {}).items() if wanted.get(k) != v}:
        asked = ", ".join(f"{k}={wanted.get(k)} (it has {v})" for k, v in sorted(diff.items()))
        raise SystemExit(f"{demo} was made with another spec: asked for {asked}; choose another --work")
    return demo


def make_oracle_root(demo: Path, oracle: Path) -> None:
    """A dataset whose train split is every labelled and unlabelled tile, with true labels (symlinks)."""
    if oracle.exists():
        return
    for split in ("val", "test"):
        (oracle / split).mkdir(parents=True)
        for sub in ("images", "masks"):
            (oracle / split / sub).symlink_to(demo / split / sub)
    (oracle / "classes.csv").symlink_to(demo / "classes.csv")
    for sub in ("images", "masks"):
        (oracle / "train" / sub).mkdir(parents=True)
    for src, prefix in ((demo / "train", "l_"), (demo / "unlabeled", "u_")):
        for img in sorted(p for p in (src / "images").rglob("*") if p.is_file()):
            mask = (src / "masks" / img.relative_to(src / "images")).with_suffix(".png")
            if mask.is_file():
                (oracle / "train" / "images" / (prefix + img.name)).symlink_to(img)
                (oracle / "train" / "masks" / (prefix + img.stem + ".png")).symlink_to(mask)


ENDED = ("completed", "early_stopped", "diverged")
ARMS = ("supervised", "self_training", "self_training_rounds", "supervised_continued", "self_training_round3",
        "supervised_continued2", "s4gan")
START = {"self_training_rounds": "supervised", "supervised_continued": "supervised",  # arm: the arm whose best
         "self_training_round3": "self_training_rounds", "supervised_continued2": "supervised_continued"}  # model


def _round(arm: str) -> int:
    """1 for an arm trained from scratch, 2 for one that starts from a round-1 arm, and so on."""
    return 1 + _round(START[arm]) if arm in START else 1


def _ended(rows: list[dict]) -> bool:
    """Whether the run of these metrics rows has ended."""
    return bool(rows) and rows[-1]["status"] in ENDED


def _rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def run(arm: str, seed: int, data: Path, out: Path, iters: int, st_settings: dict[str, str],
        s4gan_settings: dict[str, str], settings: dict[str, str]) -> dict:
    method = "s4gan" if arm == "s4gan" else "ema_self_training" if arm.startswith("self_training") else "supervised"
    run_dir = out / f"{arm}-s{seed}"
    rows = _rows(run_dir)
    if _ended(rows):
        return _summary(arm, seed, rows, wall_s=0)
    cmd = [sys.executable, "-m", "selftune", "train", "--data", str(data), "--out", str(run_dir), "--no-progress",
           "--set", f"method={method}", "--set", f"seed={seed}", "--set", "num_threads=1",
           "--set", "report_test=true", "--set", "log_images=false"]
    if iters:
        cmd += ["--set", f"max_iters={iters}"]
    for key, value in settings.items():
        cmd += ["--set", f"{key}={value}"]
    if arm in START:  # the previous round's best model of this seed: the teacher and/or the start
        first = out / f"{START[arm]}-s{seed}"
        if not _ended(_rows(first)):
            raise RuntimeError(f"{arm} seed {seed} needs the finished {START[arm]} run {first}")
        cmd += ["--set", f"init_checkpoint={first}"]
        if arm.startswith("self_training_round"):
            cmd += ["--set", f"teacher_checkpoint={first}", "--set", "st_start_iter=0"]
    arm_settings = s4gan_settings if arm == "s4gan" else st_settings if arm.startswith("self_training") else {}
    for key, value in arm_settings.items():
        cmd += ["--set", f"{key}={value}"]
    if (run_dir / "checkpoint").exists():
        cmd.append("--resume")
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode not in (0,):
        raise RuntimeError(f"{arm} seed {seed} failed:\n{proc.stderr[-2000:]}")
    return _summary(arm, seed, _rows(run_dir), wall_s=round(time.time() - t0))


def _summary(arm: str, seed: int, rows: list[dict], wall_s: int) -> dict:
    best = max(rows, key=lambda r: r["val_miou"])
    return dict(arm=arm, seed=seed, best_val=best["val_miou"], test_at_best_val=best["test_miou"],
                best_iteration=best["iteration"], iterations=rows[-1]["iteration"], status=rows[-1]["status"],
                wall_s=wall_s)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 seed, 300 iterations")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--work", type=Path, default=ROOT / "bench" / "out" / "fairness", help="runs and datasets")
    p.add_argument("--parallel", type=int, default=2, help="runs at once (one thread each)")
    p.add_argument("--iters", type=int, default=0, help="max_iters of every run (default: demo_config's)")
    p.add_argument("--oracle-seeds", type=int, default=1)
    p.add_argument("--st-set", action="append", default=[], metavar="KEY=VALUE",
                   help="change the self-training arm's settings (repeatable)")
    p.add_argument("--s4gan-set", action="append", default=[], metavar="KEY=VALUE",
                   help="change the s4gan arm's settings (repeatable)")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                   help="change every arm's settings (repeatable)")
    p.add_argument("--runs", default="runs", help="folder under --work for the run folders")
    p.add_argument("--n-train", type=int, default=None, metavar="N",
                   help="labelled tiles of the demo set under --work (default: the demo's 24)")
    p.add_argument("--train-surveys", type=int, default=None, metavar="N",
                   help="surveys the labelled tiles of the demo set under --work come from (default: the demo's)")
    p.add_argument("--plot", action="store_true",
                   help="also draw each run's val and test mIoU against iteration (a PNG beside the CSV)")
    p.add_argument("--arms", default="supervised,self_training",
                   help=f"comma-separated, from {', '.join(ARMS)} (the oracle: --oracle-seeds)")
    args = p.parse_args(argv)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    if unknown := sorted(set(arms) - set(ARMS)):
        p.error(f"unknown arm(s) {', '.join(unknown)}; choose from {', '.join(ARMS)}")
    for arm in arms:
        if arm in START and START[arm] not in arms:
            p.error(f"{arm} starts from the {START[arm]} arm's best model: add {START[arm]} to --arms")
    seeds = 1 if args.quick else args.seeds
    iters = 300 if args.quick else args.iters
    st_settings = {**ST_SETTINGS, **_pairs(args.st_set)}
    s4gan_settings = {**S4GAN_SETTINGS, **_pairs(args.s4gan_set)}
    settings = _pairs(args.settings)
    import pandas as pd

    from selftune.data.demo import DemoSpec
    from selftune.errors import DataError

    args.work = args.work.resolve()  # the oracle set links to the demo set by absolute paths
    try:
        given = {"n_train": args.n_train, "train_surveys": args.train_surveys}
        spec = DemoSpec(unlabeled_masks=True, **{k: v for k, v in given.items() if v is not None})
    except DataError as e:
        p.error(str(e))
    demo = demo_set(args.work / "demo", spec)
    oracle = args.work / "oracle"
    make_oracle_root(demo, oracle)
    jobs = [("oracle", s, oracle) for s in range(args.oracle_seeds)]
    jobs += [(a, s, demo) for s in range(seeds) for a in arms if _round(a) == 1]
    jobs.sort(key=lambda j: j[0] not in ("self_training", "s4gan"))  # longest first
    later = [[(a, s, demo) for s in range(seeds) for a in arms if _round(a) == r]  # after their previous round
             for r in range(2, 1 + max(map(_round, arms)))]
    results = []
    with ThreadPoolExecutor(args.parallel) as pool:
        for phase in (jobs, *later):
            results += pool.map(lambda j: run(j[0], j[1], j[2], args.work / args.runs, iters, st_settings,
                                              s4gan_settings, settings), phase)
    df = pd.DataFrame(results).sort_values(["arm", "seed"])
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "demo_fairness_quick.csv" if args.quick else (
        "demo_fairness.csv" if args.runs == "runs" else f"demo_fairness_{args.runs}.csv")  # one file per runs folder
    df.to_csv(RESULTS / name, index=False)
    if args.plot:
        plot_curves(args.work / args.runs, sorted(set(df["arm"])), seeds, (RESULTS / name).with_suffix(".png"))
    print(df.to_string(index=False))
    mean = df.groupby("arm")["test_at_best_val"].agg(["mean", "std", "count"]) * [100, 100, 1]
    print("\n" + mean.round(2).to_string())
    sup = mean["mean"].get("supervised")
    for arm, goal in (("oracle", 15), ("self_training", 4), ("self_training_rounds", 4), ("s4gan", 4)):
        if sup is not None and arm in mean.index:
            print(f"{arm} - supervised: {mean.loc[arm, 'mean'] - sup:+.2f} mIoU points (goal >= {goal})")
    if {"s4gan", "self_training"} <= set(mean.index):
        gain = mean.loc["s4gan", "mean"] - mean.loc["self_training", "mean"]
        print(f"s4gan - self_training (the mean teacher, same iterations): {gain:+.2f} mIoU points")
    for rounds, control in (("self_training_rounds", "supervised_continued"),
                            ("self_training_round3", "supervised_continued2")):
        if {rounds, control} <= set(mean.index):
            gain = mean.loc[rounds, "mean"] - mean.loc[control, "mean"]
            print(f"{rounds} - {control} (same iterations): {gain:+.2f} mIoU points")
    return 0


def plot_curves(runs: Path, arms: list[str], seeds: int, path: Path) -> None:
    """Val and test mIoU of every run against its iteration, one colour per arm, one line per seed; a dot
    marks each run's best val evaluation (the one scored). Written atomically to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    colors = dict(zip(arms, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    values: list[float] = []
    for arm in arms:
        for seed in range(seeds if arm != "oracle" else 1):
            rows = _rows(runs / f"{arm}-s{seed}")
            if not rows:
                continue
            best = max(rows, key=lambda r: r["val_miou"])
            values += [100 * r[k] for r in rows for k in ("val_miou", "test_miou")]
            for ax, key in zip(axes, ("val_miou", "test_miou"), strict=True):
                ax.plot([r["iteration"] for r in rows], [100 * r[key] for r in rows], color=colors[arm], lw=1.2,
                        alpha=0.8, label=arm if seed == 0 else None)
                ax.plot(best["iteration"], 100 * best[key], "o", color=colors[arm], ms=5)
    for ax, title in zip(axes, ("val mIoU (selects the scored evaluation)", "test mIoU"), strict=True):
        ax.set_title(title)
        ax.set_xlabel("iteration of the run")
        ax.grid(alpha=0.3)
    if values:  # the first evaluations of a run from scratch would flatten the rest: cut below the 10th percentile
        axes[0].set_ylim(bottom=max(0.0, sorted(values)[len(values) // 10] - 3))
    axes[0].set_ylabel("mIoU (%)")
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"{runs.name}: one line per seed, dot = best val")
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def _pairs(items: list[str]) -> dict[str, str]:
    return dict(item.partition("=")[::2] for item in items)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
