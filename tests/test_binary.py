"""Binary mode: one sigmoid channel, positive/negative pseudo-label thresholds relaxed per round, the focal + dice
loss with pos_weight, the binary metrics (precision, recall, F1, IoU of the positive class, AUC), and the sweep's
selectable metric."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from segmentation_models_pytorch.losses import DiceLoss, FocalLoss

from selftune.data.particles import generate_particles
from selftune.errors import ConfigError, SelftuneError
from selftune.trainable import functional as fn
from selftune.trainable.config import TrainConfig
from selftune.trainable.loop import train
from selftune.trainable.methods import create_method
from selftune.trainable.model import build_model
from tests.helpers import TINY_PARTICLES, Reports, crash_and_resume, read_metrics, same, tiny_config, train_once

BINARY: dict[str, Any] = tiny_config(
    binary=True, method="rounds", rounds=3, max_iters=12, eval_every=2, st_start_iter=0, st_rampup_iters=1,
    pos_threshold=0.6, neg_threshold=0.4, threshold_decay=0.05, ce_weight=0.0, focal_weight=0.7, dice_weight=0.3,
    pos_weight=3.0, report_test=True, teacher_tta="flip", strong_aug=True, point_radius=3.0, point_ring=1.0,
)
BINARY_KEYS = {f"{split}_{m}" for split in ("val", "test") for m in ("precision", "recall", "f1", "pos_iou", "auc")}


def binary(**changes: Any) -> TrainConfig:
    return TrainConfig.from_dict({**BINARY, **changes})


@pytest.fixture(scope="module")
def particles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_particles(tmp_path_factory.mktemp("particles") / "data", TINY_PARTICLES)


# ---------------------------------------------------------------------- pure functions


def test_binary_pseudo_labels_positive_negative_and_ignored_between() -> None:
    p = torch.tensor([[[0.97, 0.95], [0.50, 0.05]], [[0.02, 0.94], [0.06, 0.51]]])
    pl = fn.binary_pseudo_labels(p, 0.95, 0.05, ignore_index=255)
    assert pl.labels.tolist() == [[[1, 1], [255, 0]], [[0, 255], [255, 255]]]
    assert pl.accepted.tolist() == [[[True, True], [False, True]], [[True, False], [False, False]]]
    assert pl.predicted.tolist() == [[[1, 1], [1, 0]], [[0, 1], [0, 1]]]
    assert torch.allclose(pl.confidence, torch.tensor([[[0.97, 0.95], [0.5, 0.95]], [[0.98, 0.94], [0.94, 0.51]]]))


def test_thresholds_relax_per_round_as_in_seed_003_and_stop_at_one_half() -> None:
    assert fn.relaxed_thresholds(0.95, 0.05, 0.02, 0) == (0.95, 0.05)
    assert fn.relaxed_thresholds(0.95, 0.05, 0.02, 1) == (0.93, 0.07)
    assert fn.relaxed_thresholds(0.95, 0.05, 0.02, 2) == (0.91, 0.09)
    assert fn.relaxed_thresholds(0.95, 0.05, 0.3, 5) == (0.5, 0.5)


def test_rounds_relax_from_the_first_pseudo_labelled_round_the_mean_teacher_never() -> None:
    cfg = TrainConfig.from_dict(tiny_config(binary=True, method="rounds", rounds=4))
    method = create_method(cfg, 2)
    seen = []
    for index in range(4):
        method.index = index
        seen.append(method.thresholds_at(0))
    assert [t for pair in seen for t in pair] == pytest.approx([0.95, 0.95, 0.95, 0.95, 0.93, 0.93, 0.91, 0.91])
    ema = create_method(cfg.replace(method="ema_self_training", rounds=2), 2)  # rounds: a knob of rounds only
    assert ema.binary_thresholds() == (0.95, 0.05)


def test_the_mean_teacher_labels_a_binary_batch_by_pos_and_neg_thresholds() -> None:
    logit = torch.logit(torch.tensor([[0.97, 0.5], [0.03, 0.9]]))

    class Teacher(torch.nn.Module):  # the same positive logit map for every image, flip-symmetric in no way
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return logit.expand(len(x), 1, 2, 2)

    cfg = TrainConfig.from_dict(tiny_config(binary=True, method="ema_self_training", pos_threshold=0.95,
                                            neg_threshold=0.05))
    batch = create_method(cfg, 2).pseudo_batch(Teacher(), torch.zeros(3, 3, 2, 2), 20, torch.Generator())
    assert batch.labels[0].tolist() == [[1, 255], [0, 255]]
    assert batch.accepted.tolist() == [3, 3] and batch.predicted.tolist() == [3, 9]


def test_a_sigmoid_channel_is_two_classes_at_the_evaluation_boundary() -> None:
    z = torch.tensor([[[[-2.0, 0.5]]]])  # [B=1, 1, H=1, W=2]
    two = fn.two_class_logits(z)
    assert two.shape == (1, 2, 1, 2) and two.argmax(1).tolist() == [[[0, 1]]]
    assert torch.allclose(two.softmax(1), fn.class_probs(z))
    assert torch.allclose(fn.class_probs(z)[:, 1], z.sigmoid()[:, 0])
    k = torch.randn(1, 3, 2, 2)
    assert torch.equal(fn.two_class_logits(k), k) and torch.allclose(fn.class_probs(k), k.softmax(1))


def _logits_and_target() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 1, 5, 5, generator=g) * 2
    t = (torch.rand(2, 5, 5, generator=g) > 0.6).long()
    t[0, 0, :3] = 255
    return z, t


def test_binary_loss_terms_are_torch_bce_and_smp_focal_and_dice() -> None:
    z, t = _logits_and_target()
    valid = t != 255
    bce = F.binary_cross_entropy_with_logits(z[:, 0][valid], t[valid].float())
    assert fn.BinaryLoss(ce_weight=1.0)(z, t) == pytest.approx(float(bce), rel=1e-5)
    weighted = F.binary_cross_entropy_with_logits(z[:, 0][valid], t[valid].float(), pos_weight=torch.tensor(4.0))
    assert fn.BinaryLoss(pos_weight=4.0)(z, t) == pytest.approx(float(weighted), rel=1e-5)
    for alpha in (None, 0.25):
        focal = FocalLoss("binary", alpha=alpha, gamma=2.0, ignore_index=255)(z, t.unsqueeze(1))
        ours = fn.BinaryLoss(ce_weight=0, focal_weight=1.0, focal_alpha=alpha)(z, t)
        assert ours == pytest.approx(float(focal), rel=1e-5)
    dice = DiceLoss("binary", from_logits=True, ignore_index=255)(z, t.unsqueeze(1))
    assert fn.BinaryLoss(ce_weight=0, dice_weight=1.0)(z, t) == pytest.approx(float(dice), rel=1e-5)
    combined = fn.BinaryLoss(ce_weight=0, focal_weight=0.7, dice_weight=0.3, pos_weight=2.0)
    assert combined(z, t) == pytest.approx(float(combined(fn.two_class_logits(z), t)), rel=1e-5)


def test_binary_loss_without_a_valid_pixel_is_zero_with_zero_gradients() -> None:
    z = torch.randn(1, 1, 3, 3, requires_grad=True)
    loss = fn.BinaryLoss(ce_weight=1.0, focal_weight=1.0, dice_weight=1.0, pos_weight=5.0)(z, torch.full((1, 3, 3), 255))
    loss.backward()
    assert float(loss.detach()) == 0.0 and z.grad is not None and float(z.grad.abs().sum()) == 0.0


def test_binary_scores_by_hand() -> None:
    cm = torch.tensor([[50, 10], [5, 15]])  # rows truth: 10 false positives, 5 false negatives, 15 true positives
    s = fn.binary_scores(cm)
    assert s["precision"] == pytest.approx(15 / 25) and s["recall"] == pytest.approx(15 / 20)
    assert s["f1"] == pytest.approx(30 / 45) and s["iou"] == pytest.approx(15 / 30)
    none = fn.binary_scores(torch.tensor([[9, 0], [0, 0]]))
    assert none["precision"] == 0.0 and none["recall"] == 0.0 and math.isnan(none["f1"]) and math.isnan(none["iou"])


def exact_auc(scores: list[float], labels: list[int]) -> float:
    """The rank (Mann-Whitney) AUC: over every (positive, negative) pair, 1 if the positive scores higher, 1/2 tied."""
    pos = [s for s, y in zip(scores, labels, strict=True) if y == 1]
    neg = [s for s, y in zip(scores, labels, strict=True) if y == 0]
    return sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))


def test_histogram_auc_is_the_exact_rank_auc_when_bins_separate_the_scores() -> None:
    scores = [0.91, 0.12, 0.55, 0.33, 0.78, 0.05, 0.62, 0.47]
    labels = [1, 0, 1, 0, 0, 0, 1, 255]  # the last pixel is ignored
    hist = fn.roc_histograms(torch.tensor(scores), torch.tensor(labels), bins=256)
    assert hist.sum() == 7 and hist[1].sum() == 3
    kept = [(s, y) for s, y in zip(scores, labels, strict=True) if y != 255]
    expected = exact_auc([s for s, _ in kept], [y for _, y in kept])
    assert expected == pytest.approx(10 / 12)  # by hand: of 3 x 4 pairs, 0.78 (a negative) beats 0.55 and 0.62
    assert fn.auc_from_histograms(hist) == pytest.approx(expected)
    tied = fn.roc_histograms(torch.tensor([0.5, 0.5, 0.9]), torch.tensor([1, 0, 1]), bins=4)
    assert fn.auc_from_histograms(tied) == pytest.approx(exact_auc([0.5, 0.5, 0.9], [1, 0, 1]))  # a tie counts 1/2
    assert math.isnan(fn.auc_from_histograms(fn.roc_histograms(torch.tensor([0.3]), torch.tensor([1]), 8)))


# ---------------------------------------------------------------------- config and model


@pytest.mark.parametrize("changes, message", [
    (dict(binary=True, pos_threshold=0.6, neg_threshold=0.6), r"neg_threshold must be in \[0, 0\.5\], got 0\.6"),
    (dict(binary=True, pos_threshold=0.5, neg_threshold=0.5), r"neg_threshold 0\.5 must be below pos_threshold 0\.5"),
    (dict(binary=True, pos_threshold=1.2), r"pos_threshold must be in \[0\.5, 1\], got 1\.2"),
    (dict(binary=True, pos_weight=0), r"pos_weight must be a positive number"),
    (dict(pos_weight=10.0), r"pos_weight is 10\.0, but it is a knob of binary mode and binary is false"),
    (dict(binary=True, method="s4gan"), r"binary mode works with methods supervised, ema_self_training, rounds and diverse_head"),
    (dict(binary=True, min_accept_ratio=0.2), r"min_accept_ratio is 0\.2, but binary mode does not use it"),
    (dict(auc_bins=1), r"auc_bins must be >= 2"),
])
def test_bad_binary_config_fails_by_name(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict(changes)


def test_binary_mode_on_a_dataset_of_more_than_two_classes_fails_before_training(tiny_data: Path,
                                                                               tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"binary mode needs a dataset of 2 classes .* it has 7"):
        train(TrainConfig.from_dict(tiny_config(binary=True)), tiny_data, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_binary_model_has_one_output_channel() -> None:
    model = build_model(binary(), 2)
    assert model.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 1, 32, 32)


# ---------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def unbroken(particles: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Reports]:
    return train_once(binary(), particles, tmp_path_factory.mktemp("binary") / "run")


def test_binary_rounds_report_the_binary_metrics_everywhere(unbroken: tuple[Path, Reports]) -> None:
    run, reports = unbroken
    assert [m["round"] for m, _ in reports] == [1, 1, 2, 2, 3, 3]
    for metrics, _ in reports:
        assert metrics.keys() >= BINARY_KEYS
        assert 0 <= metrics["val_precision"] <= 1 and 0 <= metrics["val_recall"] <= 1
        assert metrics["val_pos_iou"] == pytest.approx(metrics["val_iou/particle"])
    thresholds = {m["round"]: (m["threshold/background"], m["threshold/particle"]) for m, _ in reports}
    assert thresholds[2] == (pytest.approx(0.6), 0.6) and thresholds[3] == (pytest.approx(0.55), 0.55)
    assert sum(m["st_count"] for m, _ in reports) > 0
    assert same(read_metrics(run), [m for m, _ in reports])

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(run), size_guidance={"scalars": 0})
    ea.Reload()
    assert {"val_f1", "val_auc", "test_f1"} <= set(ea.Tags()["scalars"])


def test_binary_rounds_resume_exactly(unbroken: tuple[Path, Reports], particles: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    crash_and_resume(binary(), particles, run, at=6)
    assert same(read_metrics(run), read_metrics(unbroken[0]))


# ---------------------------------------------------------------------- the sweep's metric


def test_the_sweep_metric_must_exist_for_the_mode(particles: Path, tiny_data: Path, tmp_path: Path) -> None:
    from selftune.search import SweepConfig
    from selftune.search.run import plan_sweep

    names7 = ["background", "water body", "building", "road", "areca tree", "snake fruit", "open land"]
    with pytest.raises(ConfigError, match=r"metric 'val_f1' is not a metric the trials report for a 7-class "
                                          r"dataset; available: val_miou, val_miou_raw, val_iou/background.*need 2"):
        SweepConfig(metric="val_f1").check_metric(names7, binary=False)
    with pytest.raises(ConfigError, match=r"'val_f2' .* for binary mode \(did you mean 'val_f1'\?\); available: "
                                          r"val_miou, val_miou_raw, val_precision, val_recall, val_f1"):
        SweepConfig(metric="val_f2").check_metric(["background", "particle"], binary=True)
    SweepConfig(metric="val_iou/particle").check_metric(["background", "particle"], binary=True)
    with pytest.raises(ConfigError, match="test split, which the tuner must never see"):
        SweepConfig(metric="test_f1")

    base = {k: v for k, v in BINARY.items() if k not in ("rounds", "method")}
    sweep = SweepConfig(name="m", data=str(tiny_data), base=tiny_config(), space="thresholds_shared", metric="val_f1",
                        storage=str(tmp_path / "results"))
    with pytest.raises(SelftuneError, match="metric 'val_f1'"):
        plan_sweep(sweep)
    assert not (tmp_path / "results" / "m").exists()
    ok = plan_sweep(sweep.replace(data=str(particles), base=base, space="binary"))
    assert ok.meta()["metric"] == "val_f1"


def test_optuna_is_told_the_best_value_of_the_sweep_metric(tmp_path: Path) -> None:
    import optuna

    from selftune.search.adapter import make_searcher
    from selftune.search.study import open_optuna_storage
    from selftune.spaces import SpaceContext

    journal = f"journal:{tmp_path / 'optuna.journal'}"
    searcher = make_searcher("tpe", "binary", SpaceContext(2, 60, 10), seed=0, num_samples=2, max_concurrent=1,
                             study_name="f1", storage_url=journal, metric="val_f1").searcher
    assert searcher.suggest("t1")
    searcher.on_trial_result("t1", {"val_f1": 0.4, "val_miou": 0.6, "iteration": 10})
    searcher.on_trial_result("t1", {"val_f1": 0.7, "val_miou": 0.5, "iteration": 20})
    searcher.on_trial_complete("t1", {"val_f1": 0.5, "val_miou": 0.55, "best_val_miou": 0.6, "iteration": 30,
                                      "status": "completed"})
    [trial] = optuna.load_study(study_name="f1", storage=open_optuna_storage(journal)).trials
    assert trial.state.name == "COMPLETE" and trial.value == 0.7
    assert trial.intermediate_values == {10: 0.4, 20: 0.7, 30: 0.5}


def test_analyze_defaults_to_the_sweep_metric(tmp_path: Path) -> None:
    from selftune.analysis.cli import sweep_metric

    (tmp_path / "selftune_sweep.yaml").write_text(json.dumps({"metric": "val_f1"}))
    assert sweep_metric(str(tmp_path)) == "val_f1"
    (tmp_path / "selftune_sweep.yaml").write_text(json.dumps({"sweep": {}}))
    assert sweep_metric(str(tmp_path)) == "val_miou"


# ---------------------------------------------------------------------- one metric throughout (issue 27)


def test_the_best_checkpoint_and_patience_follow_select_metric(particles: Path, tmp_path: Path) -> None:
    """select_metric val_f1 (a binary sweep's metric): best_iteration is the evaluation with the best val F1."""
    run, _ = train_once(binary(select_metric="val_f1", max_iters=12, eval_every=3), particles, tmp_path / "f1")
    rows = read_metrics(run)
    f1 = [r["val_f1"] if math.isfinite(r["val_f1"]) else -1.0 for r in rows]
    best = rows[f1.index(max(f1))]
    assert rows[-1]["best_iteration"] == best["iteration"]
    assert rows[-1]["best_val_miou"] == pytest.approx(best["val_f1"])  # the best value of select_metric
    saved = torch.load(run / "best_model_ema.pt", map_location="cpu", weights_only=False)
    assert saved.get("iteration", best["iteration"]) == best["iteration"]


def test_select_metric_must_be_a_val_metric_this_dataset_reports(particles: Path, tmp_path: Path,
                                                                  tiny_data: Path) -> None:
    with pytest.raises(ConfigError, match=r"select_metric must be a val_ metric.*got 'test_miou'"):
        binary(select_metric="test_miou")
    with pytest.raises(ConfigError, match="select_metric 'val_f1' is not a metric this run reports on a 7-class"):
        train(TrainConfig.from_dict(tiny_config(select_metric="val_f1", max_iters=20)), tiny_data, tmp_path / "x")
    assert not (tmp_path / "x").exists()
