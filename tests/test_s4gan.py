"""s4GAN: the discriminator's input, feature matching by hand, the image gate and ST_Count on tiny tensors; the
discriminator's step, schedules, state round trip and autocast; bad config; its spaces and bench arm; end to end
with exact resume once the loop calls the method's hooks."""

from __future__ import annotations

import importlib.util
import inspect
import io
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from selftune.errors import ConfigError
from selftune.spaces import SPACES, SpaceContext, call_space, check_space
from selftune.trainable import loop
from selftune.trainable.config import TrainConfig, demo_config
from selftune.trainable.methods import create_method, get_method
from selftune.trainable.methods.base import Method, PseudoBatch
from selftune.trainable.methods.s4gan import train as s4gan
from tests.helpers import crash_and_resume, read_metrics, same, same_weights, tiny_config

ROOT = Path(__file__).resolve().parents[1]
K = 3  # classes in the tiny-tensor tests


def cfg_of(**changes: Any) -> TrainConfig:
    return TrainConfig.from_dict({"method": "s4gan", "thresholds": [0.5] * K, "max_iters": 20, "st_start_iter": 0,
                                  "warmup_iters": 0, "d_width": 8, **changes})


class FixedDisc(nn.Module):
    """A stand-in discriminator whose confidence on image b is `confidences[b]` (features: the input's mean)."""

    def __init__(self, confidences: list[float]) -> None:
        super().__init__()
        self.logits = torch.logit(torch.tensor(confidences))
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.logits[: len(x)] + 0 * self.weight, x.mean(dim=(2, 3))


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Conv2d(3, K, 1)


# ---------------------------------------------------------------------------- pure functions


def test_the_discriminator_sees_probabilities_then_the_image() -> None:
    masks = torch.tensor([[[0, 2], [1, 255]]])
    hot = s4gan.one_hot(masks, K, ignore_index=255)
    assert hot.shape == (1, K, 2, 2) and hot.dtype == torch.float32
    assert hot[0, :, 0, 0].tolist() == [1, 0, 0] and hot[0, :, 0, 1].tolist() == [0, 0, 1]
    assert hot[0, :, 1, 1].tolist() == [0, 0, 0]  # an ignored pixel is no class at all (s4GAN's one-hot)
    images = torch.full((1, 3, 2, 2), 7.0)
    x = s4gan.disc_input(images, hot)
    assert x.shape == (1, K + 3, 2, 2)
    assert torch.equal(x[:, :K], hot) and torch.equal(x[:, K:], images)
    logits, features = s4gan.Discriminator(K + 3, width=4)(torch.randn(2, K + 3, 32, 48))
    assert logits.shape == (2,) and features.shape == (2, 32)  # any size: global average pool


def test_feature_matching_against_a_hand_computation() -> None:
    real = torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # batch mean [2, 3]
    fake = torch.tensor([[0.0, 0.0], [2.0, 2.0], [1.0, 1.0]])  # batch mean [1, 1]: other batch sizes are fine
    assert s4gan.feature_matching_loss(real, fake).item() == pytest.approx((1 + 2) / 2)
    assert s4gan.feature_matching_loss(real, real).item() == 0.0


