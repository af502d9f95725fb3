"""Bad input, tried as a new user would (issues 19, 29 and 35): every case must be one message naming the culprit,
exit 2.

    python bench/bad_inputs.py            # a quarter of an hour on 2 CPUs; one line per case and the counts
    python bench/bad_inputs.py --quick    # one case per command
    python bench/bad_inputs.py --issue 35 # one issue's classes only

Each case runs `selftune.cli.main(argv)` in this process on a small demo dataset made here, and is
sorted into: named (exit 2, one `selftune: error:` line, nothing left in the output folder it named),
traceback (an exception escaped), accepted (exit 0 where an error was due) or other. A few cases are valid
input that was read wrongly before (palette masks listing the colours in another order, quoted numbers and
durations in a sweep file, the demo's lengths following --set max_iters, a params.json cut in half): they
must exit 0 and pass their check: right, or silently wrong when they exit 0 and fail it. Cases marked
[trainable] need the fixes listed for selftune/trainable in issue 29. A few of issue 35's cases run themselves
(`Case.runner`, in a subprocess of this tree): a real sweep stopped by Ctrl-C to its process group must exit 130
naming `selftune sweep --resume` with no best_config.yaml (named); a budgeted sweep must leave no Optuna trial WAITING
(right); a run whose checkpoint folder turns read-only (a read-only bind mount as root) must say so (named).
The injected faults (a truncated or empty checkpoint, a torn journal, a lost metrics line, a corrupt pool image, a full disk)
are tests: tests/test_reliability.py and tests/test_journal.py; `--faults` runs them and counts them too.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))

TINY = ["--set", "arch=Unet", "--set", "encoder=tu-mobilenetv3_small_050", "--set", "crop_size=32",
        "--set", "max_iters=2", "--set", "eval_every=2", "--set", "log_images=false",
        # schedules inside the 2-iteration run, so each case fails for the reason it names (issue 29)
        "--set", "warmup_iters=1", "--set", "st_start_iter=1", "--set", "st_rampup_iters=1",
        "--set", "threshold_ramp_iters=1"]
SWEEP_BASE = ("{arch: Unet, encoder: tu-mobilenetv3_small_050, crop_size: 32, max_iters: 4, eval_every: 2, "
              "warmup_iters: 1, st_start_iter: 1, st_rampup_iters: 1, threshold_ramp_iters: 1}")
HOLDERS: list[subprocess.Popen] = []  # processes holding a folder's lock for the 'second writer' cases


@dataclass
class Case:
    name: str
    argv: list[str]
    setup: Callable[[], None] | None = None
    out_stays_absent: bool | None = None  # the --out folder it names must not exist afterwards
    expect: str = "named"  # or "right": valid input that must be read right (exit 0, and `check` passes)
    check: Callable[[str], str | None] | None = None  # for "right": given stdout and stderr, a complaint or None
    names: tuple[str, ...] = ()  # for "named": words its message must hold (else it failed for another reason)
    runner: Callable[[], tuple[str, int | None, str]] | None = None  # runs the case itself (a real sweep, a signal)
    issue: int = 0  # the issue whose classes the case is of (19, 29, 35)


def cases(tmp: Path, data: Path, three: Path) -> list[Case]:
    """Issue 19's cases, then issue 29's, then issue 35's."""
    out = [Case(*c, issue=19) for c in issue19_cases(tmp, data, three)]
    for issue, more in ((29, issue29_cases(tmp, data)), (35, issue35_cases(tmp, data))):
        for case in more:
            case.issue = issue
        out += more
    for case in out:
        case.names = MUST_NAME.get(case.name, case.names)
    return out


# What an issue-29 case's one message must name: exit 2 for another reason (a resume refused for "no Ray state"
# when the data changed) is not the case handled.
MUST_NAME = {
    "data check: classes.csv with one class": ("one class",), "train: classes.csv with one class": ("one class",),
    "data check: val masks all ignore": ("(ignore)",), "train: val masks all ignore": ("(ignore)",),
    "data check: a palette colour no class has": ("palette index",), "sweep: empty sweep file": ("is empty",),
    "sweep: name 123": ("name",), "sweep: name with a space": ("name",), "sweep: max_t .inf": ("max_t",),
    "sweep: num_samples .nan": ("num_samples",), "sweep: seed 2^64": ("seed",),
    "sweep: --time-budget-s forever": ("budget",), "sweep: --resume with --data": ("--data",),
    "sweep: --restart-errored without --resume": ("--restart-errored",),
    "export: empty selftune_sweep.yaml": ("selftune_sweep.yaml",),
    "analyze: selftune_sweep.yaml not valid YAML": ("selftune_sweep.yaml",),
    "compare: selftune_sweep.yaml cut short": ("selftune_sweep.yaml",),
    "sweep --resume: selftune_sweep.yaml cut short": ("selftune_sweep.yaml",),
    "train: --out a folder another process writes": ("in use",),
    "sweep --resume: a sweep another driver runs": ("in use",), "sweep --resume: relabelled masks": ("changed",),
    "[trainable] train --resume: relabelled masks": ("changed",),
    "[trainable] train: warmup longer than the run": ("warmup_iters",),
    "[trainable] train: ST start + ramp longer than the run": ("st_",),
    "[trainable] train: rounds knob on the mean teacher": ("round_init",),
    "[trainable] train: class_weights with class_weighting none": ("class_weights",),
    "[trainable] train: batch_size 1 with BatchNorm": ("batch_size",),
    "[trainable] train: max_iters .inf": ("max_iters",), "[trainable] train: max_iters .nan": ("max_iters",),
    "[trainable] train: patience inf": ("patience",), "[trainable] train: seed 2^64": ("seed",),
    "[trainable] evaluate: --confusion names a folder": ("--confusion",),
    "train: crop_size 512 on 32 px tiles": ("crop_size 512",), "sweep: crop_size 512 on 32 px tiles": ("crop_size 512",),
    "train: scale_min and scale_max 0.001": ("scale_min",), "sweep: scale_min and scale_max 0.001": ("scale_min",),
    "sweep: control none with control_trials": ("control_trials",),
}


