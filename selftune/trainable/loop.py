"""The self-training loop: plain PyTorch, no Ray; read `train` top to bottom.

`train` = setup (check the data and config, build the model, prepare or resume the output
folder) -> one loop over optimizer steps -> at every `eval_every` steps and at the end: evaluate,
write metrics, checkpoint, report. Its parts live beside it: the model (`model.py`), the device
(`device.py`), scoring (`evaluation.py`), metrics.jsonl and TensorBoard (`records.py`), the
training state's save and restore (`checkpoint.py`), the methods (`methods/`, one module each, behind the
interface in `methods/base.py`: the loop never asks which method runs).

Step numbering: `it` is the 0-based index of the optimizer step being taken; `iteration` (in
metrics, checkpoints and reports) is the number of steps completed, so the evaluation after step
`it` is at iteration `it + 1` and a run resumed from a checkpoint at iteration n starts at `it = n`.

Metrics (one dict per evaluation, the same in reports, metrics.jsonl and TensorBoard):
iteration; val_miou (EMA model, the sweep's objective), val_miou_raw (the trained weights),
val_loss (EMA, supervised loss per val image), train_miou (EMA, first train_eval_size train images
centre-cropped), train_val_gap = train_miou - val_miou, best_val_miou, best_iteration; since the
last evaluation: loss_sup (mean per step), loss_st (mean per self-training step), st_count
(accepted pseudo-label pixels), st_ratio (accepted / unlabelled pixels), unlabeled_skipped (unlabelled
draws whose file could not be read, replaced by another deterministic draw); at the last step: lr,
st_weight; per class (names lower-cased to [a-z0-9_]): val_iou/, val_iou_raw/, st_count/,
st_ratio/ (accepted / pixels the teacher gave that class; 0 when none), threshold/; status
(running | completed | early_stopped | diverged; a diverged report also has `message`); test_miou
with cfg.report_test; on a 2-class dataset (binary mode or not) val_precision, val_recall, val_f1,
val_pos_iou (the positive class) and val_auc of the EMA model, and their test_ twins with report_test.
Timing, wall clock (everything else is reproducible bit for bit on the CPU):
step_seconds (mean per training step since the last evaluation, data loading included), eval_seconds.
A class absent from both the truth and the prediction has IoU NaN and is left out of the mean.

Crashes: each evaluation writes checkpoint/state.pt first, holding the evaluation's metrics, then the
metrics.jsonl line and TensorBoard scalars. On resume from it into the run's own folder, lines past the
checkpoint's iteration (written by the crashed attempt after it) are dropped, and when the line of the
checkpoint's own evaluation is missing (a crash between the two writes) it is appended from state.pt,
its scalars too, so metrics.jsonl has no gap. The state.pt it replaces is kept as state.prev.pt, the
checkpoint to fall back to when state.pt cannot be read (`checkpoint.resume_state`).
"""

from __future__ import annotations

import copy
import math
import statistics
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from selftune.data import (
    LabeledDataset,
    PoolDraw,
    UnlabeledDataset,
    class_palette,
    derive_seed,
    make_batches,
    read_classes,
    unlabeled_index,
    validate_dataset,
)
from selftune.data.points import PointTargets
from selftune.data.validate import dataset_fingerprint, fingerprint_matches
from selftune.errors import ConfigError, DataError, StorageError
from selftune.fileio import write_atomic
from selftune.status import COMPLETED, DIVERGED, EARLY_STOPPED, ENDED_BY_ITSELF, RUNNING
from selftune.trainable import checkpoint as ckpt
from selftune.trainable.augment import crop_transform
from selftune.trainable.checkpoint import Progress, TrainingState
from selftune.trainable.config import DIVERGENCE_REFERENCE_STEPS, TrainConfig
from selftune.trainable.device import (
    DeviceBatch,
    available_cpus,
    make_autocast,
    memory_format_for,
    resolve_amp,
    resolve_device,
)
from selftune.trainable.evaluation import EvalBatches, evaluate, load_eval_batches
from selftune.trainable.functional import Loss, class_weights_for, loss_from_config
from selftune.trainable.methods import create_method, get_method
from selftune.trainable.methods.base import Method, NextRound
from selftune.trainable.model import build_model, build_optimizer, load_weights, weights_from
from selftune.trainable.records import (
    Window,
    add_scalars,
    image_panel,
    metric_names,
    record,
    summary_writer,
    window_metrics,
)