def test_discriminator_loss_is_bce_on_logits() -> None:
    zero = torch.zeros(4)
    assert s4gan.discriminator_loss(zero, zero).item() == pytest.approx(0.6931, abs=1e-4)  # chance: log 2
    good = s4gan.discriminator_loss(torch.full((2,), 10.0), torch.full((3,), -10.0)).item()
    bad = s4gan.discriminator_loss(torch.full((2,), -10.0), torch.full((3,), 10.0)).item()
    assert good < 1e-3 and bad == pytest.approx(10.0, abs=1e-3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert s4gan.discriminator_loss(zero.bfloat16(), zero.bfloat16()).dtype == torch.float32


def test_the_gate_passes_whole_images_above_the_threshold() -> None:
    confidence = torch.tensor([0.1, 0.2, 0.25, 0.9])
    assert s4gan.image_gate(confidence, 0.2).tolist() == [False, False, True, True]  # s4GAN's >, not >=
    assert s4gan.image_gate(confidence, 0.0).all() and not s4gan.image_gate(confidence, 1.0).any()
    probs = torch.tensor([[[[0.2, 0.7]], [[0.5, 0.1]], [[0.3, 0.2]]]]).repeat(2, 1, 1, 1)  # [2, 3, 1, 2]
    pl = s4gan.gated_pseudo_labels(probs, torch.tensor([True, False]), ignore_index=255)
    assert pl.labels.tolist() == [[[1, 0]], [[255, 255]]]  # argmax; the rejected image is ignored throughout
    assert pl.predicted.tolist() == [[[1, 0]], [[1, 0]]] and pl.accepted.tolist() == [[[True, True]], [[False, False]]]


def test_schedules_of_the_gate_the_st_weight_and_the_discriminator_lr() -> None:
    kw = dict(threshold=0.2, start=0.05, start_iter=10, max_iters=111)  # the last step is 110
    assert s4gan.gate_threshold_at(0, schedule="constant", **kw) == 0.2
    assert [s4gan.gate_threshold_at(it, schedule="linear", **kw) for it in (0, 10, 60, 110, 200)] == pytest.approx(
        [0.05, 0.05, 0.125, 0.2, 0.2])
    st = dict(weight=2.0, start_iter=10, rampup_iters=4)
    assert [s4gan.st_weight_at(it, start_fraction=0.1, **st) for it in (9, 10, 13, 50)] == pytest.approx(
        [0.0, 2.0 * (0.1 + 0.9 * 0.25), 2.0, 2.0])
    assert s4gan.st_weight_at(11, start_fraction=0.0, **st) == pytest.approx(1.0)  # 0: the other methods' ramp
    lr = dict(lr_d=1e-4, warmup_iters=10, max_iters=110, poly_power=0.9)
    assert s4gan.d_lr_at(9, schedule="poly", **lr) == 0.0
    assert s4gan.d_lr_at(10, schedule="poly", **lr) == pytest.approx(1e-4)  # no LR warmup of its own
    assert s4gan.d_lr_at(60, schedule="cosine", **lr) == pytest.approx(0.5e-4)


# ---------------------------------------------------------------------------- the method on tiny tensors


def test_st_count_is_images_accepted_per_batch() -> None:
    method = create_method(cfg_of(threshold_st=0.5), K)
    adv = method.adversary
    adv.disc = FixedDisc([0.9, 0.2, 0.7, 0.4])
    adv.optimizer = torch.optim.Adam(adv.disc.parameters())
    net, gen = tiny_net(), torch.Generator()
    images = torch.randn(4, 3, 2, 2)
    batch = method.pseudo_batch(net, images, 5, gen)
    assert isinstance(batch, PseudoBatch) and torch.equal(batch.images, images)
    kept = (batch.labels != 255).all(dim=(1, 2)).tolist()
    assert kept == [True, False, True, False] and not (batch.labels[[1, 3]] != 255).any()
    assert batch.accepted.sum() == 2 * 4 and batch.predicted.sum() == 4 * 4  # pixels of the accepted images
    method.pseudo_batch(net, images[:2], 6, gen)  # one more batch: 1 of 2 images accepted
    method.label(net, images, 6, update=False)  # the panel's view: not counted
    metrics = method.window_metrics()
    assert metrics["st_images"] == pytest.approx((2 + 1) / 2)
    assert metrics["d_confidence"] == pytest.approx((0.9 + 0.2 + 0.7 + 0.4 + 0.9 + 0.2) / 6, abs=1e-6)
    assert metrics["threshold_st"] == 0.5
    assert method.window_metrics()["st_images"] == 0.0  # a new window
    assert method.thresholds_at(3) == [0.5] * K  # the loop's per-class threshold metrics show the gate


def _step(method: Any, net: nn.Module, it: int, n_u: int = 2) -> torch.Tensor:
    """One training step's adversarial part as the loop runs it: gate, extra loss, backward, the discriminator's step."""
    gen = torch.Generator().manual_seed(it)
    images, masks = torch.randn(2, 3, 16, 16, generator=gen), torch.randint(0, K, (2, 16, 16), generator=gen)
    images_u = torch.randn(n_u, 3, 16, 16, generator=gen)
    method.pseudo_batch(net, images_u, it, gen)
    logits = net(torch.cat([images, images_u]))
    loss = method.extra_loss(images, masks, logits[:2], images_u, logits[2:], it)
    if loss.requires_grad:
        loss.backward()
    method.after_step(it)
    return loss


def test_feature_matching_trains_the_network_and_the_discriminator_steps_after_its_warmup() -> None:
    method = create_method(cfg_of(d_warmup_iters=2, lambda_fm=0.5, lr_d=1e-3), K)
    net = tiny_net()
    assert _step(method, net, 0).item() == 0.0 and net.weight.grad is None  # warmup: no adversarial training
    disc = method.adversary.disc
    before = {k: v.clone() for k, v in disc.state_dict().items()}
    _step(method, net, 1)
    assert all(torch.equal(before[k], v) for k, v in disc.state_dict().items())  # no step during the warmup
    loss = _step(method, net, 2)
    assert loss.item() > 0 and net.weight.grad is not None and net.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in disc.parameters())  # from its own step, not from the network's loss
    assert not any(torch.equal(before[k], v) for k, v in disc.state_dict().items())  # it stepped
    assert not any(p.requires_grad for p in disc.parameters())  # frozen again outside its step
    metrics = method.window_metrics()
    assert metrics["loss_fm"] == pytest.approx(loss.item() / 0.5)  # unweighted, mean over adversarial steps
    assert 0 < metrics["loss_d"] < 5 and metrics["lr_d"] == pytest.approx(1e-3 * (1 + torch.cos(
        torch.tensor(0.0)).item()) / 2)