def issue19_cases(tmp: Path, data: Path, three: Path) -> list[tuple[str, list[str], Callable[[], None] | None, bool | None]]:
    """(name, argv, setup run first or None, True when the `--out` folder it names must stay absent)."""
    a_file = tmp / "a_file.txt"
    loop_data = tmp / "loop_data"
    bad_yaml = tmp / "bad.yaml"
    empty_state = tmp / "empty_run"
    sweeps = tmp / "sweeps"

    def make_file() -> None:
        a_file.write_text("x")

    def make_loop() -> None:
        import shutil

        shutil.copytree(data, loop_data, dirs_exist_ok=True)
        pool = loop_data / "unlabeled" / "images"
        (pool / "a.png").unlink(missing_ok=True)
        (pool / "loop_a.png").symlink_to(pool / "loop_b.png")
        (pool / "loop_b.png").symlink_to(pool / "loop_a.png")

    def make_bad_yaml() -> None:
        bad_yaml.write_text("name: x\nbase: {lr: [\n")

    def make_empty_state() -> None:
        (empty_state / "checkpoint").mkdir(parents=True, exist_ok=True)
        (empty_state / "checkpoint" / "state.pt").write_bytes(b"")

    def sweep_file(name: str, text: str) -> Callable[[], None]:
        def write() -> None:
            (tmp / name).write_text(text)
        return write

    d = str(data)
    return [
        ("train: YAML error in --set", ["train", "--data", d, "--out", str(tmp / "out1"), *TINY, "--set", "thresholds=[0.5,"],
         None, True),
        ("train: negative lr", ["train", "--data", d, "--out", str(tmp / "out2"), *TINY, "--set", "lr=-1"], None, True),
        ("train: unknown key", ["train", "--data", d, "--out", str(tmp / "out3"), *TINY, "--set", "learning_rate=1e-3"],
         None, True),
        ("train: --out is a file", ["train", "--data", d, "--out", str(a_file), *TINY], make_file, None),
        ("train: --out under /proc", ["train", "--data", d, "--out", "/proc/selftune/run", *TINY], None, None),
        ("train: data folder missing", ["train", "--data", str(tmp / "nowhere"), "--out", str(tmp / "out4"), *TINY], None, True),
        ("train: config file missing", ["train", "--config", str(tmp / "nope.yaml"), "--data", d], None, None),
        ("train: rounds 0", ["train", "--data", d, "--out", str(tmp / "out5"), *TINY, "--set", "method=rounds",
                             "--set", "rounds=0"], None, True),
        ("train: round_iters not adding up", ["train", "--data", d, "--out", str(tmp / "out6"), *TINY, "--set", "method=rounds",
                                              "--set", "round_iters=[1,5]"], None, True),
        ("train: unknown encoder", ["train", "--data", d, "--out", str(tmp / "out7"), *TINY, "--set", "encoder=resnet_bogus"],
         None, True),
        ("train: crop not a multiple of 32", ["train", "--data", d, "--out", str(tmp / "out8"), *TINY,
                                              "--set", "arch=DeepLabV3Plus", "--set", "encoder=resnet18",
                                              "--set", "crop_size=33"],
         None, True),
        ("train: 2 thresholds on 3 classes", ["train", "--data", str(three), "--out", str(tmp / "out9"), *TINY,
                                              "--set", "thresholds=[0.5,0.6]"], None, True),
        ("train: --resume an empty state.pt", ["train", "--data", d, "--out", str(empty_state), "--resume", *TINY],
         make_empty_state, None),
        ("train: divergence factor negative", ["train", "--data", d, "--out", str(tmp / "out10"), *TINY,
                                               "--set", "divergence_factor=-1"], None, True),
        ("train: s4gan lambda_fm negative", ["train", "--data", d, "--out", str(tmp / "out11"), *TINY,
                                             "--set", "method=s4gan", "--set", "lambda_fm=-0.1"], None, True),
        ("train: s4gan threshold_st above 1", ["train", "--data", d, "--out", str(tmp / "out12"), *TINY,
                                               "--set", "method=s4gan", "--set", "threshold_st=1.5"], None, True),
        ("train: s4gan discriminator warmup longer than the run", ["train", "--data", d, "--out", str(tmp / "out13"),
                                                                   *TINY, "--set", "method=s4gan",
                                                                   "--set", "d_warmup_iters=100000"], None, True),
        ("train: s4gan with a rounds knob", ["train", "--data", d, "--out", str(tmp / "out14"), *TINY,
                                             "--set", "method=s4gan", "--set", "rounds=3"], None, True),
        ("train: s4gan knob on the mean teacher", ["train", "--data", d, "--out", str(tmp / "out15"), *TINY,
                                                   "--set", "lambda_fm=0.5"], None, True),
        ("train: binary on 3 classes", ["train", "--data", str(three), "--out", str(tmp / "out16"), *TINY,
                                        "--set", "binary=true"], None, True),
        ("train: binary knob without binary", ["train", "--data", d, "--out", str(tmp / "out17"), *TINY,
                                               "--set", "pos_threshold=0.9"], None, True),
        ("train: ST weight not a number", ["train", "--data", d, "--out", str(tmp / "out18"), *TINY,
                                           "--set", "st_weight=high"], None, True),
        ("data check: symlink loop in the pool", ["data", "check", str(loop_data)], make_loop, None),
        ("data check: folder missing", ["data", "check", str(tmp / "nowhere")], None, None),
        ("sweep: unknown sweep key", ["sweep", str(tmp / "s1.yaml"), "--check"],
         sweep_file("s1.yaml", f"name: s1\ndata: {d}\nnum_sample: 3\n"), None),
        ("sweep: sweep file not YAML", ["sweep", str(bad_yaml), "--check"], make_bad_yaml, None),
        ("sweep: unknown space", ["sweep", "--data", d, "--space", "bogus", "--check", "--storage", str(sweeps)],
         None, None),
        ("sweep: shared stage with the thresholds space", ["sweep", str(tmp / "s2.yaml"), "--check"],
         sweep_file("s2.yaml", f"name: s2\ndata: {d}\nspace: thresholds\nshared_stage: {{max_iters: 10}}\n"
                    f"storage: {sweeps}\nbase: {{crop_size: 32}}\n"), None),
        ("sweep: shared stage checkpoint missing", ["sweep", str(tmp / "s3.yaml"), "--check"],
         sweep_file("s3.yaml", f"name: s3\ndata: {d}\nspace: methods\nshared_stage: {{checkpoint: {tmp}/none.pt}}\n"
                    f"storage: {sweeps}\nbase: {{crop_size: 32}}\n"), None),
        ("sweep: shared stage with both keys", ["sweep", str(tmp / "s4.yaml"), "--check"],
         sweep_file("s4.yaml", f"name: s4\ndata: {d}\nshared_stage: {{max_iters: 5, checkpoint: x}}\n"), None),
        ("sweep: num_samples 0", ["sweep", "--data", d, "--num-samples", "0", "--check"], None, None),
        ("sweep: YAML error in --set", ["sweep", "--data", d, "--set", "thresholds=[0.5,", "--check"], None, None),
        ("sweep: a test_ metric", ["sweep", "--data", d, "--set", "metric=test_miou", "--check"], None, None),
        ("sweep: nice_trials not a bool", ["sweep", str(tmp / "s5.yaml"), "--check"],
         sweep_file("s5.yaml", f"name: s5\ndata: {d}\nnice_trials: maybe\n"), None),
        ("sweep: negative GPUs per trial", ["sweep", "--data", d, "--gpus-per-trial", "-1", "--check"], None, None),
        ("sweep: resume a folder that is no sweep", ["sweep", "--resume", str(tmp)], None, None),
        ("export: no such folder", ["export", str(tmp / "nowhere")], None, None),
        ("analyze: --top-k 0", ["analyze", str(tmp), "--top-k", "0"], None, None),
        ("compare: one folder only", ["compare", str(tmp / "nowhere")], None, None),
        ("analyze: no such folder", ["analyze", str(tmp / "nowhere")], None, None),
        ("evaluate: checkpoint missing", ["evaluate", "--checkpoint", str(tmp / "none.pt"), "--data", d], None, None),
    ]