Reporter = Callable[[dict[str, Any], Path | None], None]  # (metrics, checkpoint folder or None)

# Independent random streams, all derived from cfg.seed: batch t of each is a pure function of t.
STREAM_LABELED, STREAM_UNLABELED, STREAM_STRONG_AUG, STREAM_ROUND_INIT = 0, 1, 2, 3
FINAL_STATUSES = ENDED_BY_ITSELF  # a run's last report says one of these (`selftune.status`)
SKIP_WARNINGS = 10  # unreadable unlabelled files named in a warning; the rest are only counted


@dataclass
class TrainResult:
    status: str  # completed | early_stopped | diverged
    best_val_miou: float  # the best value of cfg.select_metric, whichever it is (the records' key, kept for old files)
    best_iteration: int
    iterations: int  # optimizer steps completed
    out_dir: Path
    message: str


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
    the final status. A diverging loss ends the run with status "diverged" (`divergence`: a step loss that is
    not finite, or above cfg.divergence_factor times the median of the first step losses); bad data or config
    raise DataError / ConfigError before anything is written.
    """
    from selftune.fileio import folder_lock

    _check_out_dir(Path(out_dir))  # before the lock makes it
    with folder_lock(out_dir, "run folder", "choose another output folder (--out)"):  # one writer per run folder
        return _train(cfg, Path(data_root), Path(out_dir), resume_from, reporter, progress)


def _train(cfg: TrainConfig, data_root: Path, out_dir: Path, resume_from: Path | None, reporter: Reporter | None,
           progress: bool) -> TrainResult:
    """`train`'s body, run while it holds the run folder."""
    run = setup(cfg, Path(data_root), Path(out_dir), resume_from)  # checks everything, writes nothing
    cfg, st, p, method, device = run.cfg, run.st, run.st.progress, run.st.method, run.device  # cfg: fitted
    lost = run.saved_metrics if run.continues_here else None  # the checkpoint's evaluation, to restore if lost
    if run.resumed and (finished := _finished_status(p.iteration, method, p.bad_evals)):
        if lost is not None:
            ckpt.truncate_metrics(run.out_dir / ckpt.METRICS_FILE, p.iteration, lost)
        return TrainResult(finished, p.best_val_miou, p.best_iteration, p.iteration, run.out_dir,
                           f"nothing to do: the run at iteration {p.iteration} is already {finished}")
    start = p.iteration

    # ---------------------------------------------------------------- data
    crop = crop_transform(crop=cfg.crop_size, scale_min=cfg.scale_min, scale_max=cfg.scale_max,
                          hflip=cfg.hflip, vflip=cfg.vflip, ignore_index=cfg.ignore_index)
    labeled = make_batches(LabeledDataset(run.data_root, "train", run.classes, points=point_targets(cfg)),
                           batch_size=cfg.batch_size,
                           seed=cfg.seed, stream=STREAM_LABELED, start_iter=start, num_workers=cfg.num_workers,
                           transform=crop)
    unlabeled = LazyPool(run.data_root, cfg, crop)  # opened at the first self-training step

    open_output(run, start, lost)  # config.yaml, metrics.jsonl up to the checkpoint, TensorBoard's writer
    bar = tqdm(total=cfg.max_iters, initial=start, disable=not progress, dynamic_ncols=True, desc="train")

    # ---------------------------------------------------------------- the loop
    message, val_miou = "", float("nan")
    try:
        for it in range(start, cfg.max_iters):
            step_start = time.perf_counter()
            images, masks = run.to_device.labeled(next(labeled))
            st_weight = method.st_weight(it)
            self_training = method.uses_unlabeled(it)
            method.before_step(st.model, it)  # e.g. diverse_head's frozen heads for this step
            with run.autocast():
                if self_training:
                    step_gen = torch.Generator().manual_seed(derive_seed(cfg.seed, STREAM_STRONG_AUG, it))
                    images_u, skipped = unlabeled.next(it)
                    st.window.unlabeled_skipped += skipped
                    pseudo = method.pseudo_batch(run.labeller, run.to_device.images(images_u), it, step_gen)
                    logits = st.model(torch.cat([images, pseudo.images]))  # one forward: one set of BN statistics
                    logits_l, logits_u, student_u = logits[: len(images)], logits[len(images) :], pseudo.images
                    loss_sup = method.supervised_loss(logits_l, masks, run.loss_fn)  # each head's, with heads
                    loss_st = method.unlabeled_loss(logits_u, pseudo, run.loss_fn)
                    if cfg.fp_weight > 0:
                        loss_st = loss_st + cfg.fp_weight * method.perturbed_loss(st.model, pseudo, run.loss_fn,
                                                                                  step_gen)
                    st.window.count_pseudo_labels(pseudo.accepted, pseudo.predicted)
                    accepted_now = pseudo.accepted.sum()
                else:
                    logits_l, logits_u, student_u = st.model(images), None, None
                    loss_sup = method.supervised_loss(logits_l, masks, run.loss_fn)
                    loss_st = accepted_now = torch.zeros((), device=device)
                # a method's own loss (s4GAN's feature matching; 0 for the others)
                loss = loss_sup + st_weight * loss_st + method.extra_loss(images, masks, logits_l, student_u, logits_u, it)
            # One host sync per step: the divergence guard and the progress bar need these numbers.
            v_sup, v_st, v_loss, v_cnt = torch.stack(
                [loss_sup.detach(), loss_st.detach(), loss.detach(), accepted_now.float()]
            ).tolist()
            lr_used = st.optimizer.param_groups[0]["lr"]
            if (why := divergence(v_loss, p.early_losses, cfg.divergence_factor)) is not None:
                p.status, p.iteration = DIVERGED, it + 1
                message = _diverged_message(it, why, v_loss, v_sup, v_st, lr_used)
                break
            if len(p.early_losses) < DIVERGENCE_REFERENCE_STEPS:
                p.early_losses.append(v_loss)
            _optimizer_step(st, loss, cfg.grad_clip)
            method.update_teacher(st.teacher, st.model, it)
            method.after_step(it)  # a method's own optimizer step (s4GAN's discriminator)
            st.window.add_step(v_sup, v_st, self_training, time.perf_counter() - step_start)
            p.iteration = it + 1
            bar.update(1)
            thr = sum(method.thresholds_at(it)) / run.classes.num_classes
            bar.set_postfix_str(f"CE {v_sup:.3f} | ST {v_st:.3f} | ST_cnt {int(v_cnt)} | thr {thr:.2f} | "
                                f"lr {lr_used:.2e} | val mIoU {val_miou:.3f}", refresh=False)
            if p.iteration % cfg.eval_every and p.iteration != method.end():
                continue

            # -------------------------------------------------------- evaluate, checkpoint, report
            metrics = evaluation_metrics(run, it, lr_used)
            val_miou = metrics["val_miou"]
            keep_best(run, _selected(metrics, cfg.select_metric), it)  # best_model_ema.pt, the round's best, patience
            if cfg.keep_last and p.iteration > method.end() - cfg.keep_last * cfg.eval_every:
                ckpt.save_best(last_path(run.out_dir, p.iteration), st.teacher, cfg, run.classes.names, p.iteration,
                               metrics["val_miou"])  # the last evaluations' EMA models (the verdict's scores)
            if method.round_over(p.iteration, p.bad_evals) and not method.is_last():
                next_round(run, method.next_round(p.iteration))  # the round's best EMA model labels the next one
            p.status = _finished_status(p.iteration, method, p.bad_evals) or RUNNING
            metrics.update(best_val_miou=p.best_or_nan, best_iteration=p.best_iteration, status=p.status)
            st.window = Window.empty(run.classes.num_classes, device)
            ckpt.save_state(run.out_dir / ckpt.CHECKPOINT_DIR / ckpt.STATE_FILE, st, cfg, run.classes.names, device,
                            metrics, fingerprint=run.fingerprint)  # then its metrics line: a crash between the two loses nothing (see above)
            write_evaluation(run, metrics, it)
            if progress:
                bar.write(f"[{p.iteration}] val mIoU {val_miou:.4f} (raw {metrics['val_miou_raw']:.4f}) | "
                          f"train mIoU {metrics['train_miou']:.4f} | best {p.best_val_miou:.4f} @ "
                          f"{p.best_iteration} | ST_cnt {metrics['st_count']}")
            if reporter is not None:
                reporter(metrics, run.out_dir / ckpt.CHECKPOINT_DIR)
            if p.status != RUNNING:
                break

        if p.status == DIVERGED:  # report it too, with the metrics of the last finite weights
            metrics = evaluation_metrics(run, p.iteration - 1, st.optimizer.param_groups[0]["lr"])
            metrics.update(best_val_miou=p.best_or_nan, best_iteration=p.best_iteration, status=p.status,
                           message=message)
            record(metrics, run.out_dir, run.writer)
            if reporter is not None:
                reporter(metrics, None)
            p.iteration -= 1  # steps completed
        else:
            message = (f"{p.status} at iteration {p.iteration}: best {metric_label(cfg.select_metric)} {p.best_val_miou:.4f} at iteration "
                       f"{p.best_iteration}"
                       + (f" (no improvement in {p.bad_evals} evaluations)" if p.status == EARLY_STOPPED else ""))
    finally:
        bar.close()
        run.writer.close()
    return TrainResult(p.status, p.best_or_nan, p.best_iteration, p.iteration, run.out_dir, message)


