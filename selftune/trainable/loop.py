"""The self-training loop: plain PyTorch, no Ray; read `train` top to bottom.

`train` = setup (check the data and config, build the model, prepare or resume the output
folder) -> one loop over optimizer steps -> at every `eval_every` steps and at the end: evaluate,
write metrics, checkpoint, report. The helpers it uses follow it in the order it uses them.

Step numbering: `it` is the 0-based index of the optimizer step being taken; `iteration` (in
metrics, checkpoints and reports) is the number of steps completed, so the evaluation after step
`it` is at iteration `it + 1` and a run resumed from a checkpoint at iteration n starts at `it = n`.

Metrics (one dict per evaluation, the same in reports, metrics.jsonl and TensorBoard):
iteration; val_miou (EMA model, the sweep's objective), val_miou_raw (the trained weights),
val_loss (EMA, supervised loss per val image), train_miou (EMA, first train_eval_size train images
centre-cropped), train_val_gap = train_miou - val_miou, best_val_miou, best_iteration; since the
last evaluation: loss_sup (mean per step), loss_st (mean per self-training step), st_count
(accepted pseudo-label pixels), st_ratio (accepted / unlabelled pixels); at the last step: lr,
st_weight; per class (names lower-cased to [a-z0-9_]): val_iou/, val_iou_raw/, st_count/,
st_ratio/ (accepted / pixels the teacher gave that class; 0 when none), threshold/; status
(running | completed | early_stopped | diverged; a diverged report also has `message`); test_miou
with cfg.report_test. Timing, wall clock (everything else is reproducible bit for bit on the CPU):
step_seconds (mean per training step since the last evaluation, data loading included), eval_seconds.
A class absent from both the truth and the prediction has IoU NaN and is left out of the mean.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import math
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from tqdm import tqdm

from selftune.errors import ConfigError, DataError
from selftune.fileio import write_atomic
from selftune.trainable import checkpoint as ckpt
from selftune.trainable.augment import crop_transform, normalize
from selftune.trainable.config import TrainConfig
from selftune.trainable.data import (
    IGNORE_VALUE,
    LabeledDataset,
    UnlabeledDataset,
    derive_seed,
    make_batches,
    read_classes,
    unlabeled_index,
    validate_dataset,
)
from selftune.trainable.functional import (
    SegmentationLoss,
    acceptance_ratio,
    class_weights_for,
    confusion_matrix,
    iou_per_class,
    lr_factor,
    mean_iou,
    pseudo_labels,
    tta_probs,
)
from selftune.trainable.methods import METHODS, create_method

Reporter = Callable[[dict[str, Any], Path | None], None]  # (metrics, checkpoint folder or None)

# Independent random streams, all derived from cfg.seed: batch t of each is a pure function of t.
STREAM_LABELED, STREAM_UNLABELED, STREAM_STRONG_AUG = 0, 1, 2
PANEL_IMAGES = 4  # validation images in the TensorBoard panel
FINAL_STATUSES = ("completed", "early_stopped", "diverged")


@dataclass
class TrainResult:
    status: str  # completed | early_stopped | diverged
    best_val_miou: float
    best_iteration: int
    iterations: int  # optimizer steps completed
    out_dir: Path
    message: str


@dataclass
class Window:
    """What happened since the last evaluation (loss sums, pseudo-label counts)."""

    accepted: torch.Tensor  # int64 [K] accepted pseudo-label pixels per class
    predicted: torch.Tensor  # int64 [K] unlabelled pixels the teacher assigned to each class
    loss_sup: float = 0.0
    loss_st: float = 0.0
    steps: int = 0
    st_steps: int = 0  # steps that used unlabelled data
    seconds: float = 0.0  # wall time in training steps (data loading included, evaluation not)

    @classmethod
    def empty(cls, num_classes: int, device: torch.device) -> Window:
        zeros = torch.zeros(num_classes, dtype=torch.int64, device=device)
        return cls(zeros, zeros.clone())

    def state_dict(self) -> dict[str, Any]:
        return {"accepted": self.accepted.cpu(), "predicted": self.predicted.cpu(), "loss_sup": self.loss_sup,
                "loss_st": self.loss_st, "steps": self.steps, "st_steps": self.st_steps, "seconds": self.seconds}

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device) -> Window:
        return cls(state["accepted"].to(device), state["predicted"].to(device), float(state["loss_sup"]),
                   float(state["loss_st"]), int(state["steps"]), int(state["st_steps"]), float(state["seconds"]))


def train(
    cfg: TrainConfig,
    data_root: Path,
    out_dir: Path,
    *,
    resume_from: Path | None = None,
    reporter: Reporter | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train `cfg` on the dataset at `data_root`, writing the run to `out_dir`.

    Reports (metrics, checkpoint folder) to `reporter` once per evaluation; the last report has
    the final status. A diverging loss ends the run with status "diverged"; bad data or config
    raise DataError / ConfigError before anything is written.
    """
    data_root, out_dir = Path(data_root), Path(out_dir)

    # ---------------------------------------------------------------- check everything first
    summary = validate_dataset(data_root, need_unlabeled=METHODS[cfg.method].needs_unlabeled)
    classes = read_classes(data_root)
    num_classes = classes.num_classes
    cfg.check_num_classes(num_classes)
    method = create_method(cfg, num_classes, class_prior=summary.frequencies)
    state = None
    if resume_from is not None:
        state = ckpt.load_state(resume_from)
        ckpt.check_resume_config(state["config"], cfg, ckpt.state_path(resume_from))
    elif any((out_dir / name).exists() for name in (ckpt.CONFIG_FILE, ckpt.METRICS_FILE)):
        raise ConfigError(
            f"output folder {out_dir} already holds a run ({ckpt.CONFIG_FILE} / {ckpt.METRICS_FILE}); "
            "resume it or choose another folder"
        )
    # earlier runs' weights: a frozen pseudo-labeller (its own architecture), the student's start (fresh runs only)
    labeller = weights_from("teacher_checkpoint", cfg.teacher_checkpoint, classes.names)
    init = weights_from("init_checkpoint", cfg.init_checkpoint if state is None else None, classes.names)
    device = resolve_device(cfg.device)
    amp_dtype = resolve_amp(cfg, device)
    torch.set_num_threads(cfg.num_threads or available_cpus())
    torch.manual_seed(cfg.seed)  # model init; data and augmentation use their own seeded generators
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    # ---------------------------------------------------------------- model, teacher, optimizer, loss
    memory_format = torch.channels_last if (device.type == "cuda" and cfg.channels_last) else torch.contiguous_format
    model = build_model(cfg, num_classes)
    if init is not None:
        _load_weights(model, init, "init_checkpoint", f"this run's {cfg.arch}/{cfg.encoder}")
    model = model.to(device, memory_format=memory_format)
    teacher = copy.deepcopy(model).eval().requires_grad_(False)  # the EMA model: pseudo-labels, metrics, best
    if labeller is not None:  # built after the student, so the student's init does not depend on it
        frozen = build_model(labeller.config.replace(encoder_weights=None), num_classes)
        _load_weights(frozen, labeller, "teacher_checkpoint", "the architecture its config names")
        labeller_model = frozen.to(device, memory_format=memory_format).eval().requires_grad_(False)
    else:
        labeller_model = teacher  # mean teacher: the EMA model labels
    optimizer = build_optimizer(cfg, model)

    def schedule(it: int) -> float:  # LR multiplier for step it
        return lr_factor(it, warmup_iters=cfg.warmup_iters, max_iters=cfg.max_iters, schedule=cfg.lr_schedule,
                         poly_power=cfg.poly_power)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    autocast = make_autocast(device, amp_dtype)
    weights = class_weights_for(cfg.class_weighting, num_classes, explicit=cfg.class_weights,
                                suggested=summary.suggested_weights)
    loss_fn = SegmentationLoss.from_config(cfg, num_classes, weights).to(device)

    # ---------------------------------------------------------------- resume
    start, best_miou, best_iter, bad_evals = 0, -math.inf, 0, 0
    window = Window.empty(num_classes, device)
    if state is not None:
        model.load_state_dict(state["model"])
        teacher.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler.is_enabled() and state["scaler"]:  # empty when saved without fp16 (CPU, bf16)
            scaler.load_state_dict(state["scaler"])
        method.load_state_dict(state["method"])
        window = Window.from_state(state["window"], device)
        start, best_iter, bad_evals = int(state["iteration"]), int(state["best_iteration"]), int(state["bad_evals"])
        best_miou = float(state["best_val_miou"])
        for group in optimizer.param_groups:  # max_iters may have changed: use the schedule's value now
            group["lr"] = group["initial_lr"] * schedule(start)
        torch.set_rng_state(state["rng_cpu"])
        if device.type == "cuda" and state["rng_cuda"]:
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        finished = _finished_status(start, cfg, bad_evals)
        if finished:
            return TrainResult(finished, best_miou, best_iter, start, out_dir,
                               f"nothing to do: the run at iteration {start} is already {finished}")

    # ---------------------------------------------------------------- data
    crop = crop_transform(crop=cfg.crop_size, scale_min=cfg.scale_min, scale_max=cfg.scale_max,
                          hflip=cfg.hflip, vflip=cfg.vflip, ignore_index=cfg.ignore_index)
    labeled = make_batches(LabeledDataset(data_root, "train", classes), batch_size=cfg.batch_size, seed=cfg.seed,
                           stream=STREAM_LABELED, start_iter=start, num_workers=cfg.num_workers, transform=crop)
    unlabeled: Iterator[torch.Tensor] | None = None  # opened at the first self-training step
    val_set = load_eval_batches(LabeledDataset(data_root, "val", classes), cfg.val_max_images, cfg.batch_size)
    train_set = load_eval_batches(LabeledDataset(data_root, "train", classes), cfg.train_eval_size,
                                  cfg.batch_size, center_crop=cfg.crop_size)
    test_set = None
    if cfg.report_test:
        test_set = load_eval_batches(LabeledDataset(data_root, "test", classes), 0, cfg.batch_size)
    to_device = DeviceBatch(device, memory_format, cfg.ignore_index)
    names = metric_names(classes.names)
    palette = class_palette(classes.colors, num_classes)

    # ---------------------------------------------------------------- output folder
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(out_dir / ckpt.CONFIG_FILE, cfg.to_yaml())
    if state is not None:
        ckpt.truncate_metrics(out_dir / ckpt.METRICS_FILE, start)
    writer = _summary_writer(out_dir, purge_step=start + 1 if state is not None else None)
    bar = tqdm(total=cfg.max_iters, initial=start, disable=not progress, dynamic_ncols=True, desc="train")

    # ---------------------------------------------------------------- the loop
    status, message, val_miou, iteration = "running", "", float("nan"), start
    try:
        for it in range(start, cfg.max_iters):
            step_start = time.perf_counter()
            images, masks = to_device.labeled(next(labeled))
            st_weight = method.st_weight(it)
            self_training = method.uses_unlabeled(it)
            with autocast():
                if self_training:
                    if unlabeled is None:
                        pool = UnlabeledDataset(data_root, unlabeled_index(data_root))
                        unlabeled = make_batches(pool, batch_size=cfg.unlabeled_batch_size, seed=cfg.seed,
                                                 stream=STREAM_UNLABELED, start_iter=it, num_workers=cfg.num_workers,
                                                 transform=crop)
                    step_gen = torch.Generator().manual_seed(derive_seed(cfg.seed, STREAM_STRONG_AUG, it))
                    pseudo = method.pseudo_batch(labeller_model, to_device.images(next(unlabeled)), it, step_gen)
                    logits = model(torch.cat([images, pseudo.images]))  # one forward: one set of BN statistics
                    loss_sup = loss_fn(logits[: len(images)], masks)
                    loss_st = method.unlabeled_loss(logits[len(images) :], pseudo, loss_fn)
                    if cfg.fp_weight > 0:
                        loss_st = loss_st + cfg.fp_weight * method.perturbed_loss(model, pseudo, loss_fn, step_gen)
                    window.accepted += pseudo.accepted
                    window.predicted += pseudo.predicted
                    accepted_now = pseudo.accepted.sum()
                else:
                    loss_sup = loss_fn(model(images), masks)
                    loss_st = accepted_now = torch.zeros((), device=device)
                loss = loss_sup + st_weight * loss_st
            # One host sync per step: the divergence guard and the progress bar need these numbers.
            v_sup, v_st, v_loss, v_cnt = torch.stack(
                [loss_sup.detach(), loss_st.detach(), loss.detach(), accepted_now.float()]
            ).tolist()
            lr_used = optimizer.param_groups[0]["lr"]
            if not math.isfinite(v_loss):
                status, iteration = "diverged", it + 1
                message = (f"diverged: the loss is {v_loss} at step {it + 1} (supervised {v_sup}, self-training "
                           f"{v_st}, lr {lr_used:.3g}); the run stopped with the weights after {it} steps. "
                           "A lower lr, a longer warmup_iters or grad_clip > 0 may help")
                break
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            method.update_teacher(teacher, model, it)
            window.loss_sup += v_sup
            window.loss_st += v_st
            window.steps += 1
            window.st_steps += self_training
            window.seconds += time.perf_counter() - step_start
            iteration = it + 1
            bar.update(1)
            thr = sum(method.thresholds_at(it)) / num_classes
            bar.set_postfix_str(f"CE {v_sup:.3f} | ST {v_st:.3f} | ST_cnt {int(v_cnt)} | thr {thr:.2f} | "
                                f"lr {lr_used:.2e} | val mIoU {val_miou:.3f}", refresh=False)
            if iteration % cfg.eval_every and iteration != cfg.max_iters:
                continue

            # -------------------------------------------------------- evaluate, checkpoint, report
            eval_start = time.perf_counter()
            metrics = {"iteration": iteration}
            metrics.update(evaluate(teacher, model, val_set, train_set, loss_fn, to_device, autocast, names,
                                    test_set))
            metrics.update(window_metrics(window, names, method.thresholds_at(it), st_weight, lr_used))
            metrics["eval_seconds"] = time.perf_counter() - eval_start
            val_miou = metrics["val_miou"]
            if val_miou > best_miou:
                best_miou, best_iter, bad_evals = val_miou, iteration, 0
                ckpt.save_atomic({"config": cfg.to_dict(), "class_names": list(classes.names),
                                  "model": _cpu_state(teacher), "iteration": iteration, "val_miou": val_miou},
                                 out_dir / ckpt.BEST_FILE)
            else:
                bad_evals += 1
            status = _finished_status(iteration, cfg, bad_evals) or "running"
            metrics.update(best_val_miou=best_miou if best_iter else float("nan"), best_iteration=best_iter,
                           status=status)
            window = Window.empty(num_classes, device)
            ckpt.save_atomic({
                "version": ckpt.STATE_VERSION, "config": cfg.to_dict(), "class_names": list(classes.names),
                "iteration": iteration, "status": status, "best_val_miou": best_miou, "best_iteration": best_iter,
                "bad_evals": bad_evals, "model": _cpu_state(model), "ema": _cpu_state(teacher),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "method": method.state_dict(), "window": window.state_dict(),
                "rng_cpu": torch.get_rng_state(),
                "rng_cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
            }, out_dir / ckpt.CHECKPOINT_DIR / ckpt.STATE_FILE)
            record(metrics, out_dir, writer)
            if cfg.log_images:
                panel = image_panel(teacher, val_set, method.thresholds_tensor(it, device), palette, to_device,
                                    autocast, labeller=labeller_model)
                writer.add_image("val/panel", panel, iteration, dataformats="CHW")
            writer.flush()
            if progress:
                bar.write(f"[{iteration}] val mIoU {val_miou:.4f} (raw {metrics['val_miou_raw']:.4f}) | "
                          f"train mIoU {metrics['train_miou']:.4f} | best {best_miou:.4f} @ {best_iter} | "
                          f"ST_cnt {metrics['st_count']}")
            if reporter is not None:
                reporter(metrics, out_dir / ckpt.CHECKPOINT_DIR)
            if status != "running":
                break

        if status == "diverged":  # report it too, with the metrics of the last finite weights
            eval_start = time.perf_counter()
            metrics = {"iteration": iteration}
            metrics.update(evaluate(teacher, model, val_set, train_set, loss_fn, to_device, autocast, names,
                                    test_set))
            metrics.update(window_metrics(window, names, method.thresholds_at(iteration - 1),
                                          method.st_weight(iteration - 1), optimizer.param_groups[0]["lr"]))
            metrics["eval_seconds"] = time.perf_counter() - eval_start
            best_seen = best_miou if best_iter else float("nan")  # NaN: diverged before any evaluation
            metrics.update(best_val_miou=best_seen, best_iteration=best_iter, status=status, message=message)
            record(metrics, out_dir, writer)
            if reporter is not None:
                reporter(metrics, None)
            iteration -= 1  # steps completed
        else:
            message = (f"{status} at iteration {iteration}: best val mIoU {best_miou:.4f} at iteration {best_iter}"
                       + (f" (no improvement in {bad_evals} evaluations)" if status == "early_stopped" else ""))
    finally:
        bar.close()
        writer.close()
    return TrainResult(status, best_miou if best_iter else float("nan"), best_iter, iteration, out_dir, message)