def issue29_cases(tmp: Path, data: Path) -> list[Case]:
    """Issue 29's classes: data, sweep files, half-written sweep folders, a second writer, resumed runs and sweeps
    on changed data, schedules longer than the run, knobs of another method, numbers that overflow."""
    d = str(data)
    t = tmp / "i29"
    t.mkdir(exist_ok=True)

    def copy(name: str) -> Path:
        root = t / name
        if not root.exists():
            shutil.copytree(data, root, ignore=shutil.ignore_patterns(".*"))
        return root

    def one_class() -> None:  # one class, and masks of it (0) and ignore (255) only
        import numpy as np
        from PIL import Image

        root = copy("one_class")
        (root / "classes.csv").write_text("id,name\n0,object\n")
        for mask in root.rglob("masks/*.png"):
            m = np.array(Image.open(mask))
            Image.fromarray(np.where(m == 255, 255, 0).astype(np.uint8)).save(mask)

    def all_ignore() -> None:
        import numpy as np
        from PIL import Image

        for mask in (copy("all_ignore") / "val" / "masks").glob("*.png"):
            Image.fromarray(np.full_like(np.array(Image.open(mask)), 255)).save(mask)

    def palette(perm: list[int], name: str, foreign: bool = False) -> Callable[[], None]:
        def make() -> None:  # class-id masks saved as palette PNGs: class c at palette index perm[c], which holds
            # class c's colour (with `foreign`, the last class's index holds a colour no class has)
            import numpy as np
            from PIL import Image

            from selftune.data import read_classes

            root = copy(name)
            colors = read_classes(root).colors
            assert colors is not None
            lut = np.full(256, 255, dtype=np.uint8)
            flat = [0] * 768
            for c, i in enumerate(perm):
                lut[c] = i
                flat[3 * i:3 * i + 3] = (1, 2, 3) if foreign and c == len(perm) - 1 else colors[c]
            for mask in root.rglob("masks/*.png"):
                img = Image.fromarray(lut[np.array(Image.open(mask))], "P")
                img.putpalette(flat)
                img.save(mask)
        return make

    def same_pixels_as_the_demo(out: str) -> str | None:
        from selftune.data import validate_dataset

        want = validate_dataset(data, need_unlabeled=False).pixel_counts
        got = validate_dataset(t / "palette", need_unlabeled=False).pixel_counts
        return None if got == want else f"class pixels {got}, expected {want}"

    def sweep_file(name: str, text: str) -> Callable[[], None]:
        def write() -> None:
            (t / name).write_text(text)
        return write

    def says(*words: str) -> Callable[[str], str | None]:
        return lambda out: None if all(w in out for w in words) else f"output lacks {words!r}"

    def broken_record(name: str, text: str) -> Callable[[], None]:
        def make() -> None:
            folder = _hand_sweep(t / "sweeps", name)
            (folder / "selftune_sweep.yaml").write_text(text)
        return make

    def cut_params() -> None:
        folder = _hand_sweep(t / "sweeps", "cut_params")
        trial = sorted(p for p in folder.iterdir() if p.is_dir())[0]
        (trial / "params.json").write_text('{"lr": 0.0')

    def recorded_sweep(name: str, relabel: bool = False, hold: bool = False) -> Callable[[], None]:
        def make() -> None:  # a sweep folder as a driver killed after its record leaves it; then the data changes
            import yaml

            from selftune.search.run import plan_sweep
            from selftune.search.sweepfile import SweepConfig

            root = copy(f"data_{name}")
            plan = plan_sweep(SweepConfig(name=name, data=str(root), base=yaml.safe_load(SWEEP_BASE),
                                          space="thresholds_shared", num_samples=1, control="none",
                                          storage=str(t / "sweeps")))
            folder = Path(plan.experiment_dir)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "selftune_sweep.yaml").write_text(yaml.safe_dump(plan.meta(), sort_keys=False))
            if relabel:
                _relabel(root)
            if hold:
                _hold(folder)
        return make

    def held_run() -> None:
        _hold(t / "held_run")

    def trained_then_relabelled() -> None:
        from selftune.cli import main as cli_main

        root = copy("data_run")
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            cli_main(["train", "--data", str(root), "--out", str(t / "run"), *TINY])
        _relabel(root)

    half = "selftune_version: x\nsweep: {name: s}\nbase: {method: ema_self_training}\ndata_root: /d\n"
    return [
        # --- data
        Case("data check: classes.csv with one class", ["data", "check", str(t / "one_class")], one_class),
        Case("train: classes.csv with one class", ["train", "--data", str(t / "one_class"), "--out", str(t / "o1"),
                                                    *TINY], one_class, True),
        Case("data check: val masks all ignore", ["data", "check", str(t / "all_ignore")], all_ignore),
        Case("train: val masks all ignore", ["train", "--data", str(t / "all_ignore"), "--out", str(t / "o2"), *TINY],
             all_ignore, True),
        Case("data check: palette masks, colours in another order",
             ["data", "check", str(t / "palette"), "--no-unlabeled"], palette([3, 0, 6, 1, 5, 2, 4], "palette"),
             expect="right", check=same_pixels_as_the_demo),
        Case("data check: a palette colour no class has", ["data", "check", str(t / "palette_bad"), "--no-unlabeled"],
             palette(list(range(7)), "palette_bad", foreign=True)),
        # --- the sweep file's own keys
        Case("sweep: empty sweep file", ["sweep", str(t / "empty.yaml"), "--check"], sweep_file("empty.yaml", "")),
        Case("sweep: name 123", ["sweep", str(t / "n.yaml"), "--check"], sweep_file("n.yaml", f"data: {d}\nname: 123\n")),
        Case("sweep: name with a space", ["sweep", "--data", d, "--name", "my sweep", "--check"]),
        Case("sweep: max_t .inf", ["sweep", str(t / "inf.yaml"), "--check"],
             sweep_file("inf.yaml", f"data: {d}\nmax_t: .inf\n")),
        Case("sweep: num_samples .nan", ["sweep", str(t / "nan.yaml"), "--check"],
             sweep_file("nan.yaml", f"data: {d}\nnum_samples: .nan\n")),
        Case("sweep: seed 2^64", ["sweep", "--data", d, "--seed", str(2**64), "--check"]),
        Case("sweep: --time-budget-s forever", ["sweep", "--data", d, "--time-budget-s", "forever", "--check"]),
        Case("sweep: num_samples '3' and time_budget_s 10m",
             ["sweep", str(t / "typed.yaml"), "--check"],
             sweep_file("typed.yaml", f"data: {d}\nnum_samples: '3'\ntime_budget_s: 10m\nstorage: {t / 'sweeps'}\n"
                        f"base: {SWEEP_BASE}\n"), expect="right", check=says("is valid")),
        Case("sweep: --demo --set max_iters=20 scales the shared stage",
             ["sweep", "--demo", "--data", d, "--set", "max_iters=20", "--set", "crop_size=32", "--check", "--storage",
              str(t / "sweeps")],
             expect="right", check=says("max_t 20", "shared stage 10 iterations")),
        Case("sweep: --resume with --data", ["sweep", "--resume", str(t / "sweeps" / "flags"), "--data", d],
             recorded_sweep("flags")),
        Case("sweep: --restart-errored without --resume", ["sweep", "--data", d, "--restart-errored", "--check"]),
        # --- half-written sweep folders
        Case("export: empty selftune_sweep.yaml", ["export", str(t / "sweeps" / "empty")], broken_record("empty", "")),
        Case("analyze: selftune_sweep.yaml not valid YAML", ["analyze", str(t / "sweeps" / "invalid"), "--out",
                                                              str(t / "a")], broken_record("invalid", "sweep: {name: [\n")),
        Case("compare: selftune_sweep.yaml cut short", ["compare", str(t / "sweeps" / "cut"), str(t / "sweeps" / "cut"),
                                                         "--out", str(t / "c")], broken_record("cut", half)),
        Case("sweep --resume: selftune_sweep.yaml cut short", ["sweep", "--resume", str(t / "sweeps" / "cut2")],
             broken_record("cut2", half)),
        Case("export: a params.json cut in half", ["export", str(t / "sweeps" / "cut_params")], cut_params,
             expect="right", check=says("exported")),
        # --- a second writer; data that changed under a resume
        Case("train: --out a folder another process writes", ["train", "--data", d, "--out", str(t / "held_run"), *TINY],
             held_run),
        Case("sweep --resume: a sweep another driver runs", ["sweep", "--resume", str(t / "sweeps" / "held")],
             recorded_sweep("held", hold=True)),
        Case("sweep --resume: relabelled masks", ["sweep", "--resume", str(t / "sweeps" / "relabelled")],
             recorded_sweep("relabelled", relabel=True)),
        Case("[trainable] train --resume: relabelled masks",
             ["train", "--data", str(t / "data_run"), "--out", str(t / "run"), "--resume", *TINY],
             trained_then_relabelled),
        # --- schedules longer than the run, knobs of another method, numbers (selftune/trainable: the lead's list)
        Case("[trainable] train: warmup longer than the run", ["train", "--data", d, "--out", str(t / "o3"), *TINY,
                                                                "--set", "warmup_iters=100"], None, True),
        Case("[trainable] train: ST start + ramp longer than the run",
             ["train", "--data", d, "--out", str(t / "o4"), *TINY, "--set", "st_start_iter=1",
              "--set", "st_rampup_iters=50"], None, True),
        Case("[trainable] sweep: base max_iters 300, default warmup 1500",
             ["sweep", str(t / "warm.yaml"), "--check"],
             sweep_file("warm.yaml", f"data: {d}\nstorage: {t / 'sweeps'}\nbase: {{max_iters: 300, crop_size: 32}}\n"),
             expect="right", check=says("warmup_iters", "is valid")),  # defaults scaled, with a warning naming each
        Case("[trainable] train: rounds knob on the mean teacher", ["train", "--data", d, "--out", str(t / "o5"), *TINY,
                                                                     "--set", "round_init=fresh"], None, True),
        Case("[trainable] train: class_weights with class_weighting none",
             ["train", "--data", d, "--out", str(t / "o6"), *TINY, "--set", "class_weighting=none",
              "--set", "class_weights=[1,1,1,1,1,1,1]"], None, True),
        Case("[trainable] train: batch_size 1 with BatchNorm", ["train", "--data", d, "--out", str(t / "o7"), *TINY,
                                                                 "--set", "batch_size=1"], None, True),
        Case("[trainable] train: max_iters .inf", ["train", "--data", d, "--out", str(t / "o8"), *TINY,
                                                    "--set", "max_iters=.inf"], None, True),
        Case("[trainable] train: max_iters .nan", ["train", "--data", d, "--out", str(t / "o9"), *TINY,
                                                    "--set", "max_iters=.nan"], None, True),
        Case("[trainable] train: patience inf", ["train", "--data", d, "--out", str(t / "o10"), *TINY,
                                                  "--set", "patience=inf"], None, True),
        Case("[trainable] train: seed 2^64", ["train", "--data", d, "--out", str(t / "o11"), *TINY,
                                               "--set", f"seed={2**64}"], None, True),
        Case("[trainable] evaluate: --confusion names a folder",
             ["evaluate", "--checkpoint", str(t / "run" / "best_model_ema.pt"), "--data", str(t / "data_run"),
              "--confusion", str(t)]),
    ]