# ---------------------------------------------------------------------------- the helpers `train` uses, in order


@dataclass
class Run:
    """What `setup` builds and the loop uses: the data, the models and their state, the loss, the device."""

    cfg: TrainConfig
    data_root: Path
    out_dir: Path
    classes: Any  # selftune.data.Classes
    names: list[str]  # class names as metric keys
    palette: torch.Tensor
    device: torch.device
    autocast: Callable[[], Any]
    to_device: DeviceBatch
    loss_fn: Loss  # SegmentationLoss, or BinaryLoss in binary mode
    st: TrainingState
    labeller: torch.nn.Module  # who pseudo-labels: the EMA model, or a frozen earlier run's model
    evals: EvalSets
    resumed: bool
    continues_here: bool = False  # resumed into the folder that holds the run (its config.yaml is there)
    saved_metrics: dict[str, Any] | None = None  # the resumed checkpoint's own evaluation
    writer: Any = None  # TensorBoard's SummaryWriter, opened when the loop starts
    fingerprint: str | None = None  # the dataset's (`data.dataset_fingerprint`), saved with every checkpoint


def setup(cfg: TrainConfig, data_root: Path, out_dir: Path, resume_from: Path | None) -> Run:
    """Check the data, config and earlier runs' weights, then build the models, optimizer, loss and state
    (restored from `resume_from` when given). Raises DataError / ConfigError; writes nothing."""
    _check_out_dir(out_dir)
    summary = validate_dataset(data_root, need_unlabeled=get_method(cfg.method).needs_unlabeled,
                               points=point_targets(cfg))
    from selftune.data.validate import check_crop  # the sweep's planner makes the same check (issue 35)

    check_crop(cfg.crop_size, cfg.scale_min, cfg.scale_max, summary.image_sizes)
    classes = read_classes(data_root)
    k = classes.num_classes
    _check_select_metric(cfg.select_metric, classes.names)
    cfg = cfg.for_classes(k)  # per-class fields fitted to the dataset's classes: the config this run trains
    method = create_method(cfg, k, class_prior=summary.frequencies)
    saved = _saved_state(cfg, out_dir, resume_from)
    fingerprint = dataset_fingerprint(data_root)
    if saved is not None and saved.get("data_fingerprint") and not fingerprint_matches(data_root,
                                                                                        saved["data_fingerprint"]):
        raise DataError(f"the dataset at {data_root} changed since the run being resumed started (fingerprint "
                        f"{saved['data_fingerprint']} recorded, {fingerprint} now: classes.csv, the labelled files, "
                        "their masks or points, or the unlabelled pool differ); put that data back to resume it, or "
                        "start a new run in another output folder")
    # earlier runs' weights: a frozen pseudo-labeller (its own architecture), the student's start (fresh runs only)
    labeller_weights = weights_from("teacher_checkpoint", cfg.teacher_checkpoint, classes.names)
    init = weights_from("init_checkpoint", cfg.init_checkpoint if saved is None else None, classes.names)
    device = resolve_device(cfg.device)
    amp_dtype = resolve_amp(cfg, device)
    torch.set_num_threads(cfg.num_threads or available_cpus())
    torch.manual_seed(cfg.seed)  # model init; data and augmentation use their own seeded generators
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    memory_format = memory_format_for(cfg, device)
    model = build_model(cfg, k)
    if init is not None:
        load_weights(model, init, "init_checkpoint", f"this run's {cfg.arch}/{cfg.encoder}")
    model = model.to(device, memory_format=memory_format)
    teacher = copy.deepcopy(model).eval().requires_grad_(False)  # the EMA model: pseudo-labels, metrics, best
    labeller = teacher  # mean teacher: the EMA model labels
    if labeller_weights is not None:  # built after the student, so the student's init does not depend on it
        frozen = build_model(labeller_weights.config.replace(encoder_weights=None), k)
        load_weights(frozen, labeller_weights, "teacher_checkpoint", "the architecture its config names")
        labeller = frozen.to(device, memory_format=memory_format).eval().requires_grad_(False)
        if saved is None and init is None and method.student_from_labeller():  # rounds: from round 1
            load_weights(model, labeller_weights, "teacher_checkpoint", f"this run's {cfg.arch}/{cfg.encoder} "
                         "(round_init warm starts the student from the first round; round_init fresh does not)")
            teacher.load_state_dict(model.state_dict())
    optimizer = build_optimizer(cfg, model)
    st = TrainingState(model, teacher, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, method.lr_factor),
                       torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16), method,
                       Window.empty(k, device), Progress())
    if saved is not None:
        ckpt.restore_state(saved, st, device)
        for group in st.optimizer.param_groups:  # max_iters may have changed: use the schedule's value now
            group["lr"] = group["initial_lr"] * method.lr_factor(st.scheduler.last_epoch)
        if method.labeller_weights is not None:  # a later round: the last round's best labels
            labeller = frozen_model(cfg, k, method.labeller_weights, device, memory_format)
    weights = class_weights_for(cfg.class_weighting, k, explicit=cfg.class_weights,
                                suggested=summary.suggested_weights)
    return Run(
        cfg, data_root, out_dir, classes, metric_names(classes.names), class_palette(classes.colors, k), device,
        make_autocast(device, amp_dtype), DeviceBatch(device, memory_format, cfg.ignore_index),
        loss_from_config(cfg, k, weights).to(device), st, labeller,
        EvalSets.load(cfg, data_root, classes), resumed=saved is not None,
        continues_here=saved is not None and (out_dir / ckpt.CONFIG_FILE).is_file(),
        saved_metrics=saved.get("metrics") if saved is not None else None, fingerprint=fingerprint,
    )


