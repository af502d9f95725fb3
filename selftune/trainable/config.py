"""The one typed config object: its defaults, each with a comment, are the schema.

Defaults follow the users' hand-tuned V3.1 run (seed 000) at full scale: per-class thresholds
0.45-0.60, ST weight 1.5, LR 3e-4, warmup 1500 iterations, patience 40 evaluations, scale
jitter 256-320 px on 256 px crops (factors 1.0-1.25). `demo_config()` scales the iteration
counts down for the built-in demo data; docs/data.md says how.

Build one from a dict with `TrainConfig.from_dict`: unknown keys and bad values fail with a
`ConfigError` naming the key and the value. The `method` choices and each method's own checks come from
the registry, `selftune.trainable.methods` (docs/methods.md): each method declares its own knobs (`Knob`: name, type,
default, range, one line), which become fields here (`_add_knobs`, also for a method registered at run time), so
the YAML stays flat. This module checks every field's range, the knobs' from their declarations.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from selftune.coerce import coerce
from selftune.data.points import POINT_RADIUS, POINT_RING
from selftune.errors import ConfigError
from selftune.trainable.methods import DEFAULT_METHOD, MethodSpec, all_knobs, get_method, on_register
from selftune.trainable.methods import REGISTRY as METHODS

ARCHS = (
    "Unet", "UnetPlusPlus", "MAnet", "Linknet", "FPN", "PSPNet", "PAN", "DeepLabV3",
    "DeepLabV3Plus", "UPerNet", "Segformer", "DPT",
)
# how many `decoder_channels` values each architecture takes (smp's `decoder_channels`); the others have no such knob
DECODER_CHANNELS = {"Unet": 5, "UnetPlusPlus": 5, "MAnet": 5, "DeepLabV3": 1, "DeepLabV3Plus": 1, "PAN": 1,
                    "UPerNet": 1}
CHECKPOINT_KEYS = ("teacher_checkpoint", "init_checkpoint")  # paths to earlier runs' weights
OPTIMIZERS = ("adamw", "sgd")
LR_SCHEDULES = ("cosine", "poly", "constant")
THRESHOLD_SCHEDULES = ("constant", "linear")
ST_LOSS_NORMALIZATIONS = ("accepted", "all_pixels")
TEACHER_TTAS = ("none", "flip", "d4")
CLASS_WEIGHTINGS = ("none", "inverse_freq", "explicit")
DEVICES = ("auto", "cpu", "cuda")
AMP_DTYPES = ("auto", "bf16", "fp16", "off")

# V3.1's per-class thresholds (seed 000) for classes 1-6; background gets 0.50.
V31_THRESHOLDS = (0.50, 0.50, 0.55, 0.60, 0.55, 0.45, 0.50)
DIVERGENCE_REFERENCE_STEPS = 10  # step losses whose median is the divergence guard's reference (divergence_factor)
UNIFORM_THRESHOLD = 0.50  # every class's threshold when the V3.1 default meets a dataset without 7 classes


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of the self-training loop. Iteration counts are optimizer steps."""

    # --- model (segmentation-models-pytorch) ---
    arch: str = "DeepLabV3Plus"  # any smp architecture name, e.g. Unet, DeepLabV3Plus
    encoder: str = "resnet18"  # any smp/timm encoder name, e.g. resnet50, tu-mobilenetv3_small_050
    encoder_weights: str | None = None  # None: random init (no hub downloads); "imagenet" needs a network
    decoder_channels: tuple[int, ...] = ()  # smp's decoder widths; empty keeps the architecture's default. Unet,
    # UnetPlusPlus, MAnet: one per decoder stage, 5 (smp: 256, 128, 64, 32, 16); DeepLabV3, DeepLabV3Plus, PAN,
    # UPerNet: one value; the other architectures have no such knob. "64,32,16,16,16" is read as a list

    # --- data and augmentation ---
    crop_size: int = 256  # square training crop in pixels
    scale_min: float = 1.0  # random rescale factor range before cropping (V3.1: 256-320 px on 256)
    scale_max: float = 1.25
    hflip: bool = True  # random horizontal flip
    vflip: bool = True  # random vertical flip (aerial tiles have no "up")
    batch_size: int = 8  # labelled images per step
    unlabeled_batch_size: int = 8  # unlabelled images per step (self-training methods only)
    num_workers: int = 0  # DataLoader workers; 0 loads in the training process
    train_eval_size: int = 16  # fixed labelled subset scored for train mIoU (the train/val gap)
    val_max_images: int = 0  # cap on validation images per evaluation; 0 means all

    # --- supervised loss: ce_weight*CE + focal_weight*Focal + dice_weight*Dice ---
    ce_weight: float = 1.0
    focal_weight: float = 0.0
    dice_weight: float = 0.0
    focal_gamma: float = 2.0  # focal loss focusing parameter (seed 004)
    focal_alpha: float | None = None  # focal loss class balance; None disables it
    class_weighting: str = "none"  # none | inverse_freq (from train masks) | explicit
    class_weights: tuple[float, ...] | None = None  # one per class when class_weighting=explicit (one value: all)
    ignore_index: int = 255  # mask value ignored by every loss and metric

    # --- self-training ---
    method: str = DEFAULT_METHOD  # ema_self_training; a registered method (`selftune.trainable.methods`, docs/methods.md):
    # supervised (baseline, no unlabelled data) | ema_self_training (mean teacher) | rounds | s4gan | ...
    thresholds: tuple[float, ...] = V31_THRESHOLDS  # per-class pseudo-label confidence thresholds, one per class;
    # one value is every class's; the default (V3.1's 7) on a dataset of K != 7 classes is 0.5 for each (for_classes)
    threshold_schedule: str = "constant"  # constant | linear ramp from thresholds+start_offset
    threshold_start_offset: float = 0.0  # linear schedule: thresholds start this far from the end value
    threshold_ramp_iters: int = 10000  # linear schedule: iterations to reach the end value
    distribution_alignment: bool = False  # scale teacher probabilities by labelled class frequency / their running
    # mean on unlabelled data before thresholding (ReMixMatch/AdaMatch): stops drift towards favoured classes
    da_momentum: float = 0.99  # momentum of that running mean (per self-training step)
    teacher_tta: str = "none"  # none | flip: the teacher's probabilities averaged over the batch and its
    # horizontal, vertical and double flips | d4: also over their transposes (all 8 symmetries of the square;
    # for top-down imagery). Costs 4 or 8 teacher passes per step; pseudo-labels are thresholded after averaging
    min_accept_ratio: float = 0.0  # per-class acceptance floor (CBST-style class balance): the most confident
    # fraction of each class's predicted pixels in a batch is accepted even below its threshold; 0 = off
    st_weight: float = 1.5  # weight of the unlabelled (pseudo-label) loss
    st_loss_normalization: str = "accepted"  # accepted: the unlabelled loss is a mean over accepted pixels |
    # all_pixels: over all unlabelled pixels, rejected ones counting 0 (FixMatch, UniMatch), so it grows with acceptance
    st_start_iter: int = 500  # no pseudo-label loss before this iteration
    st_rampup_iters: int = 1000  # linear ramp of st_weight after st_start_iter
    ema_decay: float = 0.999  # teacher EMA decay (field: 0.99-0.999)
    teacher_checkpoint: str | None = None  # a frozen pseudo-labeller instead of the EMA model: an earlier run's
    # best_model_ema.pt, state.pt or run folder (self-training in rounds, Noisy Student); it may be another
    # architecture; the EMA model is still the one scored and kept
    init_checkpoint: str | None = None  # start the student and its EMA from an earlier run's weights (same kind of
    # file) instead of a fresh init: the next round, or fine-tuning; ignored on resume
    ema_warmup: bool = True  # decay min(ema_decay, 1 - 1/(t+1)) at step t (UniMatch V2): the teacher starts
    # as the running mean of the student instead of staying near its random init for ~1/(1-decay) steps
    fp_weight: float = 0.0  # UniMatch's feature-perturbation stream: the student decodes the weakly augmented
    # unlabelled batch from channel-dropped encoder features against the same pseudo-labels; its loss joins the
    # unlabelled loss with this weight (UniMatch: 1, equal to the image-perturbed stream); 0 = off
    fp_dropout: float = 0.5  # channel dropout rate of that stream (UniMatch's)
    strong_aug: bool = False  # student sees colour jitter + CutMix on unlabelled images
    color_jitter: float = 0.4  # strength of brightness/contrast/saturation jitter
    cutmix_prob: float = 0.5  # probability of CutMix on an unlabelled batch
    hue_jitter: float = 0.0  # strong aug: hue shift uniform in +-this fraction of the colour circle (UniMatch 0.25)
    grayscale_prob: float = 0.0  # strong aug: probability of greyscale per image (UniMatch 0.2)
    blur_prob: float = 0.0  # strong aug: probability of a Gaussian blur per image (UniMatch 0.5)
    blur_sigma: tuple[float, ...] = (0.1, 2.0)  # strong aug: blur sigma range in pixels (UniMatch's)

    # --- each registered method's own knobs follow the last field (`_add_knobs`): rounds' in
    # selftune/trainable/methods/rounds/__init__.py, s4gan's in methods/s4gan/__init__.py (docs/methods.md) ---

    # --- binary segmentation and point labels (seed 003; docs/data.md) ---
    binary: bool = False  # one output channel and a sigmoid, for a dataset of 2 classes (background + positive):
    # ce_weight is then BCE, focal and dice are binary and pos_weight weights positives; pseudo-labels come from
    # pos_threshold / neg_threshold (not `thresholds`). Methods supervised, ema_self_training and rounds
    pos_threshold: float = 0.95  # binary: an unlabelled pixel of positive probability >= this is a positive
    # pseudo-label (seed 003: 0.95); in [0.5, 1]
    neg_threshold: float = 0.05  # binary: one of positive probability <= this is a negative pseudo-label, one
    # in between is ignored (seed 003: 0.05); in [0, 0.5] and below pos_threshold
    threshold_decay: float = 0.02  # binary: both thresholds move this much towards 0.5 in each round after the
    # first pseudo-labelled one (method rounds; seed 003: 0.95/0.05, 0.93/0.07, 0.91/0.09); the mean teacher
    # trains one round
    pos_weight: float = 1.0  # binary: weight of positive pixels in the BCE and focal terms (seed 003: 10 for
    # severe imbalance); 1 = unweighted
    point_radius: float = POINT_RADIUS  # splits labelled by points.json: pixels within this many pixels of a point
    # (one without a radius of its own) are its class
    point_ring: float = POINT_RING  # splits labelled by points.json: the ring this wide beyond each disk is ignored
    # (255: an object's uncertain edge is neither trained on nor scored)
    auc_bins: int = 256  # 2-class datasets: histogram bins of the positive-class probability behind val_auc

    # --- optimisation ---
    optimizer: str = "adamw"  # adamw | sgd
    lr: float = 3e-4  # peak learning rate
    weight_decay: float = 1e-4
    momentum: float = 0.9  # SGD only
    lr_schedule: str = "cosine"  # cosine | poly | constant, after warmup
    poly_power: float = 0.9
    warmup_iters: int = 1500  # linear LR warmup
    grad_clip: float = 10.0  # max gradient norm; 0 disables clipping
    max_iters: int = 75000
    divergence_factor: float = 100.0  # the run ends as diverged when a step's loss exceeds this times its early
    # reference, the median of the first DIVERGENCE_REFERENCE_STEPS finite step losses (those seen so far, before
    # then); 0 disables that check. A non-finite loss always ends the run

    # --- evaluation and early stopping ---
    eval_every: int = 500  # iterations between evaluations (and checkpoints)
    patience: int = 40  # evaluations without a new best `select_metric` before stopping; 0 disables
    select_metric: str = "val_miou"  # the val metric the run's best checkpoint, patience and each round's
    # labeller follow (`evaluation.selectable_metrics`: val_miou, val_f1 on 2 classes, val_iou/<class>, ...); a
    # sweep sets it to its own `metric`, so the trials keep the checkpoint the sweep ranks them by
    keep_last: int = 0  # also keep the EMA model of each of the last this-many evaluations (those within
    # keep_last x eval_every of the end) as last/ema_<iteration>.pt: the verdict scores their mean or their
    # averaged weights (sweep key confirm_score); 0 keeps none
    log_images: bool = True  # TensorBoard panels of input | truth | pseudo-label | prediction
    report_test: bool = False  # also report test_miou (EMA model) at each evaluation: for benchmarks only,
    # never used for selection or early stopping; needs ROOT/test

    # --- device and reproducibility ---
    device: str = "auto"  # auto | cpu | cuda
    num_threads: int = 0  # CPU threads for torch; 0 means the process's CPU allocation
    amp: str = "auto"  # CUDA only: auto (bf16 if supported else fp16) | bf16 | fp16 | off
    channels_last: bool = True  # memory layout of the model and batches on CUDA and CPU (faster convolutions on both)
    seed: int = 0

    # ------------------------------------------------------------------ construction

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The config's keys, in schema order."""
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> TrainConfig:
        """Build a config from plain data; unknown keys and bad values fail by name."""
        data = dict(data or {})
        known = set(cls.field_names())
        reject_unknown(data, known, "config key")
        hints = get_type_hints(cls)
        kwargs = {k: coerce(k, v, hints[k]) for k, v in data.items()}
        return cls(**_scale_schedules(kwargs))

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        """Read a config file: either plain keys, or an exported file with a `config:` section."""
        path = Path(path)
        data = read_yaml_mapping(path, "config file")
        if "config" in data and isinstance(data["config"], dict):
            data = data["config"]  # an exported best config carries provenance beside it
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed, validated like `from_dict`."""
        return TrainConfig.from_dict({**self.to_dict(), **changes})

    def as_supervised(self, **changes: Any) -> TrainConfig:
        """This config's model and data, method supervised (a shared stage, a control): no teacher, no rounds, the
        knobs only one method uses (every method's `knobs`, e.g. s4gan's) back at their defaults; then `changes`."""
        defaults = {k.name: k.default for k in all_knobs()}
        return self.replace(**{"method": "supervised", "teacher_checkpoint": None, **defaults,
                               **changes})

    def first_changed(self, keys: tuple[str, ...]) -> str | None:
        """The first of `keys` not at its default, or None."""
        return next((k for k in keys if getattr(self, k) != _field_default(k)), None)

    def with_absolute_paths(self) -> TrainConfig:
        """This config with `CHECKPOINT_KEYS` made absolute (from the current folder), for runs in another folder."""
        paths = {k: str(Path(v).expanduser().resolve()) for k in CHECKPOINT_KEYS if (v := getattr(self, k))}
        return self.replace(**paths) if paths else self

    def to_dict(self) -> dict[str, Any]:
        """Plain data (tuples become lists) that `from_dict` takes back unchanged. The knobs of a method no longer
        registered (`unregister`) are left out: another process (a Ray worker) would refuse them as unknown."""
        live = {k.name for spec in METHODS.values() for k in spec.knobs}
        out = {k: v for k, v in dataclasses.asdict(self).items()
               if k in live or "knob" not in getattr(TrainConfig.__dataclass_fields__[k], "metadata", {})}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    # ------------------------------------------------------------------ validation

    def __post_init__(self) -> None:
        if not isinstance(self.select_metric, str) or not self.select_metric.startswith("val_"):
            raise ConfigError(f"select_metric must be a val_ metric (val_miou, val_f1, val_iou/<class>, ...), got "
                              f"{self.select_metric!r}: the test split is never used to choose")
        _choice("arch", self.arch, ARCHS)
        self._check_decoder_channels()
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _choice("threshold_schedule", self.threshold_schedule, THRESHOLD_SCHEDULES)
        _choice("st_loss_normalization", self.st_loss_normalization, ST_LOSS_NORMALIZATIONS)
        _choice("teacher_tta", self.teacher_tta, TEACHER_TTAS)
        _choice("class_weighting", self.class_weighting, CLASS_WEIGHTINGS)
        _choice("device", self.device, DEVICES)
        _choice("amp", self.amp, AMP_DTYPES)
        if self.encoder_weights not in (None, "imagenet") and not isinstance(self.encoder_weights, str):
            raise ConfigError(f"encoder_weights must be null or a weights name, got {self.encoder_weights!r}")
        for name in ("crop_size", "batch_size", "unlabeled_batch_size", "max_iters", "eval_every"):
            _at_least(name, getattr(self, name), 1)
        for name in ("batch_size", "unlabeled_batch_size"):
            if getattr(self, name) < 2:
                raise ConfigError(f"{name} is {getattr(self, name)}: the model's BatchNorm layers need at least 2 "
                                  f"images per training batch; set {name} >= 2")
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"seed must be in [0, 2^32 - 1], got {self.seed!r}")
        for name in ("num_workers", "train_eval_size", "val_max_images", "warmup_iters", "st_start_iter",
                     "st_rampup_iters", "threshold_ramp_iters", "patience", "num_threads", "seed", "keep_last"):
            _at_least(name, getattr(self, name), 0)
        for name in ("lr",):
            if not (getattr(self, name) > 0 and math.isfinite(getattr(self, name))):
                raise ConfigError(f"{name} must be a positive number, got {getattr(self, name)!r}")
        for name in ("ce_weight", "focal_weight", "dice_weight", "focal_gamma", "st_weight", "weight_decay",
                     "grad_clip", "color_jitter", "poly_power", "momentum", "fp_weight", "divergence_factor"):
            v = getattr(self, name)
            if not (v >= 0 and math.isfinite(v)):
                raise ConfigError(f"{name} must be a finite number >= 0, got {v!r}")
        if self.ce_weight + self.focal_weight + self.dice_weight <= 0:
            raise ConfigError("ce_weight + focal_weight + dice_weight must be > 0, got all zero")
        if self.focal_alpha is not None and not 0 <= self.focal_alpha <= 1:
            raise ConfigError(f"focal_alpha must be in [0, 1] or null, got {self.focal_alpha!r}")
        if not 0 <= self.fp_dropout < 1:
            raise ConfigError(f"fp_dropout must be in [0, 1), got {self.fp_dropout!r}")
        if not 0 <= self.hue_jitter <= 0.5:
            raise ConfigError(f"hue_jitter must be in [0, 0.5], got {self.hue_jitter!r}")
        if len(self.blur_sigma) != 2 or not 0 < self.blur_sigma[0] <= self.blur_sigma[1] <= 10:
            raise ConfigError(f"blur_sigma must be [low, high] with 0 < low <= high <= 10, got {list(self.blur_sigma)!r}")
        for name in ("ema_decay", "cutmix_prob", "min_accept_ratio", "da_momentum", "grayscale_prob", "blur_prob"):
            v = getattr(self, name)
            if not 0 <= v <= 1:
                raise ConfigError(f"{name} must be in [0, 1], got {v!r}")
        if not 0.1 <= self.scale_min <= self.scale_max <= 10:  # near 0 a 1 px rescale fails inside torch (issue 35)
            raise ConfigError(
                f"scale_min and scale_max must satisfy 0.1 <= scale_min <= scale_max <= 10 (a rescale to under a "
                f"tenth, or over 10x, of an image is no augmentation), got scale_min={self.scale_min!r}, "
                f"scale_max={self.scale_max!r}"
            )
        if not self.thresholds:
            raise ConfigError("thresholds must list one value per class, got an empty list")
        for i, t in enumerate(self.thresholds):
            if not 0 <= t <= 1:
                raise ConfigError(f"thresholds[{i}] must be in [0, 1], got {t!r}")
        if not -1 <= self.threshold_start_offset <= 1:
            raise ConfigError(f"threshold_start_offset must be in [-1, 1], got {self.threshold_start_offset!r}")
        if self.class_weighting == "explicit" and not self.class_weights:
            raise ConfigError("class_weighting is 'explicit' but class_weights is empty")
        if self.class_weights and self.class_weighting != "explicit":
            raise ConfigError(f"class_weights is {list(self.class_weights)} but class_weighting is "
                              f"{self.class_weighting!r}, which ignores it; set class_weighting: explicit or drop "
                              "class_weights")
        if self.class_weights is not None:
            for i, w in enumerate(self.class_weights):
                if not (w >= 0 and math.isfinite(w)):
                    raise ConfigError(f"class_weights[{i}] must be a finite number >= 0, got {w!r}")
        if not self.ignore_index >= 0:
            raise ConfigError(f"ignore_index must be >= 0, got {self.ignore_index!r}")
        for name in CHECKPOINT_KEYS:
            if getattr(self, name) is not None and not str(getattr(self, name)).strip():
                raise ConfigError(f"{name} must be null or a path, got {getattr(self, name)!r}")
        for knob in all_knobs():
            knob.check(getattr(self, knob.name))
        self._check_method()
        self._check_binary()

    def _check_decoder_channels(self) -> None:
        """`decoder_channels`: empty, or as many positive widths as the architecture's decoder takes."""
        if not self.decoder_channels:
            return
        n = DECODER_CHANNELS.get(self.arch)
        if n is None:
            takes = ", ".join(DECODER_CHANNELS)
            raise ConfigError(f"decoder_channels is {list(self.decoder_channels)}, but arch {self.arch!r} has no such "
                              f"knob (architectures that take it: {takes}); drop decoder_channels")
        if len(self.decoder_channels) != n:
            raise ConfigError(f"decoder_channels has {len(self.decoder_channels)} values, arch {self.arch!r} takes "
                              f"{n} (one per decoder stage{', e.g. [64, 32, 16, 16, 16]' if n == 5 else ''})")
        for i, c in enumerate(self.decoder_channels):
            if c < 1:
                raise ConfigError(f"decoder_channels[{i}] must be a whole number of channels >= 1, got {c!r}")

    def round_lengths(self) -> tuple[int, ...]:
        """Iterations of each round this run trains (`MethodSpec.stage_lengths`: one entry for methods without
        rounds)."""
        return get_method(self.method).stage_lengths(self)

    def _check_method(self) -> None:
        """The method is a registered one; no other method's own knobs are changed, nor a shared knob the method
        ignores; then the method's own checks."""
        method = get_method(self.method)
        for other in METHODS.values():
            theirs = tuple(k for k in other.own_knobs if k not in method.shares)  # rounds reads the mean teacher's heads
            if other is not method and (key := self.first_changed(theirs)):
                users = " or ".join([other.name, *(m.name for m in METHODS.values() if key in m.shares)])
                raise ConfigError(f"{key} is {getattr(self, key)!r}, but only method {users} uses it (method is "
                                  f"{self.method!r}); set method {users} or drop {key}")
        method.check_unused(self)
        method.check(self)
        self._check_schedules(method)

    def _check_schedules(self, method: MethodSpec) -> None:
        """A schedule longer than the run (with rounds: than a round, each has its own) never ends: the LR never
        reaches its peak, self-training never starts or never reaches its weight, the thresholds never their end
        value. Refused by name with the fix, before any work (a 300-iteration run with the default 1,500-iteration
        warmup trained at LR <= 3e-5 throughout and made a verdict compare against an untrained control)."""
        run = min(method.stage_lengths(self))
        span = f"max_iters {self.max_iters}" if len(method.stage_lengths(self)) == 1 else f"its shortest round, {run}"
        checks = [("warmup_iters", self.warmup_iters, run)]
        if method.self_training and not self.binary:
            checks += [("st_start_iter", self.st_start_iter, run - 1),
                       ("st_start_iter + st_rampup_iters", self.st_start_iter + self.st_rampup_iters, run)]
            if self.threshold_schedule == "linear":
                checks.append(("st_start_iter + threshold_ramp_iters", self.st_start_iter + self.threshold_ramp_iters,
                               run))
        for name, value, limit in checks:
            if value > limit:
                raise ConfigError(f"{name} is {value}, longer than the run ({span} iterations): that schedule would "
                                  f"never finish; set {name.split(' + ')[-1]} so that {name} <= {limit} (e.g. a "
                                  f"tenth of the run, {max(0, run // 10)})")

    def for_classes(self, num_classes: int) -> TrainConfig:
        """This config fitted to a dataset of `num_classes` classes: a one-value `thresholds` (or explicit
        `class_weights`) is repeated for every class, and the default thresholds (V3.1's 7 values) become
        UNIFORM_THRESHOLD for each class of a dataset without 7 classes. Any other count that differs from the
        dataset's is a ConfigError saying how to fix it. The loop and the sweep planner train the fitted config."""
        changes: dict[str, Any] = {}
        if len(self.thresholds) != num_classes:
            if len(self.thresholds) == 1:
                changes["thresholds"] = self.thresholds * num_classes
            elif self.thresholds == V31_THRESHOLDS:
                changes["thresholds"] = (UNIFORM_THRESHOLD,) * num_classes
        weights = self.class_weights or ()
        if self.class_weighting == "explicit" and len(weights) == 1 and num_classes != 1:
            changes["class_weights"] = weights * num_classes
        fitted = self.replace(**changes) if changes else self
        fitted.check_num_classes(num_classes)
        return fitted

    def _check_binary(self) -> None:
        """Binary mode's knobs (and the point labels' radius and ring): in range; neg_threshold below pos_threshold;
        with binary off, its own knobs at their defaults; with it on, no knob it does not use."""
        for name in ("point_radius", "point_ring"):
            v = getattr(self, name)
            if not (v >= 0 and math.isfinite(v)):
                raise ConfigError(f"{name} must be a finite number of pixels >= 0, got {v!r}")
        _at_least("auc_bins", self.auc_bins, 2)
        if not (self.pos_weight > 0 and math.isfinite(self.pos_weight)):
            raise ConfigError(f"pos_weight must be a positive number, got {self.pos_weight!r}")
        if not 0.5 <= self.pos_threshold <= 1:
            raise ConfigError(f"pos_threshold must be in [0.5, 1], got {self.pos_threshold!r}")
        if not 0 <= self.neg_threshold <= 0.5:
            raise ConfigError(f"neg_threshold must be in [0, 0.5], got {self.neg_threshold!r}")
        if self.neg_threshold >= self.pos_threshold:
            raise ConfigError(f"neg_threshold {self.neg_threshold!r} must be below pos_threshold {self.pos_threshold!r} "
                              "(pixels in between are ignored)")
        if not 0 <= self.threshold_decay <= 0.5:
            raise ConfigError(f"threshold_decay must be in [0, 0.5], got {self.threshold_decay!r}")
        if not self.binary:
            if key := self.first_changed(("pos_threshold", "neg_threshold", "threshold_decay", "pos_weight")):
                raise ConfigError(f"{key} is {getattr(self, key)!r}, but it is a knob of binary mode and binary is "
                                  f"false; set binary: true (a 2-class dataset) or drop {key}")
            return
        if not get_method(self.method).binary:
            able = [name for name, spec in METHODS.items() if spec.binary]
            names = " and ".join([", ".join(able[:-1]), able[-1]] if len(able) > 1 else able)
            raise ConfigError(f"binary mode works with methods {names}, not "
                              f"{self.method}; set binary: false or another method")
        unused = {"min_accept_ratio": (self.min_accept_ratio, 0.0), "distribution_alignment":
                  (self.distribution_alignment, False), "threshold_schedule": (self.threshold_schedule, "constant")}
        for key, (value, off) in unused.items():
            if value != off:
                raise ConfigError(f"{key} is {value!r}, but binary mode does not use it (its pseudo-labels come from "
                                  f"pos_threshold and neg_threshold); set {key} to {off!r} or binary to false")

    def check_num_classes(self, num_classes: int) -> None:
        """Per-class fields must match the dataset's class count (`for_classes` fits them first)."""
        if self.binary and num_classes != 2:
            raise ConfigError(f"binary mode needs a dataset of 2 classes (background and the positive class), but it "
                              f"has {num_classes}; set binary: false for a {num_classes}-class dataset")
        fix = f"give one value per class ({num_classes}) or one value for all"
        if len(self.thresholds) != num_classes:
            raise ConfigError(
                f"thresholds has {len(self.thresholds)} values but the dataset has {num_classes} classes: {fix}, "
                "e.g. thresholds=[0.5]"
            )
        if self.class_weighting == "explicit" and len(self.class_weights or ()) != num_classes:
            raise ConfigError(
                f"class_weights has {len(self.class_weights or ())} values but the dataset has "
                f"{num_classes} classes: {fix}"
            )
        if self.ignore_index < num_classes:
            raise ConfigError(
                f"ignore_index {self.ignore_index} collides with a class id (the dataset has {num_classes} classes)"
            )


