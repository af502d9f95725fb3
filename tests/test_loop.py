"""The training loop end to end on the tiny demo data: resume, divergence, bad input, outputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from selftune.errors import ConfigError
from selftune.trainable.config import TrainConfig
from selftune.trainable.loop import train
from tests.helpers import Reports, crash_and_resume, read_metrics, same, same_weights, tiny, train_once

REQUIRED_KEYS = {
    "iteration", "val_miou", "val_miou_raw", "val_loss", "train_miou", "train_val_gap", "best_val_miou",
    "best_iteration", "lr", "loss_sup", "loss_st", "st_weight", "st_count", "st_ratio", "status", "step_seconds",
    "eval_seconds",
}


@pytest.fixture(scope="module")
def unbroken(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Reports]:
    """One uninterrupted self-training run with strong augmentation, shared by several tests."""
    return train_once(tiny(), tiny_data, tmp_path_factory.mktemp("unbroken") / "run")


def test_reports_once_per_evaluation_with_the_final_status_last(unbroken: tuple[Path, Reports]) -> None:
    run, reports = unbroken
    assert [m["iteration"] for m, _ in reports] == [4, 8, 12]
    assert [m["status"] for m, _ in reports] == ["running", "running", "completed"]
    assert all(ck == run / "checkpoint" for _, ck in reports)
    names = ["background", "water_body", "building", "road", "areca_tree", "snake_fruit", "open_land"]
    for metrics, _ in reports:
        assert metrics.keys() >= REQUIRED_KEYS
        for prefix in ("val_iou/", "st_count/", "st_ratio/", "threshold/"):
            assert {f"{prefix}{n}" for n in names} <= metrics.keys()
        so_far = [m["val_miou"] for m, _ in reports if m["iteration"] <= metrics["iteration"]]
        assert metrics["best_val_miou"] == max(so_far)
        assert metrics["train_val_gap"] == pytest.approx(metrics["train_miou"] - metrics["val_miou"])
    assert sum(m["st_count"] for m, _ in reports) > 0  # self-training ran (threshold 0 accepts every pixel)
    assert same(read_metrics(run), [m for m, _ in reports])  # metrics.jsonl is what was reported
    best = torch.load(run / "best_model_ema.pt", weights_only=True)
    assert set(best) == {"config", "class_names", "model", "iteration", "val_miou"}
    assert best["iteration"] == reports[-1][0]["best_iteration"]
    assert TrainConfig.from_dict(best["config"]) == tiny()


def test_resume_is_exact(unbroken: tuple[Path, Reports], tiny_data: Path, tmp_path: Path) -> None:
    """Stopped right after the checkpoint at 8 (a crash), then resumed: same metrics, bit for bit."""

    def stray_line(run: Path) -> None:  # written after the checkpoint by the crashed attempt: must not survive
        with open(run / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"iteration": 10, "val_miou": 0.5}) + "\n")

    run, reports = tmp_path / "run", Reports()
    result = crash_and_resume(tiny(), tiny_data, run, at=8, reporter=reports, between=stray_line)
    assert result.status == "completed"
    assert [m["iteration"] for m, _ in reports] == [12]
    assert same(read_metrics(run), read_metrics(unbroken[0]))
    assert same_weights(run, unbroken[0], ("ema",))


def test_resume_of_a_finished_run_and_a_longer_run(unbroken: tuple[Path, Reports], tiny_data: Path,
                                                   tmp_path: Path) -> None:
    run, _ = unbroken
    reports = Reports()
    again = train(tiny(), tiny_data, tmp_path / "copy", resume_from=run / "checkpoint", reporter=reports,
                  progress=False)
    assert again.status == "completed" and again.iterations == 12 and reports == []
    longer = train(tiny(max_iters=16), tiny_data, tmp_path / "longer", resume_from=run / "checkpoint" / "state.pt",
                   reporter=reports, progress=False)
    assert longer.status == "completed" and longer.iterations == 16
    assert [m["iteration"] for m, _ in reports] == [16]


def test_resume_with_a_different_config_names_the_keys(unbroken: tuple[Path, Reports], tiny_data: Path,
                                                       tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"lr.*st_weight|st_weight.*lr") as err:
        train(tiny(lr=5e-3, st_weight=2.0), tiny_data, tmp_path / "x", resume_from=unbroken[0] / "checkpoint")
    assert "max_iters" in str(err.value)  # says what may change
    assert not (tmp_path / "x").exists()


def test_divergence_ends_the_run_without_raising(tiny_data: Path, tmp_path: Path) -> None:
    reports = Reports()
    result = train(tiny(lr=1e30, grad_clip=0.0, max_iters=20, eval_every=10), tiny_data, tmp_path / "run",
                   reporter=reports, progress=False)
    assert result.status == "diverged"
    assert "diverged" in result.message and "loss" in result.message
    final, checkpoint_dir = reports[-1]
    assert final["status"] == "diverged" and checkpoint_dir is None
    assert final.keys() >= REQUIRED_KEYS
    assert [m["status"] for m, _ in reports[:-1]] == ["running"] * (len(reports) - 1)
    assert read_metrics(tmp_path / "run")[-1]["status"] == "diverged"


def test_early_stopping_counts_evaluations(tiny_data: Path, tmp_path: Path) -> None:
    # ema_decay 1 without warmup: the EMA model never changes, so its val mIoU never improves after the
    # first evaluation
    reports = Reports()
    cfg = tiny(method="supervised", ema_decay=1.0, ema_warmup=False, patience=2, max_iters=40, eval_every=2,
               log_images=False)
    result = train(cfg, tiny_data, tmp_path / "run", reporter=reports, progress=False)
    assert result.status == "early_stopped" and result.iterations == 6
    assert [(m["iteration"], m["status"]) for m, _ in reports] == [(2, "running"), (4, "running"),
                                                                    (6, "early_stopped")]
    assert all(m["st_count"] == 0 and m["loss_st"] == 0 for m, _ in reports)  # supervised: no unlabelled data


@pytest.mark.parametrize(
    ("changes", "pattern"),
    [
        (dict(encoder="resnet_bogus"), r"encoder 'resnet_bogus'"),
        (dict(encoder="tu-not_a_timm_model"), r"encoder 'tu-not_a_timm_model'"),
        (dict(thresholds=[0.5] * 3), r"thresholds has 3 values but the dataset has 7 classes"),
        (dict(arch="FPN", encoder="resnet18", crop_size=40, decoder_channels=[]), r"crop_size must be a multiple of 32"),
        (dict(class_weighting="explicit", class_weights=[1.0, 2.0]), r"class_weights has 2 values"),
        (dict(arch="DPT", encoder="resnet18", decoder_channels=[]), r"arch='DPT' with encoder='resnet18'.*Only Timm encoders"),
        (dict(device="cuda"), r"device 'cuda' requested but no CUDA GPU is available"),
    ],
)
def test_bad_config_fails_by_name_before_writing(tiny_data: Path, tmp_path: Path, changes: dict[str, Any],
                                                 pattern: str) -> None:
    if changes.get("device") == "cuda" and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ConfigError, match=pattern):
        train(tiny(**changes), tiny_data, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_bad_config_values_fail_by_name() -> None:
    with pytest.raises(ConfigError, match="ema_decay"):
        tiny(ema_decay=1.5)
    with pytest.raises(ConfigError, match="method must be one of"):
        tiny(method="fixmatch")


def test_fresh_run_into_an_existing_run_is_refused(tiny_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(tiny(max_iters=4, eval_every=4, log_images=False), tiny_data, run, progress=False)
    def files() -> dict[Path, bytes]:  # the run's files; the lock file only says who holds the folder now
        return {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".selftune.lock"}

    before = files()
    with pytest.raises(ConfigError, match=str(run)):
        train(tiny(max_iters=4, eval_every=4), tiny_data, run, progress=False)
    assert files() == before
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("unrelated file")  # a non-empty folder without a run is fine
    assert train(tiny(max_iters=4, eval_every=4), tiny_data, other, progress=False).status == "completed"
    assert (other / "notes.txt").read_text() == "unrelated file"


def test_tensorboard_has_scalars_and_the_image_panel(unbroken: tuple[Path, Reports]) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, reports = unbroken
    ea = EventAccumulator(str(run), size_guidance={"scalars": 0, "images": 0})
    ea.Reload()
    tags = ea.Tags()
    for key in ("val_miou", "val_miou_raw", "lr", "st_count", "loss_sup", "val_iou/road", "st_count/road",
                "st_ratio/road", "threshold/road"):
        assert key in tags["scalars"], key
    assert [e.step for e in ea.Scalars("val_miou")] == [4, 8, 12]
    assert [e.value for e in ea.Scalars("val_miou")] == pytest.approx([m["val_miou"] for m, _ in reports])
    assert "val/panel" in tags["images"]
    panel = ea.Images("val/panel")[-1]
    from selftune.trainable.records import HEADER

    # 4 columns of 32 px, a row of column labels, 4 images, a legend of 7 classes + "ignored" (one per row at 128 px)
    assert panel.step == 12 and panel.width == 4 * 32 and panel.height == HEADER + 4 * 32 + 8 * HEADER


def test_ema_decay_zero_makes_the_ema_model_the_raw_model(tiny_data: Path, tmp_path: Path) -> None:
    reports = Reports()
    train(tiny(ema_decay=0.0, max_iters=4, eval_every=4, log_images=False), tiny_data, tmp_path / "run",
          reporter=reports, progress=False)
    (metrics, _), = reports
    assert metrics["val_miou"] == metrics["val_miou_raw"]


def test_resume_on_relabelled_data_is_refused_by_name(tiny_data: Path, tmp_path: Path) -> None:
    """Issue 29: `train --resume` on masks relabelled since the run started went on without a word."""
    import shutil

    import numpy as np
    from PIL import Image

    from selftune.errors import DataError

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    run = tmp_path / "run"
    train(tiny(max_iters=4, eval_every=4, log_images=False), data, run, progress=False)
    assert train(tiny(max_iters=8, eval_every=4, log_images=False), data, run, resume_from=run / "checkpoint",
                 progress=False).status == "completed"  # the same data: it resumes
    mask = sorted((data / "train" / "masks").iterdir())[0]
    with Image.open(mask) as im:
        pixels = np.array(im)
    present = np.unique(pixels[pixels != 255])
    relabelled = np.where(pixels == present[-1], present[0], pixels).astype(pixels.dtype)
    assert (relabelled != pixels).any()
    Image.fromarray(relabelled).save(mask)  # relabelled: one class's pixels given another class
    with pytest.raises(DataError, match=rf"the dataset at {data} changed since the run being resumed started"):
        train(tiny(max_iters=12, eval_every=4, log_images=False), data, run, resume_from=run / "checkpoint",
              progress=False)


def test_a_read_only_checkpoint_folder_and_a_full_disk_are_named_before_the_first_step(
        tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import shutil
    from collections import namedtuple

    from selftune.errors import StorageError

    if os.geteuid() == 0:  # root writes into read-only folders: make the folder a file's child instead
        blocked = tmp_path / "ro"
        blocked.mkdir()
        (blocked / "checkpoint").write_text("a file where the checkpoint folder goes")
    else:
        blocked = tmp_path / "ro"
        (blocked / "checkpoint").mkdir(parents=True)
        (blocked / "checkpoint").chmod(0o500)
    with pytest.raises(StorageError, match=rf"cannot write checkpoints in {blocked / 'checkpoint'}"):
        train(tiny(max_iters=4, eval_every=4, log_images=False), tiny_data, blocked, progress=False)
    assert not (blocked / "metrics.jsonl").exists()

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(10**12, 10**12 - 10**6, 10**6))  # 1 MB free
    with pytest.raises(StorageError, match=r"not enough free space for .*the run's checkpoints \(\d+ MB of weights"):
        train(tiny(max_iters=4, eval_every=4, log_images=False), tiny_data, tmp_path / "full", progress=False)