def point_targets(cfg: TrainConfig) -> PointTargets:
    """How splits labelled by points.json become masks in this run: cfg.point_radius and cfg.point_ring."""
    return PointTargets(cfg.point_radius, cfg.point_ring)


def _check_out_dir(out_dir: Path) -> None:
    """The output folder must be a folder, or a path a folder can be made at (no file on the way)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"output folder {out_dir} is a file, not a folder; choose another output folder")
    above = next((p for p in out_dir.parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise ConfigError(f"output folder {out_dir} cannot be made: {above} is a file; choose another output folder")


def _saved_state(cfg: TrainConfig, out_dir: Path, resume_from: Path | None) -> dict[str, Any] | None:
    """The state to resume from (checked against `cfg`), or None for a fresh run in an unused folder."""
    if resume_from is not None:
        path, state = ckpt.resume_state(resume_from)  # state.pt, or state.prev.pt with a warning
        ckpt.check_resume_config(state["config"], cfg, path)
        return state
    if any((out_dir / name).exists() for name in (ckpt.CONFIG_FILE, ckpt.METRICS_FILE)):
        if _started(out_dir):
            raise ConfigError(
                f"output folder {out_dir} already holds a run ({ckpt.CONFIG_FILE} / {ckpt.METRICS_FILE}); "
                "resume it or choose another folder"
            )
        warnings.warn(f"output folder {out_dir} holds a run that stopped before its first checkpoint "
                      f"({ckpt.CONFIG_FILE}, no {ckpt.CHECKPOINT_DIR}/{ckpt.STATE_FILE}, no metrics): starting it over",
                      stacklevel=3)
    return None


def _started(out_dir: Path) -> bool:
    """Whether the run in `out_dir` got as far as a checkpoint or a metrics line (then it is resumed, not redone)."""
    if (out_dir / ckpt.CHECKPOINT_DIR / ckpt.STATE_FILE).exists() or (out_dir / ckpt.PREVIOUS_FILE).exists():
        return True
    metrics = out_dir / ckpt.METRICS_FILE
    return metrics.is_file() and bool(metrics.read_text(errors="replace").strip())


@dataclass
class EvalSets:
    """The images every evaluation scores, loaded once: val, a fixed train subset, and test (report_test)."""

    val: EvalBatches
    train: EvalBatches
    test: EvalBatches | None

    @classmethod
    def load(cls, cfg: TrainConfig, data_root: Path, classes: Any) -> EvalSets:
        points = point_targets(cfg)
        val = load_eval_batches(LabeledDataset(data_root, "val", classes, points=points), cfg.val_max_images,
                                cfg.batch_size)
        train = load_eval_batches(LabeledDataset(data_root, "train", classes, points=points), cfg.train_eval_size,
                                  cfg.batch_size,
                                  center_crop=cfg.crop_size)
        test = None
        if cfg.report_test:
            test = load_eval_batches(LabeledDataset(data_root, "test", classes, points=points), 0, cfg.batch_size)
        return cls(val, train, test)


def divergence(loss: float, early_losses: list[float], factor: float) -> str | None:
    """None while the step loss `loss` is sane; else why not, to follow "the loss is X at step n": "" when it is
    not finite, the rule when it exceeds `factor` (divergence_factor; 0 disables this) times the median of the
    run's first step losses (`early_losses`)."""
    if not math.isfinite(loss):
        return ""
    reference = statistics.median(early_losses) if early_losses else 0.0
    if factor > 0 and reference > 0 and loss > factor * reference:
        return (f", over divergence_factor {factor:g} times its early reference {reference:.4g} (the median of the "
                f"first {len(early_losses)} step losses)")
    return None