def test_without_unlabelled_data_the_fake_input_is_the_labelled_prediction() -> None:
    method = create_method(cfg_of(), K)
    net = tiny_net()
    images, masks = torch.randn(2, 3, 32, 32), torch.randint(0, K, (2, 32, 32))
    loss = method.extra_loss(images, masks, net(images), None, None, 0)
    loss.backward()
    assert net.weight.grad is not None
    real, fake = method.adversary.stash
    assert torch.equal(real[:, :K], s4gan.one_hot(masks, K, 255)) and torch.equal(real[:, K:], images)
    assert torch.equal(fake[:, K:], images) and not fake.requires_grad
    method.after_step(0)
    assert method.adversary.stash is None


def test_other_methods_hooks_are_no_ops() -> None:
    method = Method(TrainConfig(), 7)  # method supervised's torch class
    logits = torch.randn(2, 7, 4, 4)
    assert method.extra_loss(torch.zeros(2, 3, 4, 4), torch.zeros(2, 4, 4), logits, None, None, 0).item() == 0.0
    assert method.after_step(0) is None and method.window_metrics() == {}
    assert get_method("s4gan").needs_unlabeled


def test_state_round_trips_through_a_weights_only_load() -> None:
    def make() -> Any:
        return create_method(cfg_of(seed=3), K)

    method, net = make(), tiny_net()
    assert make().state_dict() == {}  # nothing before the first use
    for it in range(3):
        _step(method, net, it)
    buf = io.BytesIO()
    torch.save(method.state_dict(), buf)
    buf.seek(0)
    resumed = make()
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    assert resumed.state_dict().keys() == {"discriminator", "optimizer"}  # passed on before it is built
    net_b = tiny_net()
    net_b.load_state_dict(net.state_dict())
    for it in range(3, 5):
        _step(method, net, it)
        _step(resumed, net_b, it)
    a, b = method.state_dict(), resumed.state_dict()
    assert all(torch.equal(a["discriminator"][k], b["discriminator"][k]) for k in a["discriminator"])
    fresh = make()
    _step(fresh, tiny_net(), 0)  # the same seed builds the same discriminator, whatever the global RNG did
    torch.manual_seed(123)
    other = make()
    _step(other, tiny_net(), 0)
    assert all(torch.equal(v, other.state_dict()["discriminator"][k])
               for k, v in fresh.state_dict()["discriminator"].items())