# ---------------------------------------------------------------------------- setup helpers


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask: cgroup/taskset limits, Ray's allocation)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but no CUDA GPU is available")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"device must be one of auto, cpu, cuda; got {name!r}")
    return torch.device(name)


def resolve_amp(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: CUDA only (bf16 where supported, else fp16 with a GradScaler); None = fp32."""
    if device.type != "cuda" or cfg.amp == "off":
        return None
    bf16_ok = torch.cuda.is_bf16_supported()
    if cfg.amp == "bf16" and not bf16_ok:
        raise ConfigError("amp 'bf16' requested but this GPU does not support bfloat16; use fp16 or auto")
    if cfg.amp == "fp16" or not bf16_ok:
        return torch.float16
    return torch.bfloat16


def make_autocast(device: torch.device, dtype: torch.dtype | None) -> Callable[[], Any]:
    """A factory of autocast contexts (a no-op context for fp32)."""
    if dtype is None:
        return contextlib.nullcontext
    return functools.partial(torch.autocast, device.type, dtype=dtype)


def build_model(cfg: TrainConfig, num_classes: int) -> torch.nn.Module:
    """smp.create_model(arch, encoder, encoder_weights); a bad name fails as ConfigError naming it."""
    _check_encoder(cfg.encoder)
    try:
        model = smp.create_model(cfg.arch, encoder_name=cfg.encoder, encoder_weights=cfg.encoder_weights,
                                 in_channels=3, classes=num_classes)
    except Exception as exc:  # smp/timm raise KeyError, ValueError, RuntimeError, download errors...
        raise ConfigError(
            f"cannot build arch={cfg.arch!r} with encoder={cfg.encoder!r}, encoder_weights={cfg.encoder_weights!r}: "
            f"{str(exc)[:500]}"
        ) from exc
    multiple = input_multiple(model)
    if cfg.crop_size % multiple:
        raise ConfigError(f"crop_size must be a multiple of {multiple} for arch {cfg.arch!r} with encoder "
                          f"{cfg.encoder!r}, got {cfg.crop_size}")
    return model


class LoadedWeights(NamedTuple):
    """Weights of an earlier run, as `ckpt.load_model_file` reads them."""

    config: TrainConfig
    class_names: tuple[str, ...] | None
    weights: dict[str, torch.Tensor]
    info: dict[str, Any]


def weights_from(key: str, path: str | None, names: tuple[str, ...]) -> LoadedWeights | None:
    """The EMA weights of the run file or folder at `path` (config key `key`) for a dataset of classes `names`.

    A missing or foreign file, or other classes, fail with an error naming the key and the file.
    """
    if path is None:
        return None
    try:
        loaded = LoadedWeights(*ckpt.load_model_file(Path(path)))
    except DataError as exc:
        raise DataError(f"{key}: {exc}") from None
    if loaded.class_names is not None and tuple(loaded.class_names) != tuple(names):
        raise ConfigError(f"{key}: {loaded.info['file']} was trained on classes {list(loaded.class_names)}, "
                          f"but this dataset has {list(names)}")
    saved_k = len(loaded.config.thresholds)
    if saved_k != len(names):
        raise ConfigError(f"{key}: {loaded.info['file']} has {saved_k} classes, this dataset has {len(names)}")
    return loaded


def _load_weights(model: torch.nn.Module, loaded: LoadedWeights, key: str, what: str) -> None:
    """Load `loaded` into `model`; a mismatch fails as ConfigError naming the key, the file and both models."""
    try:
        model.load_state_dict(loaded.weights)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise ConfigError(
            f"{key}: {loaded.info['file']} holds a {loaded.config.arch}/{loaded.config.encoder} model that does not "
            f"fit {what}: {' '.join(first[:2])[:300]}"
        ) from None


def _check_encoder(name: str) -> None:
    import difflib

    if name.startswith("tu-"):
        import timm

        if timm.is_model(name[3:]):
            return
        hint = difflib.get_close_matches(name[3:], timm.list_models(), n=1)
        extra = f" (did you mean 'tu-{hint[0]}'?)" if hint else ""
        raise ConfigError(f"encoder {name!r}: {name[3:]!r} is not a timm model{extra}")
    known = smp.encoders.get_encoder_names()
    if name not in known:
        hint = difflib.get_close_matches(name, known, n=1)
        extra = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise ConfigError(f"encoder {name!r} is not an smp encoder{extra}; use one of smp's encoders "
                          f"(resnet18, resnet50, efficientnet-b0, ...) or 'tu-<timm model name>'")


def input_multiple(model: torch.nn.Module) -> int:
    """Image sides must be a multiple of this (the encoder's output stride) for the model."""
    if not getattr(model, "requires_divisible_input_shape", True):
        return 1
    return int(getattr(getattr(model, "encoder", None), "output_stride", 32))


def build_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adamw":  # fused: one kernel for all parameters on CUDA
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=params[0].is_cuda or None)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise ConfigError(f"optimizer must be adamw or sgd, got {cfg.optimizer!r}")


def _finished_status(iteration: int, cfg: TrainConfig, bad_evals: int) -> str | None:
    if iteration >= cfg.max_iters:
        return "completed"
    if cfg.patience and bad_evals >= cfg.patience:
        return "early_stopped"
    return None


def _summary_writer(out_dir: Path, purge_step: int | None) -> Any:
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(out_dir), purge_step=purge_step)