def issue35_cases(tmp: Path, data: Path) -> list[Case]:
    """Issue 35's classes: Ctrl-C on a running sweep; a sweep folder copied elsewhere; damaged or missing records
    (verdict.json deleted or of the wrong types, a trial's garbage result.json); enqueued trials left WAITING; inputs
    that waste the run (a crop no image fills, a rescale near 0, a checkpoint folder turned read-only mid-run, a class
    absent from val or test, control: none with control_trials); warnings as Python prints them."""
    import yaml

    d = str(data)
    t = tmp / "i35"
    t.mkdir(exist_ok=True)
    sweeps = t / "sweeps"
    tiny_base = yaml.safe_load(SWEEP_BASE)

    def says(*words: str, absent: tuple[str, ...] = ()) -> Callable[[str], str | None]:
        def check(out: str) -> str | None:
            lacks = [w for w in words if w not in out]
            has = [w for w in absent if w in out]
            return (f"output lacks {lacks!r}" if lacks else "") + (f" output holds {has!r}" if has else "") or None
        return check

    def hand_sweep(name: str, control: str = "tuned") -> Path:
        folder = _hand_sweep(sweeps, name)
        meta = yaml.safe_load((folder / "selftune_sweep.yaml").read_text())
        meta["sweep"]["control"] = control
        (folder / "selftune_sweep.yaml").write_text(yaml.safe_dump(meta))
        return folder

    verdict = {"format": 2, "outcome": "helps", "split": "test", "headline": "VERDICT: HELPS +3.00 [+1.00, +5.00]",
               "lines": ["VERDICT: HELPS +3.00 [+1.00, +5.00]"], "flags": [], "difference": {"mean": 0.03},
               "arms": {"self_training": {}, "supervised": {}}, "runs": [], "per_class": {}}

    def verdict_deleted() -> None:
        folder = hand_sweep("no_verdict")
        (folder / "best_config.yaml").write_text(yaml.safe_dump({"provenance": {"verdict": {
            "headline": verdict["headline"]}}, "config": {}}))

    def verdict_wrong_types() -> None:
        folder = hand_sweep("bad_verdict")
        (folder / "verdict.json").write_text(json.dumps({**verdict, "arms": [1, 2]}))

    def garbage_result() -> None:
        folder = hand_sweep("garbage_result", control="none")
        (sorted(p for p in folder.iterdir() if p.is_dir())[0] / "result.json").write_text("garbage\n")

    def copied_sweep() -> None:  # a sweep with a shared stage, as its driver records it, copied; the original deleted
        from selftune.search.run import plan_sweep
        from selftune.search.sweepfile import SweepConfig

        base = {**tiny_base, "max_iters": 12, "st_start_iter": 0}  # the methods space's rounds: 6-iteration rounds
        plan = plan_sweep(SweepConfig(name="moved", data=d, base=base, space="methods", control="none",
                                      shared_stage={"max_iters": 4}, storage=str(sweeps)))
        folder = Path(plan.experiment_dir)
        (folder / "shared_stage").mkdir(parents=True, exist_ok=True)
        (folder / "shared_stage" / "best_model_ema.pt").write_bytes(b"the stage's model")
        (folder / "selftune_sweep.yaml").write_text(yaml.safe_dump(plan.meta(), sort_keys=False))
        trial = folder / "trial_001_t1_method=rounds"
        trial.mkdir(exist_ok=True)
        (trial / "params.json").write_text(json.dumps({"method": "rounds", "lr": 1e-3}))
        (trial / "result.json").write_text(json.dumps({"trial_id": "t1", "iteration": 4, "val_miou": 0.3,
                                                       "status": "completed"}) + "\n")
        shutil.rmtree(t / "elsewhere", ignore_errors=True)
        shutil.copytree(folder, t / "elsewhere" / "moved")
        shutil.rmtree(folder)

    def in_the_copy(out: str) -> str | None:
        stage = str(t / "elsewhere" / "moved" / "shared_stage" / "best_model_ema.pt")
        doc = yaml.safe_load(out.split("\nselftune: ")[0])  # the YAML on stdout, then stderr's lines
        got = (doc or {}).get("config", {}).get("teacher_checkpoint")
        return None if got == stage else f"teacher_checkpoint {got}, expected {stage} (in the copy)"

    def relabel(split: str, name: str) -> Callable[[], None]:
        def make() -> None:  # class 1 relabelled as 0 in `split`: that split lacks it
            import numpy as np
            from PIL import Image

            root = t / name
            if not root.exists():
                shutil.copytree(data, root, ignore=shutil.ignore_patterns(".*"))
            for mask in (root / split / "masks").glob("*.png"):
                m = np.array(Image.open(mask))
                Image.fromarray(np.where(m == 1, 0, m).astype(np.uint8)).save(mask)
        return make

    def warm_yaml() -> None:
        (t / "warm.yaml").write_text(f"data: {d}\nstorage: {sweeps}\nbase: {{max_iters: 300, crop_size: 32}}\n")

    def readable_warnings(out: str) -> str | None:
        lines = [line for line in out.splitlines() if "warmup_iters" in line and "scaled" in line]
        if len(lines) != 1 or not lines[0].startswith("selftune: warning: "):
            return f"the warmup warning is not one `selftune: warning:` line: {lines!r}"
        if any(".py:" in line or line.startswith("  ") for line in out.splitlines()):
            return "a source line or a file:line location was printed"
        return None

    return [
        # --- interrupting and moving sweeps
        Case("sweep: Ctrl-C while its trials run", ["sweep", "SWEEP.yaml", "(then SIGINT)"], runner=lambda: _ctrl_c_sweep(t, d)),
        Case("export: a copied sweep folder, the original deleted", ["export", str(t / "elsewhere" / "moved")],
             copied_sweep, expect="right", check=in_the_copy),
        # --- damaged or missing records
        Case("analyze: verdict.json deleted, best_config.yaml carries it",
             ["analyze", str(sweeps / "no_verdict"), "--out", str(t / "a1")], verdict_deleted, expect="right",
             check=says("verdict.json is missing")),
        Case("analyze: verdict.json with arms a list", ["analyze", str(sweeps / "bad_verdict"), "--out", str(t / "a2")],
             verdict_wrong_types, expect="right", check=says("verdict.json is damaged", "`arms`")),
        Case("analyze: a trial's result.json is garbage",
             ["analyze", str(sweeps / "garbage_result"), "--out", str(t / "a3")], garbage_result, expect="right",
             check=says("result.json is damaged", absent=("stopped by the sweep budget", "cut by the sweep's budget"))),
        Case("sweep: enqueued trials left WAITING when the budget ends it", ["sweep", "--demo", "--budget-iters", "40"],
             runner=lambda: _waiting_sweep(t, d)),
        # --- inputs that waste the run
        Case("train: crop_size 512 on 32 px tiles", ["train", "--data", d, "--out", str(t / "o1"), *TINY,
                                                    "--set", "crop_size=512"], None, True),
        Case("sweep: crop_size 512 on 32 px tiles", ["sweep", "--data", d, "--storage", str(sweeps), "--set",
                                                    "crop_size=512", "--check"]),
        Case("train: scale_min and scale_max 0.001", ["train", "--data", d, "--out", str(t / "o2"), *TINY,
                                                     "--set", "scale_min=0.001", "--set", "scale_max=0.001"], None, True),
        Case("sweep: scale_min and scale_max 0.001", ["sweep", "--data", d, "--storage", str(sweeps), "--set",
                                                     "crop_size=32", "--set", "scale_min=0.001", "--set",
                                                     "scale_max=0.001", "--check"]),
        Case("train: checkpoint folder turns read-only mid-run", ["train", "(checkpoint/ then read-only)"],
             runner=lambda: _read_only_mid_run(t, d)),
        Case("data check: a class absent from test", ["data", "check", str(t / "no_test_1"), "--no-unlabeled"],
             relabel("test", "no_test_1"), expect="right", check=says("does not occur in test")),
        Case("data check: a class absent from val", ["data", "check", str(t / "no_val_1"), "--no-unlabeled"],
             relabel("val", "no_val_1"), expect="right", check=says("does not occur in val")),
        Case("sweep: control none with control_trials", ["sweep", "--data", d, "--storage", str(sweeps), "--set",
                                                        "crop_size=32", "--control", "none", "--check",
                                                        str(t / "ct.yaml")],
             lambda: (t / "ct.yaml").write_text(f"data: {d}\ncontrol_trials: 3\nspace: methods\n")),
        # --- warnings a user can read
        Case("sweep: warnings print as one line each", ["sweep", str(t / "warm.yaml"), "--check"], warm_yaml,
             expect="right", check=readable_warnings),
    ]