def _optimizer_step(st: TrainingState, loss: torch.Tensor, grad_clip: float) -> None:
    """Backward (scaled for fp16), optional gradient clipping, optimizer and LR scheduler step."""
    st.optimizer.zero_grad(set_to_none=True)
    st.scaler.scale(loss).backward()
    if grad_clip > 0:
        st.scaler.unscale_(st.optimizer)
        torch.nn.utils.clip_grad_norm_(st.model.parameters(), grad_clip)
    st.scaler.step(st.optimizer)
    st.scaler.update()
    st.scheduler.step()


def _selected(metrics: dict[str, Any], name: str) -> float:
    """The evaluation's value of `cfg.select_metric` (NaN, never a best, when it could not be computed)."""
    v = metrics.get(name)
    return float(v) if isinstance(v, int | float) and math.isfinite(v) else float("nan")


def metric_label(name: str) -> str:
    """How a metric is printed: `val mIoU` for val_miou, any other by its name (val_f1, val_iou/road)."""
    return "val mIoU" if name == "val_miou" else name


LAST_DIR = "last"  # a run's last evaluations' EMA models (`cfg.keep_last`)


def last_path(out_dir: Path, iteration: int) -> Path:
    """Where the EMA model of the evaluation after step `iteration` is kept (`cfg.keep_last`)."""
    return out_dir / LAST_DIR / f"ema_{iteration:08d}.pt"