def _cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


# ---------------------------------------------------------------------------- batches on the device


@dataclass
class DeviceBatch:
    """Moves uint8 batches to the device and normalises them there (4x less to copy than float)."""

    device: torch.device
    memory_format: torch.memory_format
    ignore_index: int

    def images(self, x: torch.Tensor) -> torch.Tensor:
        x = normalize(x.to(self.device, non_blocking=True))
        return x.contiguous(memory_format=self.memory_format)

    def masks(self, y: torch.Tensor) -> torch.Tensor:
        y = y.to(self.device, non_blocking=True)
        if self.ignore_index != IGNORE_VALUE:  # masks on disk mark "not labelled" with 255
            y = torch.where(y == IGNORE_VALUE, self.ignore_index, y)
        return y

    def labeled(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images(batch[0]), self.masks(batch[1])


# ---------------------------------------------------------------------------- evaluation


@dataclass
class EvalBatches:
    """Whole images kept in memory as uint8 [B, 3, H, W] + int64 [B, H, W], same size within a batch."""

    batches: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)

    @property
    def num_images(self) -> int:
        return sum(len(x) for x, _ in self.batches)


def load_eval_batches(dataset: LabeledDataset, limit: int, batch_size: int, *, center_crop: int = 0) -> EvalBatches:
    """The first `limit` images (0: all) of `dataset`, unaugmented (optionally centre-cropped)."""
    n = len(dataset) if limit <= 0 else min(limit, len(dataset))
    out = EvalBatches()
    pending: list[tuple[torch.Tensor, torch.Tensor]] = []
    for i in range(n):
        image, mask = dataset[i]
        if center_crop:
            image, mask = _center_crop(image, mask, center_crop)
        if pending and (image.shape != pending[0][0].shape or len(pending) == batch_size):
            out.batches.append((torch.stack([p[0] for p in pending]), torch.stack([p[1] for p in pending])))
            pending = []
        pending.append((image, mask))
    if pending:
        out.batches.append((torch.stack([p[0] for p in pending]), torch.stack([p[1] for p in pending])))
    return out