def _subprocess_env() -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONPATH": str(ROOT)}  # this tree's selftune, whatever the venv installed


def _ctrl_c_sweep(t: Path, d: str) -> tuple[str, int | None, str]:
    """A real sweep of tiny trials; SIGINT to its process group (as a terminal's Ctrl-C) once a trial has reported.
    Named: exit 130, one message naming `selftune sweep --resume FOLDER`, no best_config.yaml."""
    import os
    import signal
    import time

    import yaml

    storage, name = t / "sweeps", "ctrl_c"
    folder = storage / name
    (t / "ctrl_c.yaml").write_text(yaml.safe_dump({
        "name": name, "data": d, "storage": str(storage), "space": "thresholds_shared", "searcher": "random",
        "scheduler": "fifo", "num_samples": 3, "max_concurrent": 1, "control": "none", "num_cpus": 2,
        "base": {**yaml.safe_load(SWEEP_BASE), "max_iters": 60}}))
    p = subprocess.Popen([sys.executable, "-m", "selftune", "sweep", str(t / "ctrl_c.yaml")], cwd=ROOT,
                         env=_subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    deadline = time.monotonic() + 300
    while p.poll() is None and time.monotonic() < deadline and \
            not any(f.stat().st_size for f in folder.glob("trial_*/result.json")):
        time.sleep(0.1)
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGINT)
    out, err = p.communicate(timeout=300)
    text = out + err
    if "Traceback" in text:
        return "traceback", p.returncode, text
    if p.returncode == 0:
        return "accepted", 0, text + f"\nbest_config.yaml written: {(folder / 'best_config.yaml').exists()}"
    named = (p.returncode == 130 and f"selftune sweep --resume {folder}" in err
             and not (folder / "best_config.yaml").exists())
    return ("named" if named else "other"), p.returncode, text