def _add_knobs(spec: MethodSpec) -> None:
    """Make `spec`'s knobs fields of TrainConfig, in place (the class stays the one every module imported): the
    dataclass is rebuilt with them and its generated methods and field table are moved onto TrainConfig. A knob
    named like a field of the config, or another method's with another type or default, is refused."""
    table = TrainConfig.__dataclass_fields__
    new = []
    for knob in spec.knobs:
        held = table.get(knob.name)
        if held is None:
            new.append(knob)
        elif getattr(held, "metadata", {}).get("knob") != (knob.type, knob.default):
            raise ValueError(f"method {spec.name!r}: knob {knob.name!r} is already a config field")
    if not new:
        return
    kept = [(f.name, f.type, f) for f in table.values()]
    added = [(k.name, k.type, dataclasses.field(default=k.default, metadata={"knob": (k.type, k.default),
                                                                             "doc": k.doc})) for k in new]
    built = dataclasses.make_dataclass("TrainConfig", kept + added, frozen=True,
                                       namespace={"__post_init__": TrainConfig.__post_init__})
    for name in ("__init__", "__repr__", "__eq__", "__hash__", "__match_args__", "__dataclass_fields__"):
        setattr(TrainConfig, name, built.__dict__[name])
    TrainConfig.__annotations__.update({k.name: k.type for k in new})
    for k in new:
        setattr(TrainConfig, k.name, k.default)