def _center_crop(image: torch.Tensor, mask: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    h, w = mask.shape
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return image[:, top : top + size, left : left + size], mask[top : top + size, left : left + size]


@torch.no_grad()
def predict(
    model: torch.nn.Module, images: torch.Tensor, to_device: DeviceBatch, autocast: Any, tta: str = "none"
) -> torch.Tensor:
    """float32 logits [B, K, H, W] for uint8 images of any size (padded to the model's multiple); with `tta`
    flip or d4, the log of the class probabilities averaged over those views (`functional.tta_probs`)."""
    x = to_device.images(images)
    h, w = x.shape[-2:]
    m = input_multiple(model)
    ph, pw = (-h) % m, (-w) % m
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    with autocast():
        logits = model(x) if tta == "none" else tta_probs(model, x, tta).clamp_min(1e-12).log()
    return logits[..., :h, :w].float()


@torch.no_grad()
def score(
    model: torch.nn.Module, data: EvalBatches, num_classes: int, to_device: DeviceBatch, autocast: Any,
    loss_fn: SegmentationLoss | None = None, tta: str = "none",
) -> tuple[torch.Tensor, float]:
    """(confusion matrix [K, K] summed over `data`, mean loss per image or NaN without loss_fn); `tta` as in
    `predict`."""
    was_training = model.training
    model.eval()
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=to_device.device)
    loss_sum = torch.zeros((), device=to_device.device)
    for images, masks in data.batches:
        logits = predict(model, images, to_device, autocast, tta)
        y = to_device.masks(masks)
        cm += confusion_matrix(logits.argmax(1), y, num_classes)
        if loss_fn is not None:
            loss_sum += loss_fn(logits, y) * len(images)
    model.train(was_training)
    mean_loss = float(loss_sum) / max(1, data.num_images) if loss_fn is not None else float("nan")
    return cm.cpu(), mean_loss


