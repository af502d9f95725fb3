"""Weights from an earlier run: a frozen teacher (`teacher_checkpoint`) and a warm start (`init_checkpoint`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from selftune.errors import ConfigError, DataError
from selftune.trainable.loop import train
from tests.helpers import Reports, crash_and_resume, read_metrics, same, same_weights, tiny, train_once


@pytest.fixture(scope="module")
def fpn_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short supervised run of another architecture than the tiny student (FPN, not Unet)."""
    run = tmp_path_factory.mktemp("fpn") / "run"
    train(tiny(method="supervised", arch="FPN", decoder_channels=[], max_iters=2, eval_every=2, log_images=False), tiny_data, run,
          progress=False)
    return run


def certain_teacher(src: Path, dst: Path, cls: int, **changes: Any) -> Path:
    """`src`'s best_model_ema.pt with its head rewritten to predict class `cls` everywhere, with certainty."""
    obj = torch.load(src / "best_model_ema.pt", weights_only=True)
    weights = obj["model"]
    weights["segmentation_head.0.weight"].zero_()
    bias = weights["segmentation_head.0.bias"]
    bias.zero_()
    bias[cls] = 50.0
    obj.update(changes)
    torch.save(obj, dst)
    return dst


def test_a_frozen_teacher_labels_every_step(fpn_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    teacher = certain_teacher(fpn_run, tmp_path / "teacher.pt", cls=4)  # areca tree
    reports = Reports()
    train(tiny(teacher_checkpoint=str(teacher), thresholds=[0.95] * 7, log_images=True), tiny_data,
          tmp_path / "run", reporter=reports, progress=False)
    assert [m["iteration"] for m, _ in reports] == [4, 8, 12]
    for metrics, _ in reports:  # an EMA teacher (the Unet student's average) would not be this sure of one class
        assert metrics["st_count"] > 0
        assert metrics["st_count/areca_tree"] == metrics["st_count"]
        assert metrics["st_ratio"] == 1.0


def test_init_checkpoint_starts_the_student_from_the_weights(tiny_data: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    train(tiny(method="supervised", max_iters=2, eval_every=2, log_images=False), tiny_data, src, progress=False)
    source = torch.load(src / "best_model_ema.pt", weights_only=True)["model"]

    def after_one_step(run: Path, **changes: Any) -> dict[str, torch.Tensor]:
        train(tiny(method="supervised", max_iters=1, eval_every=1, warmup_iters=1, lr=1e-9, seed=1, log_images=False, **changes),
              tiny_data, run, progress=False)
        return torch.load(run / "checkpoint" / "state.pt", weights_only=True)["model"]

    warm = after_one_step(tmp_path / "warm", init_checkpoint=str(src))  # a run folder: its best_model_ema.pt
    cold = after_one_step(tmp_path / "cold")
    convs = [k for k in source if k.endswith(".weight") and source[k].ndim == 4]
    assert convs
    assert max((warm[k] - source[k]).abs().max().item() for k in convs) < 1e-6
    assert max((cold[k] - source[k]).abs().max().item() for k in convs) > 1e-2


def test_bad_checkpoints_fail_by_key_before_writing(fpn_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.raises(DataError, match=r"teacher_checkpoint: .*not found: .*nowhere\.pt"):
        train(tiny(teacher_checkpoint=str(tmp_path / "nowhere.pt")), tiny_data, run, progress=False)
    with pytest.raises(ConfigError, match=r"init_checkpoint: .*holds a FPN/tu-mobilenetv3_small_050 model that "
                                          r"does not fit this run's Unet"):
        train(tiny(init_checkpoint=str(fpn_run)), tiny_data, run, progress=False)
    renamed = certain_teacher(fpn_run, tmp_path / "renamed.pt", cls=0, class_names=[f"c{i}" for i in range(7)])
    with pytest.raises(ConfigError, match=r"teacher_checkpoint: .*renamed\.pt was trained on classes \['c0'"):
        train(tiny(teacher_checkpoint=str(renamed)), tiny_data, run, progress=False)
    assert not run.exists()
    with pytest.raises(ConfigError, match=r"teacher_checkpoint .* method is 'supervised'"):
        tiny(method="supervised", teacher_checkpoint=str(renamed))
    with pytest.raises(ConfigError, match="init_checkpoint must be null or a path"):
        tiny(init_checkpoint=" ")


# ---------------------------------------------------------------------- method: rounds


def rounds_cfg(**changes: Any) -> Any:
    """Three rounds of 4, 4 and 4 iterations, an evaluation every 2; threshold 0 accepts every pixel."""
    return tiny(**{**dict(method="rounds", rounds=3, max_iters=12, eval_every=2, st_start_iter=0, st_rampup_iters=1,
                          warmup_iters=1, log_images=True), **changes})


@pytest.fixture(scope="module")
def rounds_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Reports]:
    return train_once(rounds_cfg(), tiny_data, tmp_path_factory.mktemp("rounds") / "run")


def test_rounds_run_supervised_then_self_train_from_the_last_rounds_best(rounds_run: tuple[Path, Reports]) -> None:
    _, reports = rounds_run
    assert [(m["iteration"], m["round"]) for m, _ in reports] == [(2, 1), (4, 1), (6, 2), (8, 2), (10, 3), (12, 3)]
    assert [m["st_count"] for m, _ in reports][:2] == [0, 0]  # round 1 is supervised
    assert all(m["st_count"] > 0 for m, _ in reports[2:])
    assert [m["status"] for m, _ in reports] == ["running"] * 5 + ["completed"]
    # each round restarts its own LR warmup: the first step of a round runs at lr * 1/warmup... and decays to ~0
    assert reports[1][0]["lr"] < reports[0][0]["lr"]  # cosine decay within round 1


def test_rounds_resume_exactly_across_a_round_boundary(rounds_run: tuple[Path, Reports], tiny_data: Path,
                                                       tmp_path: Path) -> None:
    """Killed at iteration 6 (in round 2, after the boundary at 4), resumed: the same metrics, bit for bit."""
    run, reports = tmp_path / "run", Reports()
    crash_and_resume(rounds_cfg(), tiny_data, run, at=6, reporter=reports)
    assert [(m["iteration"], m["round"]) for m, _ in reports] == [(8, 2), (10, 3), (12, 3)]
    assert same(read_metrics(run), read_metrics(rounds_run[0]))
    assert same_weights(run, rounds_run[0], ("model",))


def test_rounds_from_a_first_stage_checkpoint_train_the_later_rounds(tiny_data: Path, tmp_path: Path) -> None:
    stage = tmp_path / "stage"
    train(tiny(method="supervised", max_iters=4, eval_every=2, log_images=False), tiny_data, stage, progress=False)
    reports = Reports()
    train(rounds_cfg(rounds=2, max_iters=4, teacher_checkpoint=str(stage), round_init="warm"), tiny_data,
          tmp_path / "run", reporter=reports, progress=False)
    assert [(m["iteration"], m["round"]) for m, _ in reports] == [(2, 2), (4, 2)]
    assert all(m["st_count"] > 0 for m, _ in reports)
    fresh = Reports()
    train(rounds_cfg(rounds=2, max_iters=4, teacher_checkpoint=str(stage), round_init="fresh"), tiny_data,
          tmp_path / "fresh", reporter=fresh, progress=False)
    assert fresh[0][0]["val_miou"] != reports[0][0]["val_miou"]  # the warm student starts from the stage's model


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(rounds=0), r"rounds must be >= 1, got 0"),
        (dict(round_iters=[4, 4]), r"round_iters lists 2 rounds but the run trains 3"),
        (dict(round_iters=[4, 4, 5]), r"round_iters \[4, 4, 5\] adds up to 13, but max_iters is 12"),
        (dict(rounds=1, teacher_checkpoint="x.pt"), r"rounds is 1 and teacher_checkpoint gives the first round"),
        (dict(round_init="lukewarm"), r"round_init must be one of warm, fresh; got 'lukewarm'"),
    ],
)
def test_bad_rounds_fail_by_name(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        rounds_cfg(**changes)