def keep_best(run: Run, val_miou: float, it: int) -> None:
    """After the evaluation of step `it`: keep the EMA model if it is the run's best by `cfg.select_metric`
    (`val_miou`, the value given; best_model_ema.pt) and, with rounds, the round's best; count the evaluation
    towards patience unless it improved (the round's best, with rounds) or it is too early to count
    (`method.patience_counts`). `progress.best_val_miou` holds the best value of `select_metric`."""
    st, p, method = run.st, run.st.progress, run.st.method
    new_best = val_miou > p.best_val_miou
    if new_best:
        p.best_val_miou, p.best_iteration = val_miou, p.iteration
        ckpt.save_best(run.out_dir / ckpt.BEST_FILE, st.teacher, run.cfg, run.classes.names, p.iteration, val_miou)
    round_best = method.keep_if_best(val_miou, st.teacher)
    if new_best if round_best is None else round_best:
        p.bad_evals = 0
    elif method.patience_counts(it):
        p.bad_evals += 1


def _check_select_metric(name: str, class_names: tuple[str, ...]) -> None:
    """`select_metric` must be one the loop reports on this dataset (`selectable_metrics`); else a ConfigError."""
    from selftune.trainable.evaluation import selectable_metrics

    available = selectable_metrics(metric_names(class_names))
    if name not in available:
        raise ConfigError(f"select_metric {name!r} is not a metric this run reports on a {len(class_names)}-class "
                          f"dataset; available: {', '.join(available)}")