def evaluate(
    teacher: torch.nn.Module, model: torch.nn.Module, val: EvalBatches, train_subset: EvalBatches,
    loss_fn: SegmentationLoss, to_device: DeviceBatch, autocast: Any, names: list[str], test: EvalBatches | None = None,
) -> dict[str, Any]:
    """val mIoU and per-class IoU of the EMA and the raw model, val loss (EMA), train mIoU (EMA);
    with `test` (cfg.report_test, benchmarks only: never used to select or stop), test_miou (EMA)."""
    num_classes = len(names)
    cm_ema, val_loss = score(teacher, val, num_classes, to_device, autocast, loss_fn)
    cm_raw, _ = score(model, val, num_classes, to_device, autocast)
    cm_train, _ = score(teacher, train_subset, num_classes, to_device, autocast)
    iou_ema, iou_raw = iou_per_class(cm_ema), iou_per_class(cm_raw)
    val_miou, train_miou = mean_iou(iou_ema), mean_iou(iou_per_class(cm_train))
    out: dict[str, Any] = {
        "val_miou": val_miou, "val_miou_raw": mean_iou(iou_raw), "val_loss": val_loss,
        "train_miou": train_miou, "train_val_gap": train_miou - val_miou,
    }
    for name, a, b in zip(names, iou_ema.tolist(), iou_raw.tolist(), strict=True):
        out[f"val_iou/{name}"] = a
        out[f"val_iou_raw/{name}"] = b
    if test is not None:
        out["test_miou"] = mean_iou(iou_per_class(score(teacher, test, num_classes, to_device, autocast)[0]))
    return out


