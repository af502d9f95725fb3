"""Issue 35, inputs that waste a run: a crop no labelled image can fill and a rescale near 0 are refused by name
before anything is written, by `selftune train` and by the sweep's planner alike; a checkpoint folder that turns
read-only while a run runs is named as such (it read 'Invalid cross-device link'), and the run resumes once it is
writable again; a class absent from val or test gets a line from `selftune data check`."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from selftune.cli import main
from selftune.data import check_crop
from selftune.errors import ConfigError, StorageError
from selftune.search.run import plan_sweep
from selftune.search.sweepfile import SweepConfig
from selftune.trainable.config import TrainConfig
from selftune.trainable.loop import train
from tests.helpers import tiny, tiny_config

SPACES = '''
def smaller_rescale(trial, ctx):
    trial.suggest_float("scale_max", 1.0, 1.5)
'''


# ---------------------------------------------------------------------- the crop and the rescale


def test_a_crop_no_image_can_fill_is_refused_naming_crop_size_before_any_file(tiny_data: Path, tmp_path: Path,
                                                                              capsys) -> None:
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"crop_size 512 is larger than any labelled image can fill: the largest "
                                          r"is 32x32 px, 40 px on its shorter side at scale_max 1.25.*set crop_size "
                                          r"to 32 or less"):
        train(tiny(crop_size=512), tiny_data, out, progress=False)
    assert not out.exists()
    assert main(["train", "--data", str(tiny_data), "--out", str(out), "--set", "crop_size=512"]) == 2
    err = capsys.readouterr().err
    assert err.count("selftune: error:") == 1 and "crop_size 512" in err and not out.exists()


def test_the_sweep_refuses_the_crop_its_trials_would_before_any_trial(tiny_data: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    sweep = SweepConfig(name="s", data=str(tiny_data), base=tiny_config(crop_size=512), space="thresholds_shared",
                        storage=str(tmp_path / "r"), control="none")
    with pytest.raises(ConfigError, match="crop_size 512 is larger than any labelled image can fill"):
        plan_sweep(sweep)
    # 36 px fits the base's rescale (32 x 1.25 = 40) but not a trial's scale_max of 1.0, which the space can draw
    (tmp_path / "crop_spaces.py").write_text(SPACES)
    monkeypatch.syspath_prepend(str(tmp_path))
    fits = sweep.replace(base=tiny_config(crop_size=36), space="crop_spaces:smaller_rescale")
    with pytest.raises(ConfigError, match=r"crop_size 36 .* 32 px on its shorter side at scale_max 1;"):
        plan_sweep(fits)
    plan_sweep(fits.replace(base=tiny_config(crop_size=32)))  # every image fills a 32 px crop
    assert not (tmp_path / "r" / "s").exists()


def test_a_crop_the_largest_rescale_fills_is_kept() -> None:
    check_crop(128, 1.0, 2.0, [(64, 64), (48, 80)])  # 64 px x 2: every crop filled by an upscaled image
    check_crop(64, 0.5, 1.0, [(64, 256)])  # the shorter side counts
    with pytest.raises(ConfigError, match=r"crop_size 65 .* the largest is 256x64 px, 64 px"):
        check_crop(65, 0.5, 1.0, [(64, 256)])


@pytest.mark.parametrize(("scale", "says"), [
    ({"scale_min": 0.001, "scale_max": 0.001}, "got scale_min=0.001"),
    ({"scale_min": 1e-9, "scale_max": 1.0}, "got scale_min=1e-09"),
    ({"scale_min": 1.0, "scale_max": 1e6}, "scale_max=1000000.0"),
])
def test_a_rescale_near_zero_is_refused_by_name_with_its_minimum(tiny_data: Path, tmp_path: Path, scale: dict,
                                                                 says: str) -> None:
    with pytest.raises(ConfigError, match=rf"0.1 <= scale_min <= scale_max <= 10 .*{says}"):
        TrainConfig.from_dict(tiny_config(**scale))
    out = tmp_path / "run"
    code = main(["train", "--data", str(tiny_data), "--out", str(out),
                 *[a for k, v in scale.items() for a in ("--set", f"{k}={v}")]])
    assert code == 2 and not out.exists()  # the PyTorch internal assert came after the run's files were written
    code = main(["sweep", "--data", str(tiny_data), "--storage", str(tmp_path / "r"), "--check",
                 *[a for k, v in scale.items() for a in ("--set", f"{k}={v}")]])
    assert code == 2


def test_a_rescale_that_makes_a_small_image_one_pixel_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match=r"scale_min 0.1 shrinks the smallest labelled image \(16x12 px\) to under "
                                          r"2 px.*at least 0.17"):
        check_crop(12, 0.1, 1.25, [(12, 16), (64, 64)])
    check_crop(12, 0.17, 1.25, [(12, 16)])


# ---------------------------------------------------------------------- a checkpoint folder that turns read-only


@contextlib.contextmanager
def _read_only(folder: Path) -> Iterator[None]:
    """`folder` read-only while the block runs: a read-only bind mount as root (chmod does not stop root), else
    its permissions."""
    if os.geteuid() != 0:
        mode = folder.stat().st_mode
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(mode)
        return
    subprocess.run(["mount", "--bind", str(folder), str(folder)], check=True, capture_output=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True, capture_output=True)
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True, capture_output=True)


def _can_make_read_only(tmp_path: Path) -> bool:
    probe = tmp_path / "probe"
    probe.mkdir()
    try:
        with _read_only(probe):
            try:
                (probe / "x").write_text("x")
            except OSError:
                return True
    except (OSError, subprocess.CalledProcessError):
        return False
    return False


def test_a_checkpoint_folder_that_turns_read_only_mid_run_is_named(tiny_data: Path, tmp_path: Path) -> None:
    if not _can_make_read_only(tmp_path):
        pytest.skip("cannot make a folder read-only here (root without mount permission)")
    cfg = tiny(max_iters=8, eval_every=2)
    run = tmp_path / "run"
    ck = run / "checkpoint"
    with contextlib.ExitStack() as stack:
        def reporter(metrics: dict, checkpoint_dir: Path | None) -> None:
            if metrics["iteration"] == 2:  # its first checkpoint is written: now the folder turns read-only
                stack.enter_context(_read_only(ck))

        with pytest.raises(StorageError) as caught:
            train(cfg, tiny_data, run, reporter=reporter, progress=False)
        before = (ck / "state.pt").read_bytes()
    message = str(caught.value)
    assert f"cannot save the checkpoint of iteration 4: {ck} is not writable any more" in message
    assert "turned read-only while the run ran" in message and f"selftune train --resume --out {run}" in message
    assert "cross-device" not in message
    assert (ck / "state.pt").read_bytes() == before  # nothing there was changed
    done = train(cfg, tiny_data, run, resume_from=ck, progress=False)  # writable again: it goes on
    assert done.status == "completed" and done.iterations == 8


# ---------------------------------------------------------------------- a class absent from val or test


def test_data_check_names_a_class_absent_from_test_or_val(tiny_data: Path, tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data, ignore=shutil.ignore_patterns(".*"))
    present = set()
    for mask in (data / "test" / "masks").glob("*.png"):
        present |= set(np.unique(np.array(Image.open(mask))).tolist()) - {255}
    gone = max(present)  # a class the test split has: relabel it there (background), so test lacks it
    for split in ("test", "val"):
        for mask in (data / split / "masks").glob("*.png"):
            m = np.array(Image.open(mask))
            Image.fromarray(np.where(m == gone, 0, m).astype(np.uint8)).save(mask)
    assert main(["data", "check", str(data), "--no-unlabeled"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if f"class {gone} " in line and "does not occur" in line]
    assert len(lines) == 1 and "does not occur in val or test" in lines[0], out
    assert main(["data", "check", str(tiny_data), "--no-unlabeled"]) == 0
    assert f"class {gone} " not in capsys.readouterr().out  # before: that class was in both