def _waiting_sweep(t: Path, d: str) -> tuple[str, int | None, str]:
    """Issue 35's command on the small data: a budgeted methods sweep that ends before its fair-share cycle. Right:
    exit 0 and no Optuna trial of it WAITING (or RUNNING) afterwards."""
    import optuna

    storage, name = t / "sweeps", "waiting"
    p = subprocess.run([sys.executable, "-m", "selftune", "sweep", "--demo", "--data", d, "--no-control",
                        "--num-samples", "-1", "--budget-iters", "40", "--set", "max_iters=20", "--set", "crop_size=32",
                        "--storage", str(storage), "--name", name, "--num-cpus", "2"], cwd=ROOT, env=_subprocess_env(),
                       capture_output=True, text=True, timeout=900)
    text = p.stdout + p.stderr
    if "Traceback" in text:
        return "traceback", p.returncode, text
    if p.returncode != 0:
        return "other", p.returncode, text
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=name, storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(storage / name / "optuna_journal.log"))))
    pending = [t_.number for t_ in study.trials if t_.state.name in ("WAITING", "RUNNING")]
    if pending:
        return "wrong", 0, text + f"\nWRONG: trials {pending} of {len(study.trials)} left WAITING or RUNNING"
    return "right", 0, text


def _read_only_mid_run(t: Path, d: str) -> tuple[str, int | None, str]:
    """`selftune train` whose checkpoint/ turns read-only after its first checkpoint (a read-only bind mount as root,
    else its permissions). Named: exit 2, one message saying the folder is not writable any more."""
    import os
    import time

    out = t / "ro_run"
    ck = out / "checkpoint"
    shutil.rmtree(out, ignore_errors=True)
    p = subprocess.Popen([sys.executable, "-m", "selftune", "train", "--data", d, "--out", str(out), "--no-progress",
                          *TINY, "--set", "max_iters=400"], cwd=ROOT, env=_subprocess_env(), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    while p.poll() is None and not (ck / "state.pt").exists():
        time.sleep(0.05)
    mounted = False
    if os.geteuid() == 0:
        mounted = subprocess.run(["mount", "--bind", str(ck), str(ck)], capture_output=True).returncode == 0 and \
            subprocess.run(["mount", "-o", "remount,bind,ro", str(ck)], capture_output=True).returncode == 0
    else:
        ck.chmod(0o555)
    try:
        stdout, err = p.communicate(timeout=600)
    finally:
        if mounted:
            subprocess.run(["umount", str(ck)], capture_output=True)
        elif os.geteuid() != 0:
            ck.chmod(0o755)
    text = stdout + err
    if os.geteuid() == 0 and not mounted:
        return "other", p.returncode, text + "\n(could not make the folder read-only here)"
    if "Traceback" in text:
        return "traceback", p.returncode, text
    errors = [line for line in err.splitlines() if line.startswith("selftune: error:")]
    named = p.returncode == 2 and len(errors) == 1 and f"{ck} is not writable any more" in errors[0]
    return ("named" if named else "accepted" if p.returncode == 0 else "other"), p.returncode, text


def _hand_sweep(root: Path, name: str) -> Path:
    """A small sweep folder as a driver leaves it (no Ray): its record, Ray's state, three trials."""
    import yaml

    path = root / name
    path.mkdir(parents=True, exist_ok=True)
    (path / "selftune_sweep.yaml").write_text(yaml.safe_dump({
        "sweep": {"name": name, "space": "hand"}, "base": {"method": "ema_self_training"}, "data_root": "/d",
        "class_names": ["background", "road"], "max_t": 4, "grace_period": 2}))
    for n in range(3):
        trial = path / f"trial_{n:03d}_t{n}"
        trial.mkdir(exist_ok=True)
        (trial / "params.json").write_text(json.dumps({"lr": 1e-3 * (n + 1)}))
        (trial / "result.json").write_text(json.dumps({"trial_id": f"t{n}", "iteration": 2, "val_miou": 0.1 * n,
                                                       "status": "completed"}) + "\n")
    return path


def _relabel(root: Path) -> None:
    """Change one pixel's class in the first val mask: the file names and usually the sizes stay."""
    import numpy as np
    from PIL import Image

    mask = sorted((root / "val" / "masks").glob("*.png"))[0]
    m = np.array(Image.open(mask))
    m[0, 0] = (int(m[0, 0]) + 1) % 7
    Image.fromarray(m).save(mask)


def _hold(folder: Path) -> None:
    """Another process holding `folder`'s lock until this script ends."""
    script = ("import contextlib, sys\ntry:\n    from selftune.fileio import folder_lock\n"
              "except ImportError:  # a tree from before the lock: nothing to hold\n"
              "    folder_lock = lambda path: contextlib.nullcontext()\n"
              f"with folder_lock({str(folder)!r}):\n    print('held', flush=True)\n    sys.stdin.read()\n")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    HOLDERS.append(proc)


def run_case(case: Case) -> tuple[str, int | None, str]:
    """(kind, exit code, what it said): kind is named, right, traceback, accepted, wrong or other."""
    from selftune.cli import main

    if case.runner is not None:
        return case.runner()
    err, out = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out), warnings.catch_warnings():
            warnings.simplefilter("always")
            code = main(case.argv)
    except SystemExit as exc:  # argparse
        named = exc.code == 2 and case.expect == "named" and all(w in err.getvalue() for w in case.names)
        return ("named" if named else "other"), int(exc.code or 0), err.getvalue()
    except BaseException as exc:
        return "traceback", None, f"{type(exc).__name__}: {exc}"
    text = err.getvalue()
    if case.expect == "right":
        if code != 0:
            return "other", code, text
        complaint = case.check(out.getvalue() + text) if case.check else None
        return ("wrong", code, text + f"\nWRONG: {complaint}") if complaint else ("right", code, text)
    errors = [line for line in text.splitlines() if line.startswith("selftune: error:")]
    if code == 0:
        return "accepted", code, text
    if code == 2 and len(errors) == 1 and not all(w in text for w in case.names):
        return "other", code, text + f"\nNAMES ANOTHER CULPRIT: expected {case.names!r}"
    return ("named" if code == 2 and len(errors) == 1 else "other"), code, text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--faults", action="store_true", help="also run the injected-fault tests and count them")
    p.add_argument("--quick", action="store_true", help="one case per command (train, data, sweep, ...): seconds")
    p.add_argument("--only", action="append", metavar="TEXT", help="only the cases whose name holds TEXT (repeatable)")
    p.add_argument("--issue", type=int, action="append", choices=(19, 29, 35),
                   help="only the cases of this issue's classes (repeatable): 19, 29 or 35")
    args = p.parse_args(argv)
    from selftune.data.demo import DemoSpec, generate_demo

    with tempfile.TemporaryDirectory(prefix="selftune-bad-inputs-") as tmp_s:
        tmp = Path(tmp_s)
        data = generate_demo(tmp / "data", DemoSpec(size=32, n_train=4, n_val=2, n_test=2, n_unlabeled=12, seed=0))
        three = _three_classes(data, tmp / "three")
        counts: dict[str, int] = {}
        chosen, seen = [], set()
        for case in cases(tmp, data, three):
            if (args.only and not any(text in case.name for text in args.only)) or \
                    (args.issue and case.issue not in args.issue):
                continue
            if not args.quick or case.argv[0] not in seen:
                chosen.append(case)
                seen.add(case.argv[0])
        lost = 0
        try:
            for case in chosen:
                if case.setup is not None:
                    case.setup()
                before = _snapshot(tmp)
                started = time.monotonic()
                kind, code, text = run_case(case)
                seconds = time.monotonic() - started
                after = _snapshot(tmp)  # once: hashing every file again for each file made a case take minutes
                changed = [f for f, digest in before.items() if after.get(f) != digest]
                if changed:  # a file that was there before the bad input was changed or removed by it
                    lost += 1
                    text += f"\nDATA LOST: {', '.join(changed[:3])}"
                if kind == "named" and case.out_stays_absent and Path(case.argv[case.argv.index("--out") + 1]).exists():
                    kind = "other"  # named, but it wrote the output folder first
                counts[kind] = counts.get(kind, 0) + 1
                first = (text.strip().splitlines() or [""])[-1][:150]
                print(f"{kind:9} exit {code!s:4} {seconds:5.0f}s {case.name}: {first}", flush=True)
        finally:
            for proc in HOLDERS:
                proc.communicate("")
    total = sum(counts.values())
    print(f"\n{total} cases: {counts.get('named', 0)} bad inputs named before any work (exit 2, one message), "
          f"{counts.get('right', 0)} valid inputs read right, {counts.get('traceback', 0)} tracebacks, "
          f"{counts.get('accepted', 0)} accepted, {counts.get('wrong', 0)} silently wrong, {counts.get('other', 0)} "
          f"other, {lost} with data lost (a file there before the case changed or removed)")
    if args.faults:
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_reliability.py",
                            "tests/test_journal.py"], cwd=ROOT, capture_output=True, text=True)
        print("injected faults:", r.stdout.strip().splitlines()[-1])
    return 0 if counts.get("named", 0) + counts.get("right", 0) == total and not lost else 1


def _snapshot(root: Path) -> dict[str, str]:
    """Every file under root and a digest of its bytes."""
    lock_file = ".selftune.lock"  # fileio.LOCK_FILE: who holds a folder, not data

    return {str(f.relative_to(root)): hashlib.sha1(f.read_bytes()).hexdigest()
            for f in root.rglob("*") if f.is_file() and not f.is_symlink() and f.name != lock_file}


def _three_classes(data: Path, out: Path) -> Path:
    """The demo set relabelled to 3 classes (background, trees, the rest): a dataset that is not the demo's 7."""
    import shutil

    import numpy as np
    from PIL import Image

    shutil.copytree(data, out)
    (out / "classes.csv").write_text("id,name\n0,background\n1,trees\n2,other\n")
    for mask in out.rglob("masks/*.png"):
        m = np.array(Image.open(mask))
        new = np.where(m == 255, 255, np.where(m == 0, 0, np.where(np.isin(m, (4, 5)), 1, 2))).astype(np.uint8)
        Image.fromarray(new).save(mask)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
