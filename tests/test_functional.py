"""The loop's pure functions on hand-made 2x2 tensors, against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from selftune.errors import ConfigError
from selftune.trainable import functional as fx

IGN = 255


def probs_2x2() -> torch.Tensor:
    """One image, 3 classes, 2x2 pixels: top classes 0, 1 / 1, 2 with confidences .6, .8 / .55, .4."""
    p = torch.tensor(
        [
            [[0.6, 0.1], [0.3, 0.3]],  # class 0
            [[0.3, 0.8], [0.55, 0.3]],  # class 1
            [[0.1, 0.1], [0.15, 0.4]],  # class 2
        ]
    )
    return p[None]


# ------------------------------------------------------------------------------ pseudo-labels


def test_pseudo_labels_use_the_threshold_of_the_predicted_class():
    pl = fx.pseudo_labels(probs_2x2(), torch.tensor([0.5, 0.6, 0.3]), IGN)
    # pixel (0,0): class 0 at .6 >= .5 accepted; (0,1): class 1 at .8 >= .6 accepted;
    # (1,0): class 1 at .55 < .6 rejected; (1,1): class 2 at .4 >= .3 accepted
    assert pl.labels.tolist() == [[[0, 1], [IGN, 2]]]
    assert pl.accepted.tolist() == [[[True, True], [False, True]]]
    assert pl.predicted.tolist() == [[[0, 1], [1, 2]]]
    assert torch.allclose(pl.confidence, torch.tensor([[[0.6, 0.8], [0.55, 0.4]]]))


def test_pseudo_labels_threshold_is_inclusive_and_extremes():
    p = probs_2x2()
    assert fx.pseudo_labels(p, torch.tensor([0.6, 0.55, 0.4]), IGN).accepted.all()
    assert not fx.pseudo_labels(p, torch.ones(3), IGN).accepted.any()
    assert fx.pseudo_labels(p, torch.zeros(3), IGN).accepted.all()


def test_pseudo_label_counts_and_acceptance_ratio():
    pl = fx.pseudo_labels(probs_2x2(), torch.tensor([0.5, 0.6, 0.3]), IGN)
    accepted, predicted = fx.pseudo_label_counts(pl, 4)
    assert accepted.tolist() == [1, 1, 1, 0]
    assert predicted.tolist() == [1, 2, 1, 0]
    assert fx.acceptance_ratio(accepted, predicted).tolist() == [1.0, 0.5, 1.0, 0.0]
    assert float(fx.acceptance_ratio(accepted.sum(), predicted.sum())) == 0.75


def test_class_floor_thresholds_take_the_most_confident_fraction_of_each_class():
    conf = torch.tensor([[0.9, 0.5, 0.6, 0.7, 0.99, 0.3]])
    pred = torch.tensor([[0, 1, 1, 1, 0, 2]])
    # class 0 {.9,.99}: ceil(.5*2)=1 -> .99; class 1 {.5,.6,.7}: ceil(1.5)=2 -> .6; class 2 {.3} -> .3;
    # class 3 is predicted nowhere -> 1.0
    got = fx.class_floor_thresholds(conf, pred, 4, 0.5)
    assert got.tolist() == pytest.approx([0.99, 0.6, 0.3, 1.0])
    assert fx.class_floor_thresholds(conf, pred, 4, 1.0).tolist() == pytest.approx([0.9, 0.5, 0.3, 1.0])
    assert fx.class_floor_thresholds(conf[:, :0], pred[:, :0], 2, 0.5).tolist() == [1.0, 1.0]


def test_min_accept_ratio_lowers_only_thresholds_that_accept_too_little():
    p = probs_2x2()  # top classes 0, 1 / 1, 2 at .6, .8 / .55, .4
    strict = torch.tensor([0.5, 0.9, 0.9])
    assert fx.pseudo_labels(p, strict, IGN).labels.tolist() == [[[0, IGN], [IGN, IGN]]]
    # floor 0.5: class 1 keeps its more confident half (.8), class 2 its only pixel; class 0 is
    # unchanged (its threshold .5 already accepts it)
    pl = fx.pseudo_labels(p, strict, IGN, min_accept_ratio=0.5)
    assert pl.labels.tolist() == [[[0, 1], [IGN, 2]]]
    assert fx.pseudo_labels(p, strict, IGN, min_accept_ratio=1.0).accepted.all()


def test_tta_probs_average_the_views_mapped_back():
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 4, 3, padding=1, bias=False)  # not flip-symmetric: views differ
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        single = model(x).softmax(1)
        assert torch.equal(fx.tta_probs(model, x, "none"), single)
        # reference: the 8 symmetries as rotations by k*90 degrees, with and without a transpose, undone by hand
        ref = []
        for t in (False, True):
            for k in range(4):
                v = x.transpose(-1, -2) if t else x
                p = model(torch.rot90(v, k, dims=(-2, -1))).softmax(1)
                p = torch.rot90(p, -k, dims=(-2, -1))
                ref.append(p.transpose(-1, -2) if t else p)
        d4 = fx.tta_probs(model, x, "d4")
        flips = [model(x.flip(d)).softmax(1).flip(d) for d in ((-1,), (-2,), (-2, -1))]
        flip = fx.tta_probs(model, x, "flip")
    assert torch.allclose(d4, torch.stack(ref).mean(0), atol=1e-6)
    assert torch.allclose(flip, torch.stack([single, *flips]).mean(0), atol=1e-6)
    assert not torch.allclose(d4, single, atol=1e-3)
    assert torch.allclose(d4.sum(1), torch.ones(2, 6, 6), atol=1e-6)
    symmetric = torch.nn.Conv2d(3, 4, 1)  # a 1x1 convolution commutes with every flip and transpose
    with torch.no_grad():
        assert torch.allclose(fx.tta_probs(symmetric, x, "d4"), symmetric(x).softmax(1), atol=1e-6)


def test_teacher_tta_sets_the_pseudo_labels():
    from selftune.trainable.config import TrainConfig
    from selftune.trainable.methods import create_method

    torch.manual_seed(0)
    teacher = torch.nn.Conv2d(3, 4, 3, padding=1, bias=False)
    x = torch.randn(2, 3, 6, 6)
    labels = {}
    for mode in ("none", "d4"):
        cfg = TrainConfig(thresholds=(0.0,) * 4, strong_aug=False, teacher_tta=mode, st_start_iter=0)
        labels[mode] = create_method(cfg, 4).pseudo_batch(teacher, x, 0, torch.Generator()).labels
        with torch.no_grad():
            assert torch.equal(labels[mode], fx.tta_probs(teacher, x, mode).argmax(1))
    assert not torch.equal(labels["none"], labels["d4"])


def test_align_distribution_moves_mass_from_over_predicted_classes():
    p = probs_2x2()  # class means over the 4 pixels: .325, .4875, .1875
    prior = torch.tensor([0.5, 0.25, 0.25])
    mean = p.mean(dim=(0, 2, 3))
    out = fx.align_distribution(p, prior, mean)
    assert torch.allclose(out.sum(1), torch.ones(1, 2, 2))
    # pixel (1,0): .3/.325*.5, .55/.4875*.25, .15/.1875*.25, renormalised -> class 0 now on top
    raw = torch.tensor([0.3 / 0.325 * 0.5, 0.55 / 0.4875 * 0.25, 0.15 / 0.1875 * 0.25])
    assert torch.allclose(out[0, :, 1, 0], raw / raw.sum())
    assert out[0, :, 1, 0].argmax() == 0 and p[0, :, 1, 0].argmax() == 1
    # when the teacher already predicts the prior, nothing changes
    assert torch.allclose(fx.align_distribution(p, mean, mean), p)


# ------------------------------------------------------------------------------ schedules


def test_threshold_schedule_constant_and_linear():
    thr = [0.5, 0.6]
    kw = dict(start_offset=0.2, ramp_iters=10, start_iter=100)
    assert fx.threshold_at(0, thr, schedule="constant", **kw) == thr
    lin = [fx.threshold_at(i, thr, schedule="linear", **kw) for i in (0, 100, 105, 110, 500)]
    assert lin[0] == pytest.approx([0.7, 0.8])  # before ST starts: the start value
    assert lin[1] == pytest.approx([0.7, 0.8])
    assert lin[2] == pytest.approx([0.6, 0.7])
    assert lin[3] == pytest.approx(thr)
    assert lin[4] == pytest.approx(thr)
    # offsets are clipped to [0, 1]
    assert fx.threshold_at(100, [0.9, 0.1], schedule="linear", start_offset=0.5, ramp_iters=10,
                           start_iter=100) == [1.0, 0.6]
    assert fx.threshold_at(100, [0.9, 0.1], schedule="linear", start_offset=-0.5, ramp_iters=10,
                           start_iter=100) == pytest.approx([0.4, 0.0])


def test_st_weight_ramp():
    w = [fx.st_weight_at(i, weight=1.5, start_iter=10, rampup_iters=3) for i in (0, 9, 10, 11, 12, 13, 99)]
    assert w == pytest.approx([0, 0, 0.5, 1.0, 1.5, 1.5, 1.5])
    assert fx.st_weight_at(10, weight=2.0, start_iter=10, rampup_iters=0) == 2.0


def test_lr_factor_warmup_then_decay():
    kw = dict(warmup_iters=10, max_iters=110, poly_power=0.9)
    assert fx.lr_factor(0, schedule="cosine", **kw) == pytest.approx(0.1)
    assert fx.lr_factor(9, schedule="cosine", **kw) == pytest.approx(1.0)
    assert fx.lr_factor(10, schedule="cosine", **kw) == pytest.approx(1.0)
    assert fx.lr_factor(60, schedule="cosine", **kw) == pytest.approx(0.5)  # halfway: cos(pi/2)
    assert fx.lr_factor(110, schedule="cosine", **kw) == pytest.approx(0.0)
    assert fx.lr_factor(60, schedule="poly", **kw) == pytest.approx(0.5**0.9)
    assert fx.lr_factor(100, schedule="constant", **kw) == 1.0
    assert fx.lr_factor(0, schedule="cosine", warmup_iters=0, max_iters=10, poly_power=1) == 1.0
    with pytest.raises(ConfigError, match="lr_schedule"):
        fx.lr_factor(50, schedule="step", **kw)


# ------------------------------------------------------------------------------ losses


def logits_and_target():
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    target = torch.tensor([[[0, 2], [IGN, 1]]])
    return logits, target


def test_ce_matches_hand_computation_with_weights_and_ignore():
    logits, target = logits_and_target()
    w = torch.tensor([1.0, 2.0, 0.5])
    loss = fx.SegmentationLoss(3, class_weights=w, ignore_index=IGN)(logits, target).detach()
    logp = logits.detach().log_softmax(1)[0]
    picks = [(0, 0, 0), (2, 0, 1), (1, 1, 1)]  # (class, row, col) of the valid pixels
    expected = sum(-w[c] * logp[c, i, j] for c, i, j in picks) / sum(w[c] for c, _, _ in picks)
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    ref = torch.nn.functional.cross_entropy(logits.detach(), target, weight=w, ignore_index=IGN)
    assert float(loss) == pytest.approx(float(ref), rel=1e-6)


def test_focal_and_dice_terms_match_hand_computation():
    logits, target = logits_and_target()
    x = logits.detach()[0]
    valid = [(0, 0), (0, 1), (1, 1)]
    labels = {(0, 0): 0, (0, 1): 2, (1, 1): 1}
    # smp's multiclass focal: per class, the mean over valid pixels of the one-vs-rest sigmoid focal term
    gamma = 2.0
    per_class = []
    for c in range(3):
        terms = []
        for i, j in valid:
            y = 1.0 if labels[(i, j)] == c else 0.0
            p = torch.sigmoid(x[c, i, j])
            pt = p if y else 1 - p
            terms.append(-((1 - pt) ** gamma) * torch.log(pt))
        per_class.append(sum(terms) / len(terms))
    focal_ref = sum(per_class) / 3
    x_in = logits.detach()
    focal = fx.SegmentationLoss(3, ce_weight=0, focal_weight=1, focal_gamma=gamma, ignore_index=IGN)(x_in, target)
    assert float(focal) == pytest.approx(float(focal_ref), rel=1e-5)
    # smp's soft Dice over valid pixels, 1 - 2|P∩Y| / (|P| + |Y|) per class, averaged over present classes
    prob = x.softmax(0)
    dice_terms = []
    for c in range(3):
        inter = sum(prob[c, i, j] * (labels[(i, j)] == c) for i, j in valid)
        card = sum(prob[c, i, j] + (labels[(i, j)] == c) for i, j in valid)
        dice_terms.append(1 - 2 * inter / card)
    dice_ref = sum(dice_terms) / 3  # every class is present once here
    dice = fx.SegmentationLoss(3, ce_weight=0, dice_weight=1, ignore_index=IGN)(x_in, target)
    assert float(dice) == pytest.approx(float(dice_ref), rel=1e-5)
    ce = fx.SegmentationLoss(3, ignore_index=IGN)(x_in, target)
    total = fx.SegmentationLoss(3, ce_weight=0.5, focal_weight=2.0, dice_weight=3.0, ignore_index=IGN)(x_in, target)
    assert float(total) == pytest.approx(float(0.5 * ce + 2.0 * focal + 3.0 * dice), rel=1e-6)


def test_pseudo_label_loss_is_the_supervised_loss_on_accepted_pixels():
    torch.manual_seed(1)
    logits = torch.randn(1, 3, 2, 2)
    pl = fx.pseudo_labels(probs_2x2(), torch.tensor([0.5, 0.6, 0.3]), IGN)
    loss = fx.SegmentationLoss(3, ignore_index=IGN)(logits, pl.labels)
    logp = logits.log_softmax(1)[0]
    expected = -(logp[0, 0, 0] + logp[1, 0, 1] + logp[2, 1, 1]) / 3  # the rejected pixel (1,0) is left out
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)


def test_valid_share_counts_pixels_that_are_not_ignored():
    labels = torch.tensor([[[0, IGN], [IGN, IGN]], [[1, 2], [IGN, 0]]])
    assert float(fx.valid_share(labels, IGN)) == pytest.approx(4 / 8)
    assert float(fx.valid_share(torch.full((1, 2, 2), IGN), IGN)) == 0.0


@pytest.mark.parametrize(("normalization", "divisor"), [("accepted", 3), ("all_pixels", 4)])
def test_unlabeled_loss_is_a_mean_over_accepted_or_over_all_pixels(normalization, divisor):
    from selftune.trainable.config import TrainConfig
    from selftune.trainable.methods import create_method
    from selftune.trainable.methods.base import PseudoBatch

    torch.manual_seed(1)
    logits = torch.randn(1, 3, 2, 2)
    pl = fx.pseudo_labels(probs_2x2(), torch.tensor([0.5, 0.6, 0.3]), IGN)  # 3 of 4 pixels accepted
    method = create_method(TrainConfig(st_loss_normalization=normalization), 3)
    batch = PseudoBatch(probs_2x2(), pl.labels, *fx.pseudo_label_counts(pl, 3))
    loss = method.unlabeled_loss(logits, batch, fx.SegmentationLoss(3, ignore_index=IGN))
    logp = logits.log_softmax(1)[0]
    expected = -(logp[0, 0, 0] + logp[1, 0, 1] + logp[2, 1, 1]) / divisor  # FixMatch/UniMatch divide by all 4
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)


def test_loss_without_valid_pixels_is_zero_with_zero_gradient():
    logits = torch.randn(2, 3, 2, 2, requires_grad=True)
    target = torch.full((2, 2, 2), IGN)
    loss_fn = fx.SegmentationLoss(3, ce_weight=1, focal_weight=1, dice_weight=1, class_weights=torch.ones(3),
                                  ignore_index=IGN)
    loss = loss_fn(logits, target)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_loss_is_float32_under_half_logits():
    logits, target = logits_and_target()
    loss = fx.SegmentationLoss(3, ignore_index=IGN)(logits.detach().bfloat16(), target)
    assert loss.dtype == torch.float32


def test_class_weights_for():
    assert fx.class_weights_for("none", 3) is None
    assert fx.class_weights_for("explicit", 2, explicit=[1, 3]).tolist() == [1.0, 3.0]
    assert fx.class_weights_for("inverse_freq", 2, suggested=[0.5, 1.5]).tolist() == [0.5, 1.5]
    with pytest.raises(ConfigError, match="needs 3 weights"):
        fx.class_weights_for("explicit", 3, explicit=[1, 2])
    with pytest.raises(ConfigError, match="class_weighting"):
        fx.class_weights_for("median", 3)


# ------------------------------------------------------------------------------ metrics


def test_confusion_and_iou_on_2x2():
    pred = torch.tensor([[[0, 1], [1, 1]]])
    target = torch.tensor([[[0, 1], [0, IGN]]])
    cm = fx.confusion_matrix(pred, target, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 0]]
    iou = fx.iou_per_class(cm)
    assert iou[0] == pytest.approx(0.5) and iou[1] == pytest.approx(0.5)
    assert math.isnan(iou[2])  # class 2: absent from truth and prediction
    assert fx.mean_iou(iou) == pytest.approx(0.5)  # NaN left out of the mean
    assert math.isnan(fx.mean_iou(torch.full((3,), float("nan"))))


def test_miou_matches_brute_force_count():
    g = torch.Generator().manual_seed(3)
    k = 5
    pred = torch.randint(0, k, (3, 7, 9), generator=g)
    target = torch.randint(0, k, (3, 7, 9), generator=g)
    target[torch.rand(target.shape, generator=g) < 0.2] = IGN
    target[target == 4] = IGN  # class 4 never in the truth (but predicted): IoU 0, not NaN
    cm = torch.zeros(k, k, dtype=torch.int64)
    for half in (slice(0, 2), slice(2, 3)):  # accumulated over batches
        cm += fx.confusion_matrix(pred[half], target[half], k)
    ious = []
    for c in range(k):
        tp = fp = fn = 0
        for p, t in zip(pred.flatten().tolist(), target.flatten().tolist(), strict=True):
            if t == IGN:
                continue
            tp += p == c and t == c
            fp += p == c and t != c
            fn += p != c and t == c
        ious.append(tp / (tp + fp + fn) if tp + fp + fn else float("nan"))
    assert fx.iou_per_class(cm).tolist() == pytest.approx(ious)
    assert ious[4] == 0.0
    assert fx.mean_iou(fx.iou_per_class(cm)) == pytest.approx(sum(ious) / k)


# ------------------------------------------------------------------------------ EMA


def test_ema_updates_parameters_and_buffers():
    torch.manual_seed(0)
    student = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.BatchNorm2d(2))
    teacher = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.BatchNorm2d(2))
    student(torch.randn(4, 1, 2, 2))  # moves the student's running stats and batch counter
    t_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    fx.ema_update(teacher, student, 0.9)
    s = student.state_dict()
    for key, value in teacher.state_dict().items():
        if key.endswith("num_batches_tracked"):
            assert int(value) == 1  # integer buffer: copied
        else:
            assert torch.allclose(value, 0.9 * t_before[key] + 0.1 * s[key]), key
    assert not torch.equal(teacher.state_dict()["1.running_mean"], t_before["1.running_mean"])
    fx.ema_update(teacher, student, 0.0)  # decay 0: a copy
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, s[key])


def test_ema_decay_warmup():
    assert [fx.ema_decay_at(t, 0.99, warmup=True) for t in (0, 1, 9, 98, 99, 5000)] == pytest.approx(
        [0.0, 0.5, 0.9, 0.98989899, 0.99, 0.99])
    assert fx.ema_decay_at(0, 0.99, warmup=False) == 0.99


def test_feature_dropout_drops_whole_channels_and_rescales():
    x = torch.rand(64, 16, 3, 3) + 0.5
    assert fx.feature_dropout(x, 0.0, torch.Generator()) is x
    out = fx.feature_dropout(x, 0.5, torch.Generator().manual_seed(0))
    ratio = out / x
    per_channel = ratio.flatten(2)
    assert torch.allclose(per_channel, per_channel[..., :1].expand_as(per_channel))  # one factor per channel
    assert set(per_channel[..., 0].unique().tolist()) == {0.0, 2.0}
    assert 0.4 < float((per_channel[..., 0] == 0).float().mean()) < 0.6
    assert torch.equal(out, fx.feature_dropout(x, 0.5, torch.Generator().manual_seed(0)))


def test_perturbed_loss_without_dropout_is_the_unlabeled_loss_of_the_weak_view():
    import segmentation_models_pytorch as smp

    from selftune.trainable.config import TrainConfig
    from selftune.trainable.methods import create_method
    from selftune.trainable.methods.base import PseudoBatch

    torch.manual_seed(0)
    model = smp.Unet("tu-mobilenetv3_small_050", encoder_weights=None, classes=3).eval()
    weak = torch.randn(2, 3, 32, 32)
    labels = torch.randint(0, 3, (2, 32, 32))
    labels[:, :8] = IGN
    counts = torch.zeros(3, dtype=torch.long)
    batch = PseudoBatch(torch.randn(2, 3, 32, 32), torch.full_like(labels, IGN), counts, counts,
                        weak_images=weak, weak_labels=labels)
    loss_fn = fx.SegmentationLoss(3, ignore_index=IGN)
    cfg = TrainConfig(thresholds=(0.9,) * 3, st_loss_normalization="all_pixels", fp_weight=1.0, fp_dropout=0.0)
    method = create_method(cfg, 3)
    with torch.no_grad():
        got = method.perturbed_loss(model, batch, loss_fn, torch.Generator())
        expected = loss_fn(model(weak), labels) * 0.75  # 3/4 of the pixels are labelled
        dropped = create_method(TrainConfig(thresholds=(0.9,) * 3, st_loss_normalization="all_pixels",
                                            fp_weight=1.0, fp_dropout=0.5), 3)
        perturbed = dropped.perturbed_loss(model, batch, loss_fn, torch.Generator().manual_seed(1))
    assert float(got) == pytest.approx(float(expected), rel=1e-5)
    assert float(perturbed) != pytest.approx(float(expected), rel=1e-3)
