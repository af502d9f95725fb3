"""Augmentations as small pure functions on tensors.

Every random choice comes from the `torch.Generator` passed in, so a sample's augmentation is a
pure function of (input, generator seed): `make_batches` relies on that for exact resume.

Per-sample geometry (`scale_crop_flip`) runs in the data loader on uint8 tensors; the batch-level
strong augmentations (`color_jitter`, `photometric`, `cutmix_boxes` + `apply_cutmix`) run in the training
loop on normalised float batches, on any device (their random numbers are drawn on the CPU generator).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# ITU-R 601 luma weights, as torchvision's rgb_to_grayscale.
_LUMA = (0.299, 0.587, 0.114)

Transform = Callable[..., tuple[torch.Tensor, torch.Tensor | None]]


def _uniform(generator: torch.Generator, n: int = 1) -> torch.Tensor:
    return torch.rand(n, generator=generator, dtype=torch.float64)


def scale_crop_flip(
    image: torch.Tensor,
    mask: torch.Tensor | None,
    *,
    crop: int,
    scale_min: float,
    scale_max: float,
    hflip: bool,
    vflip: bool,
    ignore_index: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Random rescale, pad to `crop`, random `crop` x `crop` window, random flips.

    Args:
        image: uint8 [3, H, W].
        mask: int64 [H, W] class ids, or None for unlabelled images.
        crop: output side in pixels.
        scale_min, scale_max: the rescale factor is uniform in this range (bilinear for the
            image, nearest for the mask).
        hflip, vflip: allow a horizontal / vertical flip, each with probability 0.5.
        ignore_index: mask value used for padding (the image pads with 0).
        generator: the source of every random number.

    The generator is consumed the same way whatever the flags, so turning a flip off does not
    change the crops. Returns (uint8 [3, crop, crop], int64 [crop, crop] or None).
    """
    u = _uniform(generator, 5)  # scale, top, left, hflip coin, vflip coin
    _, h, w = image.shape
    s = scale_min + (scale_max - scale_min) * float(u[0])
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    if (nh, nw) != (h, w):
        # uint8 in, uint8 out: torch's uint8 bilinear kernel rounds, and skips float round trips
        image = F.interpolate(image[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
        if mask is not None:  # class ids and the ignore value fit in uint8
            m = F.interpolate(mask[None, None].to(torch.uint8), size=(nh, nw), mode="nearest-exact")
            mask = m[0, 0].to(torch.int64)
    ph, pw = max(0, crop - nh), max(0, crop - nw)
    if ph or pw:  # pad bottom/right; the random crop below moves the padding around
        image = F.pad(image, (0, pw, 0, ph), value=0)
        if mask is not None:
            mask = F.pad(mask, (0, pw, 0, ph), value=ignore_index)
    hh, ww = image.shape[-2:]
    top = min(int(float(u[1]) * (hh - crop + 1)), hh - crop)
    left = min(int(float(u[2]) * (ww - crop + 1)), ww - crop)
    image = image[:, top : top + crop, left : left + crop]
    if mask is not None:
        mask = mask[top : top + crop, left : left + crop]
    dims = [d for d, on, coin in ((-1, hflip, u[3]), (-2, vflip, u[4])) if on and float(coin) < 0.5]
    if dims:
        image = image.flip(dims)
        mask = mask.flip(dims) if mask is not None else None
    return image.contiguous(), (mask.contiguous() if mask is not None else None)


def crop_transform(
    *, crop: int, scale_min: float, scale_max: float, hflip: bool, vflip: bool, ignore_index: int
) -> Transform:
    """`scale_crop_flip` with its settings bound: a picklable `transform(image, mask, generator=g)`."""
    return functools.partial(
        scale_crop_flip, crop=crop, scale_min=scale_min, scale_max=scale_max,
        hflip=hflip, vflip=vflip, ignore_index=ignore_index,
    )


def _stats(like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=like.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=like.device).view(3, 1, 1)
    return mean, std


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 [..., 3, H, W] -> float32 ImageNet-normalised, on the same device."""
    mean, std = _stats(images)
    return (images.float() / 255.0 - mean) / std


def denormalize(images: torch.Tensor) -> torch.Tensor:
    """The inverse of `normalize`, rounded and clipped: float [..., 3, H, W] -> uint8 (for image panels)."""
    mean, std = _stats(images)
    return ((images.float() * std + mean) * 255.0).round_().clamp_(0, 255).to(torch.uint8)


def adjust_colors(
    images01: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor, saturation: torch.Tensor
) -> torch.Tensor:
    """Brightness, then contrast, then saturation, on [B, 3, H, W] images in [0, 1].

    Each factor is a [B] tensor; 1 leaves the image unchanged. Contrast blends with the image's
    mean grey level, saturation with the pixel's grey level (torchvision's definitions).
    Output is clipped to [0, 1].
    """
    luma = torch.tensor(_LUMA, dtype=images01.dtype, device=images01.device).view(1, 3, 1, 1)

    def per_image(f: torch.Tensor) -> torch.Tensor:
        return f.to(images01.device, images01.dtype).view(-1, 1, 1, 1)

    x = (images01 * per_image(brightness)).clamp(0, 1)
    mean_grey = (x * luma).sum(1, keepdim=True).mean((2, 3), keepdim=True)
    x = ((x - mean_grey) * per_image(contrast) + mean_grey).clamp(0, 1)
    grey = (x * luma).sum(1, keepdim=True)
    return ((x - grey) * per_image(saturation) + grey).clamp(0, 1)


def color_jitter(images: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Random brightness, contrast and saturation per image, each factor uniform in [1-s, 1+s].

    `images` are ImageNet-normalised float [B, 3, H, W]; so is the result. strength 0 is the
    identity (up to float rounding).
    """
    b = images.shape[0]
    f = 1.0 + strength * (2.0 * torch.rand(3, b, generator=generator) - 1.0)
    f = f.clamp_min(0.0)
    mean, std = _stats(images)
    x01 = images.float() * std + mean
    out = adjust_colors(x01, f[0], f[1], f[2])
    return ((out - mean) / std).to(images.dtype)


def photometric(
    images: torch.Tensor,
    generator: torch.Generator,
    *,
    hue: float = 0.0,
    grayscale_prob: float = 0.0,
    blur_prob: float = 0.0,
    blur_sigma: tuple[float, ...] = (0.1, 2.0),  # (low, high)
) -> torch.Tensor:
    """The rest of UniMatch's strong augmentation, per image: a hue shift uniform in [-hue, hue]
    (a fraction of the colour circle, torchvision's `adjust_hue`), then greyscale with probability
    `grayscale_prob`, then a Gaussian blur with sigma uniform in `blur_sigma` with probability
    `blur_prob` (kernel 2*ceil(3*sigma)+1, at most 2*side-1; reflect padding).

    `images` are ImageNet-normalised float [B, 3, H, W]; so is the result. With all three off it
    returns `images` and draws nothing from `generator`; otherwise it draws 4 numbers per image,
    whatever the settings.
    """
    if hue == 0 and grayscale_prob == 0 and blur_prob == 0:
        return images
    b = images.shape[0]
    u = torch.rand(4, b, generator=generator, dtype=torch.float64)
    mean, std = _stats(images)
    x = (images.float() * std + mean).clamp(0, 1)
    out = []
    for i in range(b):
        xi = x[i]
        if hue > 0:
            xi = TF.adjust_hue(xi, float(hue * (2 * u[0, i] - 1)))
        if u[1, i] < grayscale_prob:
            xi = TF.rgb_to_grayscale(xi, num_output_channels=3)
        if u[2, i] < blur_prob:
            sigma = float(blur_sigma[0] + (blur_sigma[1] - blur_sigma[0]) * u[3, i])
            k = min(2 * math.ceil(3 * sigma) + 1, 2 * min(xi.shape[-2:]) - 1)  # reflect padding < image side
            xi = TF.gaussian_blur(xi, [k, k], [sigma, sigma])
        out.append(xi)
    return ((torch.stack(out) - mean) / std).to(images.dtype)


def cutmix_boxes(
    batch: int,
    h: int,
    w: int,
    prob: float,
    generator: torch.Generator,
    *,
    area: tuple[float, float] = (0.02, 0.4),
    ratio: tuple[float, float] = (0.3, 1 / 0.3),
) -> torch.Tensor:
    """One random box per image, present with probability `prob`: bool [B, H, W], True inside it.

    Box area is uniform in `area` (fraction of the image), aspect ratio log-uniform in `ratio`
    (UniMatch's CutMix box). The generator is consumed the same way whatever `prob`.
    Built on the CPU; move it with `.to(device)`.
    """
    u = torch.rand(6, batch, generator=generator, dtype=torch.float64)
    on = u[0] < prob
    a = (area[0] + (area[1] - area[0]) * u[1]) * h * w
    r = torch.exp(math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[2])
    bh = torch.sqrt(a * r).round().clamp(1, h).long()
    bw = torch.sqrt(a / r).round().clamp(1, w).long()
    top = (u[3] * (h - bh + 1)).floor().long().clamp(max=h - bh)
    left = (u[4] * (w - bw + 1)).floor().long().clamp(max=w - bw)
    rows = torch.arange(h).view(1, h, 1)
    cols = torch.arange(w).view(1, 1, w)
    inside_r = (rows >= top.view(-1, 1, 1)) & (rows < (top + bh).view(-1, 1, 1))
    inside_c = (cols >= left.view(-1, 1, 1)) & (cols < (left + bw).view(-1, 1, 1))
    return inside_r & inside_c & on.view(-1, 1, 1)


def apply_cutmix(x: torch.Tensor, box: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Paste `x[perm]` into `x` inside `box` (bool [B, H, W]).

    `x` is [B, C, H, W] (images, logits) or [B, H, W] (labels, confidences); returns a new tensor.
    """
    m = box.to(x.device)
    if x.dim() == 4:
        m = m[:, None]
    return torch.where(m, x[perm.to(x.device)], x)


__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "adjust_colors",
    "apply_cutmix",
    "color_jitter",
    "crop_transform",
    "cutmix_boxes",
    "denormalize",
    "normalize",
    "photometric",
    "scale_crop_flip",
]