def open_output(run: Run, start: int, lost: dict[str, Any] | None) -> None:
    """Prepare the run folder: the config, metrics.jsonl cut back to (or restored up to) the checkpoint being
    resumed at iteration `start`, and TensorBoard's writer (events past `start` dropped)."""
    try:
        run.out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # e.g. under /proc, or on a read-only mount
        raise StorageError(exc.errno, f"cannot create the output folder {run.out_dir}: {exc.strerror}; choose "
                           "another one") from None
    _check_writable_and_free(run)
    write_atomic(run.out_dir / ckpt.CONFIG_FILE, run.cfg.to_yaml())
    restored = run.resumed and ckpt.truncate_metrics(run.out_dir / ckpt.METRICS_FILE, start, lost)
    run.writer = summary_writer(run.out_dir, purge_step=start + 1 if run.resumed else None)
    if restored and lost is not None:
        add_scalars(lost, run.writer)


def _check_writable_and_free(run: Run) -> None:
    """Before the first step: the checkpoint folder takes files (a read-only one was reported as 'Invalid
    cross-device link' at the first checkpoint), and the disk has room for what a run keeps (state.pt and
    state.prev.pt, each the model, its EMA and two Adam moments, plus best_model_ema.pt)."""
    import tempfile

    from selftune.fileio import check_free_space

    folder = run.out_dir / ckpt.CHECKPOINT_DIR
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".selftune-write-check-"):
            pass
    except OSError as exc:
        raise StorageError(exc.errno, f"cannot write checkpoints in {folder} ({exc.strerror}); make it writable or "
                           "choose another output folder") from None
    weights = sum(t.numel() * t.element_size() for t in run.st.model.state_dict().values())
    check_free_space(run.out_dir, 9 * weights, f"the run's checkpoints ({weights / 1e6:.0f} MB of weights: state.pt "
                     "and state.prev.pt with the EMA and the optimizer's moments, and best_model_ema.pt)")


class LazyPool:
    """The unlabelled batches, opened at the first self-training step `it` (batch t is a function of t).

    The pool is large and noisy: a file that cannot be read is replaced by another deterministic draw
    (`UnlabeledDataset(skip_unreadable=True)`), counted, and warned about (the first SKIP_WARNINGS files)."""

    def __init__(self, data_root: Path, cfg: TrainConfig, transform: Any) -> None:
        self.data_root, self.cfg, self.transform = data_root, cfg, transform
        self.batches: Iterator[PoolDraw] | None = None
        self.warned: set[str] = set()

    def next(self, it: int) -> tuple[torch.Tensor, int]:
        """Batch `it`, and how many unreadable files were passed over to draw it."""
        if self.batches is None:
            pool = UnlabeledDataset(self.data_root, unlabeled_index(self.data_root), skip_unreadable=True)
            self.batches = make_batches(pool, batch_size=self.cfg.unlabeled_batch_size, seed=self.cfg.seed,
                                        stream=STREAM_UNLABELED, start_iter=it, num_workers=self.cfg.num_workers,
                                        transform=self.transform)
        batch = next(self.batches)
        for why in batch.skipped:
            if why in self.warned or len(self.warned) > SKIP_WARNINGS:
                continue
            self.warned.add(why)
            if len(self.warned) <= SKIP_WARNINGS:
                warnings.warn(f"unlabelled image skipped at step {it + 1}: {why}; another image of the pool was "
                              "drawn in its place (counted in the metric unlabeled_skipped)", stacklevel=2)
            else:
                warnings.warn("more unlabelled images cannot be read: they are skipped and only counted in the "
                              "metric unlabeled_skipped", stacklevel=2)
        return batch.image, len(batch.skipped)


