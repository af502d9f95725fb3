"""Building the model and its optimizer, and loading an earlier run's weights into it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import segmentation_models_pytorch as smp
import torch

from selftune.errors import ConfigError, DataError
from selftune.trainable import checkpoint as ckpt
from selftune.trainable.config import TrainConfig
from selftune.trainable.heads import load_without_heads, replace_head
from selftune.trainable.methods import get_method


def build_model(cfg: TrainConfig, num_classes: int) -> torch.nn.Module:
    """smp.create_model(arch, encoder, encoder_weights) with one output channel per class, or one in all in binary
    mode (`cfg.binary`: the positive class's logit, for a sigmoid); a bad name fails as ConfigError naming it."""
    _check_encoder(cfg.encoder)
    check_encoder_weights(cfg.encoder, cfg.encoder_weights)
    decoder = {}
    if cfg.decoder_channels:  # the config checked the architecture takes it, and how many values
        dc = cfg.decoder_channels
        decoder["decoder_channels"] = list(dc) if len(dc) > 1 else dc[0]
    try:
        model = smp.create_model(cfg.arch, encoder_name=cfg.encoder, encoder_weights=cfg.encoder_weights,
                                 in_channels=3, classes=1 if cfg.binary else num_classes, **decoder)
    except Exception as exc:  # smp/timm raise KeyError, ValueError, RuntimeError, download errors...
        raise ConfigError(
            f"cannot build arch={cfg.arch!r} with encoder={cfg.encoder!r}, encoder_weights={cfg.encoder_weights!r}: "
            f"{str(exc)[:500]}"
        ) from exc
    if (heads := get_method(cfg.method).heads(cfg)) is not None:  # the method's own heads (`MethodSpec.heads`)
        replace_head(model, heads.count, heads.dropout, cfg.arch)
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


def load_weights(model: torch.nn.Module, loaded: LoadedWeights, key: str, what: str) -> None:
    """Load `loaded` into `model`; a mismatch fails as ConfigError naming the key, the file and both models. A model
    with a method's heads takes a one-head model's encoder and decoder, its heads keeping their init
    (`heads.load_without_heads`)."""
    try:
        model.load_state_dict(loaded.weights)
    except RuntimeError as exc:
        if load_without_heads(model, loaded.weights, f"{key} {loaded.info['file']}"):  # a one-head model's body
            return
        first = str(exc).strip().splitlines()
        raise ConfigError(
            f"{key}: {loaded.info['file']} holds a {loaded.config.arch}/{loaded.config.encoder} model that does not "
            f"fit {what}: {' '.join(first[:2])[:300]}"
        ) from None


def check_encoder_weights(encoder: str, weights: str | None) -> None:
    """`weights` must be null or a weight set smp knows for `encoder` (a timm `tu-` encoder: "imagenet", its
    pretrained default); else a ConfigError at once, instead of retrying the hub for a minute."""
    if weights is None:
        return
    if encoder.startswith("tu-"):
        known: list[str] = ["imagenet"]
    else:
        known = list(smp.encoders.encoders.get(encoder, {}).get("pretrained_settings", {}))
    if weights not in known:
        raise ConfigError(f"encoder_weights {weights!r} is not a weight set of encoder {encoder!r} (known: "
                          f"{', '.join(known) or 'none'}); use null for random init")


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


__all__ = ["LoadedWeights", "build_model", "build_optimizer", "input_multiple", "load_weights", "weights_from"]