def test_any_smp_architecture() -> None:
    from selftune.trainable.model import build_model

    for arch in ("Unet", "FPN"):
        cfg = cfg_of(arch=arch, encoder="tu-mobilenetv3_small_050", crop_size=32, thresholds=[0.5] * 7)
        method, net = create_method(cfg, 7), build_model(cfg, 7)
        images, masks, images_u = torch.randn(2, 3, 32, 32), torch.randint(0, 7, (2, 32, 32)), torch.randn(2, 3, 32, 32)
        batch = method.pseudo_batch(net.eval(), images_u, 0, torch.Generator())
        logits = net.train()(torch.cat([images, batch.images]))
        loss = method.extra_loss(images, masks, logits[:2], batch.images, logits[2:], 0)
        loss.backward()
        method.after_step(0)
        assert torch.isfinite(loss) and method.window_metrics()["loss_d"] > 0


def test_autocast_is_safe() -> None:
    method, net = create_method(cfg_of(), K), tiny_net()
    images, masks, images_u = torch.randn(2, 3, 16, 16), torch.randint(0, K, (2, 16, 16)), torch.randn(2, 3, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the loop's AMP context, here on the CPU
        batch = method.pseudo_batch(net, images_u, 0, torch.Generator())
        logits = net(torch.cat([images, images_u]))
        loss = method.extra_loss(images, masks, logits[:2], images_u, logits[2:], 0)
        method.after_step(0)  # the discriminator's step turns autocast off for itself
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32 and torch.isfinite(loss)
    assert batch.labels.dtype == torch.int64
    loss.backward()
    assert torch.isfinite(torch.tensor(method.window_metrics()["loss_d"]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_cuda_with_amp() -> None:
    method, net = create_method(cfg_of(), K), tiny_net().cuda()
    images, masks, images_u = (torch.randn(2, 3, 32, 32, device="cuda"), torch.randint(0, K, (2, 32, 32), device="cuda"),
                               torch.randn(2, 3, 32, 32, device="cuda"))
    for dtype in (torch.bfloat16, torch.float16):
        with torch.autocast("cuda", dtype=dtype):
            method.pseudo_batch(net, images_u, 0, torch.Generator())
            logits = net(torch.cat([images, images_u]))
            loss = method.extra_loss(images, masks, logits[:2], images_u, logits[2:], 0)
        loss.backward()
        method.after_step(0)
    assert next(method.adversary.disc.parameters()).is_cuda
    assert all(v.device.type == "cpu" for v in method.state_dict()["discriminator"].values())


# ---------------------------------------------------------------------------- bad config, spaces, bench


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        (dict(lambda_fm=-0.1), r"lambda_fm must be a finite number >= 0, got -0.1"),
        (dict(threshold_st=1.5), r"threshold_st must be in \[0, 1\], got 1.5"),
        (dict(threshold_st_start=-0.1), r"threshold_st_start must be in \[0, 1\], got -0.1"),
        (dict(threshold_st_schedule="cosine"), r"threshold_st_schedule must be one of constant, linear; got 'cosine'"),
        (dict(lr_d=0), r"lr_d must be a positive number, got 0"),
        (dict(d_width=0), r"d_width must be >= 1, got 0"),
        (dict(d_warmup_iters=20), r"d_warmup_iters 20 is not shorter than the run \(max_iters 20\)"),
        (dict(min_accept_ratio=0.2), r"min_accept_ratio is 0.2, but method s4gan does not use it"),
        (dict(distribution_alignment=True), r"distribution_alignment is True, but method s4gan does not use it"),
        (dict(fp_weight=1.0), r"fp_weight is 1.0, but method s4gan does not use it"),
        (dict(strong_aug=True), r"strong_aug is True, but method s4gan does not use it"),
        (dict(threshold_schedule="linear"), r"threshold_schedule is 'linear', but method s4gan does not use it"),
        (dict(rounds=3), r"rounds is 3, but only method rounds uses it \(method is 's4gan'\)"),
        (dict(round_iters=[10, 10]), r"round_iters is \(10, 10\), but only method rounds uses it"),
        (dict(teacher_checkpoint="x.pt"), r"teacher_checkpoint is set, but method s4gan pseudo-labels with its own"),
    ],
)
def test_bad_s4gan_config_is_one_error_naming_the_key_and_value(changes: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        cfg_of(**changes)


def test_other_methods_keep_their_knobs_and_refuse_s4gans() -> None:
    cfg = TrainConfig.from_dict({"min_accept_ratio": 0.2, "strong_aug": True})
    assert cfg.method == "ema_self_training"  # the s4gan-only checks do not apply
    for method in ("supervised", "ema_self_training", "rounds"):
        with pytest.raises(ConfigError, match=rf"lambda_fm is 0.5, but only method s4gan uses it \(method is '{method}'\)"):
            TrainConfig.from_dict({"method": method, "lambda_fm": 0.5})
    with pytest.raises(ConfigError, match=r"d_warmup_iters is 1000000, but only method s4gan uses it"):
        TrainConfig.from_dict({"d_warmup_iters": 10**6})


def test_a_supervised_stage_or_control_of_an_s4gan_base_drops_its_knobs() -> None:
    base = TrainConfig.from_dict({"method": "s4gan", "lambda_fm": 0.5, "d_warmup_iters": 40, "max_iters": 100})
    control = base.as_supervised(max_iters=50)
    assert (control.method, control.max_iters, control.lambda_fm, control.d_warmup_iters) == ("supervised", 50, 0.1, 0)
    assert control.lr == base.lr and control.arch == base.arch


def test_the_s4gan_space_and_its_branch_of_the_methods_space() -> None:
    import optuna

    ctx = SpaceContext(num_classes=7, max_iters=1200, eval_every=50)
    knobs = {"lr_d", "lambda_fm", "threshold_st", "threshold_st_schedule", "threshold_st_start", "d_warmup_iters",
             "st_weight"}
    report = check_space("s4gan", demo_config(), ctx)
    assert report.constants == {"method": "s4gan"}
    assert knobs | {"lr", "warmup_iters", "patience"} <= report.params.keys()
    methods = check_space("methods", TrainConfig.from_dict(tiny_config()), SpaceContext(7, 40, 10))
    assert "s4gan" in methods.params["method"].choices and knobs <= methods.params.keys()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(40):
        trial = study.ask()
        call_space(SPACES["methods"], trial, ctx)
        method = trial.params["method"]
        assert (method == "s4gan") == ("lambda_fm" in trial.params)  # s4GAN's knobs only in its branch
        if method == "s4gan":
            seen.add(trial.params["threshold_st_schedule"])
            assert ("threshold_st_start" in trial.params) == (trial.params["threshold_st_schedule"] == "linear")
            assert "min_accept_ratio" not in trial.params and "strong_aug" not in trial.params
        study.tell(trial, 0.0)
    assert seen == {"constant", "linear"}


def _bench() -> Any:
    spec = importlib.util.spec_from_file_location("demo_fairness", ROOT / "bench" / "demo_fairness.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_bench_s4gan_arm_runs_method_s4gan_with_its_own_settings(tmp_path: Path, monkeypatch) -> None:
    bench = _bench()
    assert "s4gan" in bench.ARMS
    calls = []

    def fake_run(cmd: list[str], **kwargs: Any) -> Any:
        calls.append(cmd)
        out = Path(cmd[cmd.index("--out") + 1])
        out.mkdir(parents=True)
        (out / "metrics.jsonl").write_text(json.dumps(dict(iteration=10, val_miou=0.5, test_miou=0.4,
                                                           status="completed")) + "\n")
        return type("Done", (), {"returncode": 0, "stderr": ""})()

    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    row = bench.run("s4gan", 0, tmp_path, tmp_path / "runs", 0, bench.ST_SETTINGS,
                    {**bench.S4GAN_SETTINGS, "lambda_fm": "0.3"}, {})
    assert row["test_at_best_val"] == 0.4
    sets = [calls[0][i + 1] for i, a in enumerate(calls[0]) if a == "--set"]
    assert "method=s4gan" in sets and "lambda_fm=0.3" in sets and "d_warmup_iters=40" in sets
    assert not any(s.startswith(("thresholds=", "strong_aug=")) for s in sets)  # not the mean teacher's settings
    cfg = TrainConfig.from_dict({**demo_config().to_dict(), "method": "s4gan",
                                 **{k: json.loads(v) if k != "threshold_st_schedule" else v
                                    for k, v in bench.S4GAN_SETTINGS.items()}})
    assert cfg.d_warmup_iters < 300  # valid for --quick's 300 iterations too


# ---------------------------------------------------------------------------- end to end (needs the loop's hooks)

HOOKED = "extra_loss" in inspect.getsource(loop) and "after_step" in inspect.getsource(loop)
needs_hooks = pytest.mark.skipif(not HOOKED, reason="selftune/trainable/loop.py does not call method.extra_loss / "
                                 "after_step / window_metrics yet (see the s4GAN issue's loop lines)")
TINY = tiny_config(method="s4gan", max_iters=12, eval_every=4, st_start_iter=2, st_rampup_iters=2, lr=1e-3,
                   d_warmup_iters=1, lr_d=1e-3, threshold_st_schedule="linear", threshold_st_start=0.0,
                   threshold_st=0.4, st_weight_start=0.1, teacher_tta="flip", d_width=8)


@needs_hooks
def test_end_to_end_with_exact_resume(tiny_data: Path, tmp_path: Path) -> None:
    """A run logs s4GAN's metrics; stopped after the checkpoint at 8 and resumed, it ends bit for bit the same,
    the discriminator and its optimizer included."""
    cfg = TrainConfig.from_dict(TINY)
    unbroken = tmp_path / "unbroken"
    result = loop.train(cfg, tiny_data, unbroken, progress=False)
    assert result.status == "completed" and result.iterations == 12
    rows = read_metrics(unbroken)
    for row in rows:
        assert {"loss_fm", "loss_d", "st_images", "d_confidence", "threshold_st", "lr_d", "loss_sup", "loss_st",
                "lr"} <= row.keys()
    assert all(r["loss_d"] > 0 and r["lr_d"] > 0 for r in rows) and rows[-1]["threshold_st"] == pytest.approx(0.4)
    state = torch.load(unbroken / "checkpoint" / "state.pt", weights_only=True)
    assert state["method"].keys() == {"discriminator", "optimizer"}

    run = tmp_path / "run"
    assert crash_and_resume(cfg, tiny_data, run, at=8).status == "completed"
    assert same(read_metrics(run), rows)
    assert same_weights(run, unbroken)
    resumed = torch.load(run / "checkpoint" / "state.pt", weights_only=True)
    disc_a, disc_b = state["method"]["discriminator"], resumed["method"]["discriminator"]
    assert all(torch.equal(disc_a[k], disc_b[k]) for k in disc_a)
    opt_a, opt_b = state["method"]["optimizer"]["state"], resumed["method"]["optimizer"]["state"]
    assert all(torch.equal(opt_a[i]["exp_avg"], opt_b[i]["exp_avg"]) for i in opt_a)