def evaluation_metrics(run: Run, it: int, lr: float) -> dict[str, Any]:
    """The metrics of the evaluation after step `it`: the models' scores and the window's statistics."""
    eval_start = time.perf_counter()
    st = run.st
    metrics: dict[str, Any] = {"iteration": it + 1, "round": st.method.round}
    metrics.update(evaluate(st.teacher, st.model, run.evals.val, run.evals.train, run.loss_fn, run.to_device,
                            run.autocast, run.names, run.evals.test, roc_bins=run.cfg.auc_bins))
    metrics.update(window_metrics(st.window, run.names, st.method.thresholds_at(it), st.method.st_weight(it), lr))
    metrics.update(st.method.window_metrics())
    metrics["eval_seconds"] = time.perf_counter() - eval_start
    return metrics


def write_evaluation(run: Run, metrics: dict[str, Any], it: int) -> None:
    """metrics.jsonl and TensorBoard (scalars, and the image panel with the method's own pseudo-labels)."""
    record(metrics, run.out_dir, run.writer)
    if run.cfg.log_images:
        panel = image_panel(run.st.teacher, run.labeller, run.st.method, it, run.evals.val, run.palette,
                            run.to_device, run.autocast, run.names)
        run.writer.add_image("val/panel", panel, metrics["iteration"], dataformats="CHW")
    run.writer.flush()


def _diverged_message(it: int, why: str, loss: float, sup: float, st: float, lr: float) -> str:
    return (f"diverged: the loss is {loss:.4g} at step {it + 1}{why} (supervised {sup:.4g}, self-training {st:.4g}, "
            f"lr {lr:.3g}); the run stopped with the weights after {it} steps. A lower lr, a longer warmup_iters or "
            "grad_clip > 0 may help")


def _finished_status(iteration: int, method: Method, bad_evals: int) -> str | None:
    """completed at the (last round's) end, early_stopped when patience ran out in the last round, else None."""
    if not method.is_last():
        return None
    if iteration >= method.end():
        return COMPLETED
    if method.cfg.patience and bad_evals >= method.cfg.patience:
        return EARLY_STOPPED
    return None


def next_round(run: Run, switch: NextRound) -> None:
    """A method's next round (`Method.next_round`): its labeller becomes the frozen labeller; the student starts
    from `switch.student` or afresh; the EMA copy, optimizer and LR schedule start over."""
    st, cfg, method = run.st, run.cfg, run.st.method
    run.labeller = frozen_model(cfg, run.classes.num_classes, switch.labeller, run.device,
                                memory_format_for(cfg, run.device))
    if switch.student is not None:
        st.model.load_state_dict(switch.student)
    else:  # a fresh init, seeded by the round (Noisy Student)
        torch.manual_seed(derive_seed(cfg.seed, STREAM_ROUND_INIT, method.round))
        st.model.load_state_dict(build_model(cfg, run.classes.num_classes).state_dict())
    st.teacher.load_state_dict(st.model.state_dict())
    st.optimizer = build_optimizer(cfg, st.model)
    st.scheduler = torch.optim.lr_scheduler.LambdaLR(st.optimizer, method.lr_factor)
    st.progress.bad_evals = 0


def frozen_model(cfg: TrainConfig, num_classes: int, weights: dict[str, torch.Tensor], device: torch.device,
                 memory_format: torch.memory_format) -> torch.nn.Module:
    """A pseudo-labeller of this run's architecture with `weights`, on the device, frozen."""
    model = build_model(cfg.replace(encoder_weights=None), num_classes)
    model.load_state_dict(weights)
    return model.to(device, memory_format=memory_format).eval().requires_grad_(False)


__all__ = ["FINAL_STATUSES", "Method", "Reporter", "TrainResult", "metric_label", "train"]
