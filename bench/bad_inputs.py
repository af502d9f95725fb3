"""Bad input, tried as a new user would (issue 19): every case must be one message naming the culprit, exit 2.

    python bench/bad_inputs.py            # about a minute on 2 CPUs; prints one line per case and the counts
    python bench/bad_inputs.py --quick    # one case per command

Each case runs `selftune.cli.main(argv)` in this process on a small demo dataset made here, and is
sorted into: named (exit 2, one `selftune: error:` line, nothing left in the output folder it named),
traceback (an exception escaped), accepted (exit 0 where an error was due) or other. The injected faults
(a truncated or empty checkpoint, a torn journal, a lost metrics line, a corrupt pool image, a full disk)
are tests: tests/test_reliability.py and tests/test_journal.py; `--faults` runs them and counts them too.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))

TINY = ["--set", "arch=Unet", "--set", "encoder=tu-mobilenetv3_small_050", "--set", "crop_size=32",
        "--set", "max_iters=2", "--set", "eval_every=2", "--set", "log_images=false"]


def cases(tmp: Path, data: Path, three: Path) -> list[tuple[str, list[str], Callable[[], None] | None, bool | None]]:
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
                    f"storage: {sweeps}\n"), None),
        ("sweep: shared stage checkpoint missing", ["sweep", str(tmp / "s3.yaml"), "--check"],
         sweep_file("s3.yaml", f"name: s3\ndata: {d}\nspace: methods\nshared_stage: {{checkpoint: {tmp}/none.pt}}\n"
                    f"storage: {sweeps}\n"), None),
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


def run_case(argv: list[str]) -> tuple[str, int | None, str]:
    from selftune.cli import main

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(argv)
    except SystemExit as exc:  # argparse
        return ("named" if exc.code == 2 else "other"), int(exc.code or 0), err.getvalue()
    except BaseException as exc:
        return "traceback", None, f"{type(exc).__name__}: {exc}"
    text = err.getvalue()
    errors = [line for line in text.splitlines() if line.startswith("selftune: error:")]
    if code == 0:
        return "accepted", code, text
    return ("named" if code == 2 and len(errors) == 1 else "other"), code, text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--faults", action="store_true", help="also run the injected-fault tests and count them")
    p.add_argument("--quick", action="store_true", help="one case per command (train, data, sweep, ...): seconds")
    args = p.parse_args(argv)
    from selftune.data.demo import DemoSpec, generate_demo

    with tempfile.TemporaryDirectory(prefix="selftune-bad-inputs-") as tmp_s:
        tmp = Path(tmp_s)
        data = generate_demo(tmp / "data", DemoSpec(size=32, n_train=4, n_val=2, n_test=2, n_unlabeled=12, seed=0))
        three = _three_classes(data, tmp / "three")
        counts: dict[str, int] = {}
        chosen, seen = [], set()
        for case in cases(tmp, data, three):
            if not args.quick or case[1][0] not in seen:
                chosen.append(case)
                seen.add(case[1][0])
        lost = 0
        for name, argv_, setup, must_stay_empty in chosen:
            if setup is not None:
                setup()
            before = _snapshot(tmp)
            kind, code, text = run_case(argv_)
            changed = [f for f, digest in before.items() if _snapshot(tmp).get(f) != digest]
            if changed:  # a file that was there before the bad input was changed or removed by it
                lost += 1
                text += f"\nDATA LOST: {', '.join(changed[:3])}"
            if kind == "named" and must_stay_empty and Path(argv_[argv_.index("--out") + 1]).exists():
                kind = "other"  # named, but it wrote the output folder first
            counts[kind] = counts.get(kind, 0) + 1
            first = (text.strip().splitlines() or [""])[-1][:150]
            print(f"{kind:9} exit {code!s:4} {name}: {first}")
    total = sum(counts.values())
    print(f"\n{total} bad inputs: {counts.get('named', 0)} named before any work (exit 2, one message), "
          f"{counts.get('traceback', 0)} tracebacks, {counts.get('accepted', 0)} accepted, {counts.get('other', 0)} other, "
          f"{lost} with data lost (a file there before the case changed or removed)")
    if args.faults:
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_reliability.py",
                            "tests/test_journal.py"], cwd=ROOT, capture_output=True, text=True)
        print("injected faults:", r.stdout.strip().splitlines()[-1])
    return 0 if counts.get("named", 0) == total and not lost else 1


def _snapshot(root: Path) -> dict[str, str]:
    """Every file under root and a digest of its bytes."""
    return {str(f.relative_to(root)): hashlib.sha1(f.read_bytes()).hexdigest()
            for f in root.rglob("*") if f.is_file() and not f.is_symlink()}


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