for _spec in METHODS.values():
    _add_knobs(_spec)
on_register(_add_knobs)


def demo_config(**overrides: Any) -> TrainConfig:
    """V3.1 scaled to the demo data: 64 px tiles on 2 CPU cores.

    V3.1 runs 75,000 iterations with warmup 1,500 (2%), ST from 500, eval every 500 and patience
    40 evaluations (20,000 iterations, 27%). The demo keeps those fractions of a 1,200-iteration
    run: warmup 24 → rounded to 30, ST start 8 → 40 (the demo model needs ~40 steps before its
    pseudo-labels mean anything), eval every 50, patience 6 evaluations (300 iterations, 25%).
    """
    base: dict[str, Any] = dict(
        arch="Unet", encoder="resnet18", crop_size=64, batch_size=8, unlabeled_batch_size=8,
        max_iters=1200, warmup_iters=30, st_start_iter=40, st_rampup_iters=100,
        threshold_ramp_iters=600, eval_every=50, patience=6, ema_decay=0.99, train_eval_size=16,
    )
    base.update(overrides)
    return TrainConfig.from_dict(base)


# ---------------------------------------------------------------------- shared helpers

_EXPONENT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def parse_sets(items: list[str]) -> dict[str, Any]:
    """`--set KEY=VALUE` items -> {key: value}, each value read as YAML: ["lr=1e-3", "thresholds=[0.5, 0.6]"]
    -> {"lr": 0.001, "thresholds": [0.5, 0.6]}. A malformed item is one ConfigError naming the key and the value."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {key}: value {text!r} is not valid YAML ({_yaml_problem(exc)}); a value with "
                              "spaces needs quotes in the shell, e.g. --set 'thresholds=[0.5, 0.6]'") from None
        if isinstance(value, str) and _EXPONENT.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
        out[key] = value
    return out


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """The parser's complaint on one line: "expected ..., but found ... at column 6"."""
    problem = getattr(exc, "problem", None)
    mark = getattr(exc, "problem_mark", None)
    if not problem:
        return " ".join(str(exc).split())
    return f"{problem} at column {mark.column + 1}" if mark is not None else str(problem)



