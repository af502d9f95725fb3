"""DiverseHead (method diverse_head) and the mean teacher's heads: the pseudo-label rule on made-up logits, the heads
on smp models (stacked in training, their mean in eval), a frozen head that does not move, bad configs refused by
name, the spaces; end to end: a tiny run that trains, resumes bit for bit and is scored with the heads' mean, heads
that differ after training, the mean teacher and rounds with heads, binary mode."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from selftune.data.particles import generate_particles
from selftune.errors import ConfigError
from selftune.spaces import SpaceContext, check_space
from selftune.trainable import loop
from selftune.trainable.config import TrainConfig
from selftune.trainable.evaluation import score_model_file
from selftune.trainable.heads import MultiHead, agreement, head_logits, multi_head
from selftune.trainable.methods import create_method, get_method
from selftune.trainable.methods.diverse_head.train import diverse_pseudo_labels
from selftune.trainable.model import build_model
from tests.helpers import TINY_CONFIG, TINY_PARTICLES, crash_and_resume, read_metrics, same, same_weights

# Twelve steps: self-training from step 2, dropout in the heads and freezing from step 6 (both random streams in use).
TINY_DH: dict[str, Any] = {
    **TINY_CONFIG, "method": "diverse_head", "max_iters": 12, "eval_every": 4, "st_start_iter": 2,
    "st_rampup_iters": 2, "lr": 1e-3, "diverse_heads": 4, "head_dropout": 0.3, "freeze_fraction": 0.5,
    "freeze_start": 6, "unlabeled_heads": 2, "vote_weight": 1.0,
}


def dh(**changes: Any) -> TrainConfig:
    return TrainConfig.from_dict({**TINY_DH, **changes})


def logits_of(classes: list[list[int]], k: int = 3, strength: float = 1.0) -> torch.Tensor:
    """[1, N, K, 1, P] logits: head n at pixel p puts `strength` on class classes[n][p]."""
    n, p = len(classes), len(classes[0])
    out = torch.zeros(1, n, k, 1, p)
    for i, row in enumerate(classes):
        for j, c in enumerate(row):
            out[0, i, c, 0, j] = strength
    return out


# ---------------------------------------------------------------------------- the pseudo-label rule


def test_the_vote_with_the_summed_logits_weighted_by_vote_weight() -> None:
    # pixel 0: all three heads say 2. pixel 1: two heads say 0, one says 1 with a large logit (the sum's class is 1).
    logits = logits_of([[2, 0], [2, 0], [2, 1]])
    logits[0, 2, 1, 0, 1] = 10.0
    assert logits.sum(dim=1).argmax(dim=1)[0, 0].tolist() == [2, 1]
    # w = 5 (the paper's): 5 + 1 vote for class 1 beats 2 votes for class 0
    assert diverse_pseudo_labels(logits, 5.0)[0, 0].tolist() == [2, 1]
    # w = 0: the vote alone; w = 0.5: 1.5 < 2, still the vote; w = 1: 2 = 2, a tie goes to the lower class, 0
    assert diverse_pseudo_labels(logits, 0.0)[0, 0].tolist() == [2, 0]
    assert diverse_pseudo_labels(logits, 0.5)[0, 0].tolist() == [2, 0]
    assert diverse_pseudo_labels(logits, 1.0)[0, 0].tolist() == [2, 0]
    assert diverse_pseudo_labels(logits, 1.5)[0, 0].tolist() == [2, 1]


def test_the_vote_outvotes_the_sum_only_by_more_than_the_weight() -> None:
    # ten heads: six say 0 and four say 1, but the four are confident, so the summed logits say 1
    logits = logits_of([[0]] * 6 + [[1]] * 4)
    logits[0, 6:, 1] = 5.0
    assert logits.sum(dim=1).argmax(dim=1).item() == 1
    assert diverse_pseudo_labels(logits, 1.0).item() == 0  # 6 > 1 + 4
    assert diverse_pseudo_labels(logits, 5.0).item() == 1  # 6 < 5 + 4 (the paper's weight)
    assert diverse_pseudo_labels(logits, 2.0).item() == 0  # 6 = 2 + 4: a tie goes to the lower class index


def test_a_binary_channel_votes_as_two_classes() -> None:
    logits = torch.tensor([-1.0, -2.0, 3.0]).view(1, 3, 1, 1, 1)  # heads: 0, 0, 1; sum 0 -> class 0 (0 is not > 0)
    assert diverse_pseudo_labels(logits, 0.0).item() == 0
    logits = torch.tensor([-1.0, -0.5, 3.0]).view(1, 3, 1, 1, 1)  # sum 1.5 -> class 1; votes 2 vs 1
    assert diverse_pseudo_labels(logits, 0.0).item() == 0
    assert diverse_pseudo_labels(logits, 5.0).item() == 1


def test_agreement_is_the_share_of_heads_voting_for_a_class() -> None:
    logits = logits_of([[2, 0], [2, 1], [1, 1], [2, 1]])
    assert agreement(logits, torch.tensor([[[2, 1]]]))[0, 0].tolist() == [0.75, 0.75]
    assert agreement(logits[:, :1], torch.tensor([[[2, 2]]]))[0, 0].tolist() == [1.0, 0.0]


# ---------------------------------------------------------------------------- the heads on smp models


@pytest.mark.parametrize("arch,decoder", [("Unet", [64, 32, 16, 16, 16]), ("DeepLabV3Plus", [32])])
def test_heads_replace_the_segmentation_head_on_any_architecture(arch: str, decoder: Any) -> None:
    cfg = TrainConfig.from_dict({**TINY_CONFIG, "arch": arch, "decoder_channels": decoder or [],
                                 "method": "diverse_head", "diverse_heads": 3, "head_dropout": 0.5})
    torch.manual_seed(0)
    model = build_model(cfg, 7)
    # the encoder and decoder start as with smp's one head: the heads draw their init last
    torch.manual_seed(0)
    one = build_model(cfg.replace(method="supervised", diverse_heads=10, head_dropout=0.0), 7)
    body = {k: v for k, v in one.state_dict().items() if not k.startswith("segmentation_head.")}
    assert body and all(torch.equal(v, model.state_dict()[k]) for k, v in body.items())
    heads = multi_head(model)
    assert isinstance(heads, MultiHead) and len(heads.heads) == 3
    block = heads.heads[0][0]  # conv3x3 + BN + ReLU + dropout + conv1x1, then smp's upsampling and activation
    assert [type(m).__name__ for m in block] == ["Conv2d", "BatchNorm2d", "ReLU", "HeadDropout", "Conv2d"]
    assert block[0].kernel_size == (3, 3) and block[-1].kernel_size == (1, 1) and block[-1].out_channels == 7
    x = torch.randn(2, 3, 32, 32)
    model.train()
    assert model(x).shape == (2, 3, 7, 32, 32)
    model.eval()
    with torch.no_grad():
        stacked = head_logits(model, x)
        assert stacked.shape == (2, 3, 7, 32, 32)
        assert torch.allclose(model(x), stacked.mean(dim=1), atol=1e-6)


def test_the_mean_teacher_keeps_smp_s_head_with_one_head_and_gets_heads_with_more() -> None:
    one = build_model(TrainConfig.from_dict(TINY_CONFIG), 7)
    assert multi_head(one) is None and "segmentation_head.0.weight" in one.state_dict()
    three = build_model(TrainConfig.from_dict({**TINY_CONFIG, "heads": 3}), 7)
    assert len(multi_head(three).heads) == 3  # type: ignore[union-attr]
    assert not any("HeadDropout" in type(m).__name__ for m in three.modules())


def test_a_frozen_head_s_weights_and_batchnorm_statistics_do_not_move() -> None:
    """AdamW with weight decay and momentum from earlier steps: a frozen head stays bit for bit, the others move."""
    cfg = dh(diverse_heads=4, freeze_fraction=0.5, freeze_start=1, unlabeled_heads=1, head_dropout=0.0)
    torch.manual_seed(0)
    model = build_model(cfg, 7).train()
    method = create_method(cfg, 7)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 7, (4, 32, 32))
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(it: int) -> None:
        method.before_step(model, it)
        opt.zero_grad(set_to_none=True)
        method.supervised_loss(model(x), y, loss_fn).backward()
        opt.step()

    step(0)  # every head learns (freezing starts at 1): momentum for all of them
    assert method.frozen == ()
    heads = multi_head(model).heads  # type: ignore[union-attr]
    before = [{k: v.clone() for k, v in h.state_dict().items()} for h in heads]
    step(1)
    assert len(method.frozen) == 2 and set(method.learners).isdisjoint(method.frozen)
    for i, h in enumerate(heads):
        moved = {k for k, v in h.state_dict().items() if not torch.equal(v, before[i][k])}
        if i in method.frozen:
            assert moved == set(), f"frozen head {i} moved: {moved}"
        else:  # weights, BN weight and bias, running mean and var (and the batch counter) all move
            assert {"0.0.weight", "0.1.weight", "0.1.running_mean", "0.1.running_var", "0.3.weight"} <= moved
    step(2)  # a new draw: what was frozen at step 1 need not be now; every head is free again at some step
    assert all(p.requires_grad for i, h in enumerate(heads) if i not in method.frozen for p in h.parameters())


# ---------------------------------------------------------------------------- bad configs


@pytest.mark.parametrize("changes,message", [
    (dict(diverse_heads=0), r"diverse_heads must be in \[1, 32\], got 0"),
    (dict(freeze_fraction=1.0), r"freeze_fraction must be in \[0, 1\), got 1\.0"),
    (dict(freeze_fraction=-0.1), r"freeze_fraction must be in \[0, 1\], got -0\.1"),
    (dict(head_dropout=1.0), r"head_dropout must be in \[0, 1\), got 1\.0"),
    (dict(diverse_heads=1, freeze_fraction=0.0, head_dropout=0.0, unlabeled_heads=1), None),  # allowed
    (dict(diverse_heads=1, freeze_fraction=0.0, head_dropout=0.5), r"head_dropout is 0\.5, but diverse_heads is 1"),
    (dict(diverse_heads=4, freeze_fraction=0.2), r"freeze_fraction 0\.2 of diverse_heads 4 freezes no head"),
    (dict(freeze_start=12), r"freeze_start 12 is not shorter than the run"),
    (dict(unlabeled_heads=3), r"unlabeled_heads is 3, but only 2 of the 4 heads train at a step \(2 frozen\)"),
    (dict(vote_weight=-1.0), r"vote_weight must be a finite number >= 0"),
    (dict(teacher_checkpoint="x.pt"), r"teacher_checkpoint is set, but method diverse_head pseudo-labels with its"),
    (dict(strong_aug=True), r"strong_aug is True, but method diverse_head does not use it"),
    (dict(heads=2), r"heads is 2, but only method ema_self_training or rounds uses it"),
    (dict(method="ema_self_training", diverse_heads=4), r"diverse_heads is 4, but only method diverse_head uses it"),
    (dict(method="ema_self_training", heads=0), r"heads must be in \[1, 16\], got 0"),
    (dict(method="rounds", head_agreement=0.5), r"head_agreement is 0\.5, but heads is 1"),
    (dict(method="s4gan", heads=2), r"heads is 2, but only method ema_self_training or rounds uses it"),
])
def test_bad_combinations_are_refused_by_name(changes: dict[str, Any], message: str | None) -> None:
    base = {k: v for k, v in TINY_DH.items() if k not in ("method", "diverse_heads", "head_dropout",
                                                           "freeze_fraction", "freeze_start", "unlabeled_heads",
                                                           "vote_weight")} if "method" in changes else TINY_DH
    if message is None:
        TrainConfig.from_dict({**base, **changes})
        return
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict({**base, **changes})


# ---------------------------------------------------------------------------- the spaces


def test_its_space_and_the_methods_space_give_configs_that_pass_the_checks() -> None:
    base = TrainConfig.from_dict({**TINY_CONFIG, "max_iters": 300, "eval_every": 25})
    ctx = SpaceContext(num_classes=7, max_iters=300, eval_every=25, arch="Unet")
    report = check_space("diverse_head", base, ctx, passes=60)
    assert {"diverse_heads", "head_dropout", "freeze_fraction", "freeze_start", "vote_weight", "unlabeled_heads",
            "st_weight"} <= report.params.keys()
    assert report.constants == {"method": "diverse_head"}
    methods = check_space("methods", base, ctx, passes=120)
    assert "diverse_head" in methods.params["method"].choices
    assert {"heads", "head_agreement", "diverse_heads"} <= methods.params.keys()


# ---------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def unbroken(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("dh") / "unbroken"
    result = loop.train(dh(), tiny_data, run, progress=False)
    assert result.status == "completed" and result.iterations == 12, result.message
    return run


def test_a_tiny_run_trains_and_logs_the_heads(unbroken: Path) -> None:
    rows = read_metrics(unbroken)
    assert [r["iteration"] for r in rows] == [4, 8, 12]
    assert all(r["loss_st"] > 0 and 0 < r["head_agreement"] <= 1 and 0 <= r["vote_changed"] <= 1 for r in rows)
    assert [r["frozen_heads"] for r in rows] == [0.0, 2.0, 2.0]  # freezing from step 6
    assert rows[-1]["st_ratio"] == 1.0  # every pixel of the vote is a pseudo-label


def test_a_killed_run_resumes_to_the_same_weights(unbroken: Path, tiny_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert crash_and_resume(dh(), tiny_data, run, at=4).status == "completed"
    assert same(read_metrics(run), read_metrics(unbroken))
    assert same_weights(run, unbroken)


def test_it_is_scored_with_the_heads_mean(unbroken: Path, tiny_data: Path) -> None:
    best = unbroken / "best_model_ema.pt"
    weights = torch.load(best, weights_only=True)["model"]
    assert any(k.startswith("segmentation_head.heads.3.") for k in weights)  # the four heads are saved
    scores = score_model_file(best, tiny_data, "val", device="cpu")  # what `selftune evaluate` and the verdict use
    model = build_model(dh(), 7)
    model.load_state_dict(weights)
    model.eval()
    from selftune.data import LabeledDataset, read_classes
    from selftune.trainable.device import DeviceBatch

    ds = LabeledDataset(tiny_data, "val", read_classes(tiny_data))
    x = DeviceBatch(torch.device("cpu"), torch.contiguous_format, 255).images(
        torch.stack([ds[i][0] for i in range(len(ds))]))
    with torch.no_grad():
        mean = head_logits(model, x).mean(dim=1)
        assert torch.allclose(model(x), mean, atol=1e-5)
    from selftune.trainable.functional import confusion_matrix, iou_per_class, mean_iou

    y = torch.stack([ds[i][1] for i in range(len(ds))])
    assert scores.miou == pytest.approx(mean_iou(iou_per_class(confusion_matrix(mean.argmax(1), y, 7))), abs=1e-9)


def test_the_heads_differ_after_training(unbroken: Path, tiny_data: Path) -> None:
    model = build_model(dh(), 7)
    model.load_state_dict(torch.load(unbroken / "checkpoint" / "state.pt", weights_only=True)["model"])
    model.eval()
    from selftune.data import LabeledDataset, read_classes
    from selftune.trainable.device import DeviceBatch

    ds = LabeledDataset(tiny_data, "val", read_classes(tiny_data))
    x = DeviceBatch(torch.device("cpu"), torch.contiguous_format, 255).images(
        torch.stack([ds[i][0] for i in range(len(ds))]))
    with torch.no_grad():
        classes = head_logits(model, x).argmax(dim=2)  # [B, N, H, W]
    disagree = (classes != classes[:, :1]).any(dim=1)
    assert disagree.float().mean() > 0, "every head predicts the same class at every pixel"


def test_the_mean_teacher_and_rounds_train_with_heads(tiny_data: Path, tmp_path: Path) -> None:
    """The mean teacher with 2 heads and the agreement mask; rounds from a one-head first round (a shared stage):
    the warm student takes its encoder and decoder, its heads start fresh."""
    common = {**TINY_CONFIG, "max_iters": 8, "eval_every": 4, "st_start_iter": 0, "st_rampup_iters": 1,
              "warmup_iters": 0, "thresholds": [0.0]}
    mt = TrainConfig.from_dict({**common, "heads": 2, "head_agreement": 1.0})
    assert loop.train(mt, tiny_data, tmp_path / "mt", progress=False).status == "completed"
    rows = read_metrics(tmp_path / "mt")
    assert 0 < rows[-1]["st_ratio"] < 1  # threshold 0 accepts all; the heads' agreement rejects some
    stage = tmp_path / "stage"
    assert loop.train(TrainConfig.from_dict({**common, "method": "supervised"}), tiny_data, stage,
                      progress=False).status == "completed"
    rounds = TrainConfig.from_dict({**common, "method": "rounds", "heads": 3, "teacher_checkpoint": str(stage)})
    with pytest.warns(UserWarning, match=r"has one segmentation head: its encoder and decoder are loaded"):
        assert loop.train(rounds, tiny_data, tmp_path / "rounds", progress=False).status == "completed"


def test_the_agreement_mask_rejects_pixels_the_heads_split_on() -> None:
    class Fixed(nn.Module):  # two "heads": the same class at pixel 0, different ones at pixel 1
        segmentation_head = MultiHead([nn.Identity(), nn.Identity()])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = logits_of([[1, 0], [1, 2]]).expand(len(x), -1, -1, -1, -1) * 4
            return out if self.segmentation_head.stacked else out.mean(dim=1)

    cfg = TrainConfig.from_dict({**TINY_CONFIG, "heads": 2, "head_agreement": 1.0, "thresholds": [0.0]})
    method = create_method(cfg.for_classes(3), 3)
    pl = method.label(Fixed().eval(), torch.zeros(1, 3, 1, 2), 0)
    assert pl.predicted[0, 0].tolist() == [1, 0] and pl.labels[0, 0].tolist() == [1, 255]
    assert get_method("rounds").shares == ("heads", "head_agreement")


def test_binary_mode_trains_diverse_head(tmp_path_factory: pytest.TempPathFactory) -> None:
    data = generate_particles(tmp_path_factory.mktemp("particles") / "data", TINY_PARTICLES)
    cfg = dh(binary=True, max_iters=6, eval_every=3, freeze_start=3, thresholds=[0.5], ce_weight=1.0)
    result = loop.train(cfg, data, tmp_path_factory.mktemp("binary") / "run", progress=False)
    assert result.status == "completed"
    assert 0 < read_metrics(result.out_dir)[-1]["head_agreement"] <= 1


def test_a_dpt_style_head_is_split_and_an_unknown_head_is_refused_by_name() -> None:
    from selftune.trainable.heads import replace_head

    class DPTLike(nn.Module):  # smp's DPTSegmentationHead: a Sequential `head`, then its own upsampling in forward
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 5, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return nn.functional.interpolate(self.head(x), scale_factor=2)

    model = nn.Module()
    model.segmentation_head = DPTLike()
    replace_head(model, 3, 0.0, "DPT")
    heads = multi_head(model)
    assert heads is not None and len(heads.heads) == 3 and heads.heads[0].head[-1].out_channels == 5
    assert heads.train()(torch.randn(2, 8, 4, 4)).shape == (2, 3, 5, 8, 8)
    model.segmentation_head = nn.Identity()
    with pytest.raises(ConfigError, match=r"arch 'Odd' has a segmentation head of its own kind \(Identity\)"):
        replace_head(model, 2, 0.0, "Odd")


def test_its_step_is_dtype_correct_under_bf16_autocast() -> None:
    """The loop's AMP path on CPU: the heads' dropout, the vote and the losses under bf16 autocast, then backward."""
    cfg = dh(head_dropout=0.5)
    torch.manual_seed(0)
    model = build_model(cfg, 7).train()
    method = create_method(cfg, 7)
    method.before_step(model, 7)  # freezing is on: 2 of 4 heads
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 7, (2, 32, 32))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
        pseudo = method.pseudo_batch(model, x[2:], 7, torch.Generator())
        loss = method.supervised_loss(logits[:2], y, torch.nn.CrossEntropyLoss()) + method.unlabeled_loss(
            logits[2:], pseudo, torch.nn.CrossEntropyLoss())
    assert logits.dtype == torch.bfloat16 and pseudo.labels.dtype == torch.int64 and torch.isfinite(loss)
    loss.backward()
    learned = {i for i, h in enumerate(multi_head(model).heads) if h[0][0].weight.grad is not None}  # type: ignore[union-attr]
    assert learned == {0, 1, 2, 3} - set(method.frozen)