def window_metrics(
    window: Window, names: list[str], thresholds: list[float], st_weight: float, lr: float
) -> dict[str, Any]:
    """Training-side metrics since the last evaluation, with the schedules' last values."""
    accepted, predicted = window.accepted.cpu(), window.predicted.cpu()
    steps = max(1, window.steps)
    out: dict[str, Any] = {
        "lr": lr, "loss_sup": window.loss_sup / steps, "loss_st": window.loss_st / max(1, window.st_steps),
        "st_weight": st_weight,
        "st_count": int(accepted.sum()), "st_ratio": float(acceptance_ratio(accepted.sum(), predicted.sum())),
        "step_seconds": window.seconds / steps,
    }
    ratios = acceptance_ratio(accepted, predicted).tolist()
    for name, count, ratio, thr in zip(names, accepted.tolist(), ratios, thresholds, strict=True):
        out[f"st_count/{name}"] = count
        out[f"st_ratio/{name}"] = ratio
        out[f"threshold/{name}"] = thr
    return out


# ---------------------------------------------------------------------------- output


def metric_names(class_names: tuple[str, ...] | list[str]) -> list[str]:
    """Class names for metric keys: lower case [a-z0-9_] ("Badan Air" -> "badan_air"), unique."""
    out: list[str] = []
    for i, name in enumerate(class_names):
        key = re.sub(r"[^a-z0-9_]+", "_", name.lower()).strip("_") or f"class_{i}"
        out.append(key if key not in out else f"{key}_{i}")
    return out