def read_yaml_mapping(path: Path, what: str) -> dict[str, Any]:
    """A YAML file holding a mapping; fails naming the file (`what` says which kind of file)."""
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must hold a mapping of keys, got {type(data).__name__}")
    return data


def reject_unknown(data: dict[str, Any], known: set[str] | list[str], what: str) -> None:
    """Fail on the first key not in `known`, with a did-you-mean."""
    for key in data:
        if key not in known:
            hint = difflib.get_close_matches(str(key), sorted(known), n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ConfigError(f"unknown {what} {key!r}{extra}")


# ---------------------------------------------------------------------- coercion helpers


def _choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}; got {value!r}")


class ScheduleScaled(UserWarning):
    """A schedule left at its default was scaled to a shorter run (`_scale_schedules`)."""


def _scale_schedules(given: dict[str, Any]) -> dict[str, Any]:
    """The schedules' defaults are for the default run (max_iters 75,000: warmup 1,500, ST from 500, ramp 1,000,
    threshold ramp 10,000). With a shorter `max_iters` given, each schedule not given whose default could not finish
    in it (what `TrainConfig._check_schedules` would refuse) is scaled by max_iters / 75,000 (300 iterations warm up
    for 6), and a warning names it; a schedule given explicitly is never changed (the check refuses it, by name,
    when it cannot finish)."""
    import warnings

    n, full = given.get("max_iters"), _field_default("max_iters")
    if not isinstance(n, int) or isinstance(n, bool) or not 0 < n < full:
        return given
    out = dict(given)

    def value(key: str) -> int:
        return int(out.get(key, _field_default(key)))

    try:
        self_training = get_method(str(out.get("method", _field_default("method")))).self_training
    except ConfigError:
        self_training = True  # an unknown method is refused by name later
    too_long = {"warmup_iters": lambda: value("warmup_iters") > n}
    if self_training:
        too_long["st_start_iter"] = lambda: value("st_start_iter") >= n
        too_long["st_rampup_iters"] = lambda: value("st_start_iter") + value("st_rampup_iters") > n
        if out.get("threshold_schedule") == "linear":
            too_long["threshold_ramp_iters"] = lambda: value("st_start_iter") + value("threshold_ramp_iters") > n
    for key, cannot_finish in too_long.items():
        if key in given or not cannot_finish():
            continue
        default = _field_default(key)
        out[key] = default * n // full
        warnings.warn(f"{key} left at its default {default} (for max_iters {full}) could not finish in max_iters {n}; "
                      f"scaled to {out[key]}. Set {key} to choose it", ScheduleScaled, stacklevel=3)
    return out


def _field_default(name: str) -> Any:
    """TrainConfig's default for field `name`."""
    return TrainConfig.__dataclass_fields__[name].default


def _at_least(key: str, value: int, low: int) -> None:
    if value < low:
        raise ConfigError(f"{key} must be >= {low}, got {value!r}")


__all__ = [
    "CHECKPOINT_KEYS", "DIVERGENCE_REFERENCE_STEPS", "UNIFORM_THRESHOLD", "V31_THRESHOLDS", "TrainConfig", "demo_config",
    "parse_sets",
]