def record(metrics: dict[str, Any], out_dir: Path, writer: Any) -> None:
    """One line in metrics.jsonl (the metrics as reported); every number as a TensorBoard scalar."""
    iteration = metrics["iteration"]
    with open(out_dir / ckpt.METRICS_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(metrics) + "\n")
    for key, value in metrics.items():
        if key != "iteration" and isinstance(value, (int, float)) and not isinstance(value, bool):
            writer.add_scalar(key, value, iteration)


# Colours for classes.csv files without r,g,b columns (tab10, then more); cycled when K is larger.
DEFAULT_PALETTE = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
    (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (174, 199, 232), (255, 187, 120),
)


def class_palette(colors: tuple[tuple[int, int, int], ...] | None, num_classes: int) -> torch.Tensor:
    """uint8 [K + 1, 3]: class colours, then the colour of ignored / rejected pixels (black, or white
    when a class is already black)."""
    rows = list(colors) if colors else [DEFAULT_PALETTE[i % len(DEFAULT_PALETTE)] for i in range(num_classes)]
    rows.append((255, 255, 255) if (0, 0, 0) in rows else (0, 0, 0))
    return torch.tensor(rows, dtype=torch.uint8)


@torch.no_grad()
def image_panel(
    teacher: torch.nn.Module, val: EvalBatches, thresholds: torch.Tensor, palette: torch.Tensor,
    to_device: DeviceBatch, autocast: Any, *, labeller: torch.nn.Module | None = None,
) -> torch.Tensor:
    """uint8 [3, N*H, 4*W]: rows of input | truth | pseudo-label (rejected pixels blanked) | prediction.

    The pseudo-labels are `labeller`'s (a frozen teacher) when given, else `teacher`'s; the prediction is `teacher`'s.
    """
    images, masks = val.batches[0][0][:PANEL_IMAGES], val.batches[0][1][:PANEL_IMAGES]
    logits = predict(teacher, images, to_device, autocast)
    k = palette.shape[0] - 1
    pl = pseudo_labels(logits.softmax(1), thresholds, k)
    prediction = pl.predicted
    if labeller is not None and labeller is not teacher:
        pl = pseudo_labels(predict(labeller, images, to_device, autocast).softmax(1), thresholds, k)
    masks = masks.clone()
    masks[(masks < 0) | (masks >= k)] = k

    def paint(labels: torch.Tensor) -> torch.Tensor:  # [N, H, W] -> [N, 3, H, W]
        return palette[labels.cpu()].permute(0, 3, 1, 2)

    row = torch.cat([images, paint(masks), paint(pl.labels), paint(prediction)], dim=3)  # along width
    return torch.cat(list(row), dim=1)  # stack the images vertically


__all__ = [
    "Reporter",
    "TrainResult",
    "available_cpus",
    "build_model",
    "class_palette",
    "evaluate",
    "load_eval_batches",
    "make_autocast",
    "metric_names",
    "predict",
    "resolve_device",
    "score",
    "train",
    "weights_from",
]
