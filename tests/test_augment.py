"""Augmentations on tiny hand-made tensors."""

from __future__ import annotations

import pickle

import pytest
import torch

from selftune.trainable.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    adjust_colors,
    apply_cutmix,
    color_jitter,
    crop_transform,
    cutmix_boxes,
    denormalize,
    normalize,
    photometric,
    scale_crop_flip,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def image_and_mask(h: int = 4, w: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    mask = torch.arange(h * w).view(h, w) % 7
    image = torch.stack([mask * 10, mask * 10 + 1, mask * 10 + 2]).to(torch.uint8)  # pixel = its mask id
    return image, mask


def flips(x: torch.Tensor) -> list[torch.Tensor]:
    return [x, x.flip(-1), x.flip(-2), x.flip([-1, -2])]


def test_identity_when_nothing_random() -> None:
    image, mask = image_and_mask()
    out_i, out_m = scale_crop_flip(image, mask, crop=4, scale_min=1, scale_max=1, hflip=False, vflip=False,
                                   ignore_index=255, generator=gen())
    assert torch.equal(out_i, image) and torch.equal(out_m, mask)


def test_crop_and_flip_keep_image_and_mask_aligned() -> None:
    image, mask = image_and_mask(6, 6)
    seen = set()
    for seed in range(40):
        out_i, out_m = scale_crop_flip(image, mask, crop=3, scale_min=1, scale_max=1, hflip=True, vflip=True,
                                       ignore_index=255, generator=gen(seed))
        assert out_i.shape == (3, 3, 3) and out_i.dtype == torch.uint8
        assert out_m.shape == (3, 3) and out_m.dtype == torch.int64
        assert torch.equal(out_i[0].long(), out_m * 10)  # every pixel still carries its own label
        found = [f for f in range(4) for t in range(4) for l in range(4)  # noqa: E741
                 if torch.equal(flips(mask[t : t + 3, l : l + 3])[f], out_m)]
        assert found
        seen.add(found[0])
    assert seen == {0, 1, 2, 3}  # all four flip combinations occur


def test_pad_to_crop_with_zero_and_ignore() -> None:
    image, mask = image_and_mask(2, 2)
    out_i, out_m = scale_crop_flip(image, mask, crop=4, scale_min=1, scale_max=1, hflip=False, vflip=False,
                                   ignore_index=255, generator=gen())
    assert torch.equal(out_m[:2, :2], mask) and (out_m[2:] == 255).all() and (out_m[:, 2:] == 255).all()
    assert torch.equal(out_i[:, :2, :2], image) and (out_i[:, 2:] == 0).all()


def test_scale_up_uses_nearest_for_masks() -> None:
    image, mask = image_and_mask(4, 4)
    out_i, out_m = scale_crop_flip(image, mask, crop=8, scale_min=2, scale_max=2, hflip=False, vflip=False,
                                   ignore_index=255, generator=gen())
    assert torch.equal(out_m, mask.repeat_interleave(2, 0).repeat_interleave(2, 1))  # exact 2x nearest
    assert out_i.shape == (3, 8, 8)
    _, small = scale_crop_flip(image, mask, crop=4, scale_min=0.5, scale_max=0.5, hflip=False, vflip=False,
                               ignore_index=255, generator=gen())
    assert set(small[:2, :2].unique().tolist()) <= set(mask.unique().tolist())  # no invented ids
    assert (small[2:] == 255).all()


def test_unlabelled_and_determinism() -> None:
    image, _ = image_and_mask(8, 8)
    a, none = scale_crop_flip(image, None, crop=5, scale_min=0.9, scale_max=1.3, hflip=True, vflip=True,
                              ignore_index=255, generator=gen(7))
    b, _ = scale_crop_flip(image, None, crop=5, scale_min=0.9, scale_max=1.3, hflip=True, vflip=True,
                           ignore_index=255, generator=gen(7))
    assert none is None and torch.equal(a, b)
    # the generator is consumed the same way whatever the flags: flips off changes only the flips
    c, _ = scale_crop_flip(image, None, crop=5, scale_min=0.9, scale_max=1.3, hflip=False, vflip=False,
                           ignore_index=255, generator=gen(7))
    assert any(torch.equal(c, f) for f in flips(a))


def test_crop_transform_is_picklable_and_equivalent() -> None:
    tf = pickle.loads(pickle.dumps(crop_transform(crop=3, scale_min=1, scale_max=1.5, hflip=True, vflip=True,
                                                  ignore_index=255)))
    image, mask = image_and_mask()
    got = tf(image, mask, generator=gen(3))
    want = scale_crop_flip(image, mask, crop=3, scale_min=1, scale_max=1.5, hflip=True, vflip=True,
                           ignore_index=255, generator=gen(3))
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_normalize_reference_and_round_trip() -> None:
    white = torch.full((1, 3, 1, 1), 255, dtype=torch.uint8)
    expect = [(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)]
    assert normalize(white).flatten().tolist() == pytest.approx(expect, rel=1e-6)
    assert normalize(white).dtype == torch.float32
    x = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8, generator=gen())
    assert torch.equal(denormalize(normalize(x)), x)


def test_adjust_colors_reference_values() -> None:
    x = torch.tensor([[[[0.2, 0.6]], [[0.4, 0.4]], [[0.6, 0.2]]]])  # [1, 3, 1, 2]
    one = torch.ones(1)
    assert torch.allclose(adjust_colors(x, one, one, one), x)
    assert torch.allclose(adjust_colors(x, torch.tensor([2.0]), one, one), (x * 2).clamp(0, 1))
    grey = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]  # [1, 1, 2]
    no_sat = adjust_colors(x, one, one, torch.zeros(1))
    assert torch.allclose(no_sat, grey[:, None].expand_as(x))
    no_contrast = adjust_colors(x, one, torch.zeros(1), one)
    assert torch.allclose(no_contrast, torch.full_like(x, float(grey.mean())))


def test_color_jitter() -> None:
    x = normalize(torch.randint(0, 256, (3, 3, 4, 4), dtype=torch.uint8, generator=gen()))
    assert torch.allclose(color_jitter(x, 0.0, gen()), x, atol=1e-5)
    a, b = color_jitter(x, 0.5, gen(1)), color_jitter(x, 0.5, gen(1))
    assert torch.equal(a, b) and a.shape == x.shape and a.dtype == torch.float32
    assert not torch.allclose(a, x)
    back = denormalize(a)  # still a valid image in [0, 255]
    assert back.dtype == torch.uint8
    flat = normalize(torch.full((2, 3, 2, 2), 128, dtype=torch.uint8))  # a uniform grey stays uniform
    out = color_jitter(flat, 0.8, gen(2))
    assert torch.allclose(out, out[:, :, :1, :1].expand_as(out))


def _normalized(x01: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x01 - mean) / std


def _unnormalized(x: torch.Tensor) -> torch.Tensor:
    return x * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)


def test_photometric_off_is_the_identity_and_draws_nothing() -> None:
    x = normalize(torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8, generator=gen()))
    g = gen(7)
    assert photometric(x, g) is x
    assert torch.equal(torch.rand(3, generator=g), torch.rand(3, generator=gen(7)))


def test_photometric_greyscale_blur_and_hue() -> None:
    x = normalize(torch.randint(0, 256, (4, 3, 9, 9), dtype=torch.uint8, generator=gen()))
    grey = _unnormalized(photometric(x, gen(1), grayscale_prob=1.0))
    assert torch.allclose(grey[:, 0], grey[:, 1], atol=1e-5) and torch.allclose(grey[:, 1], grey[:, 2], atol=1e-5)
    a, b = photometric(x, gen(2), hue=0.2, blur_prob=0.5), photometric(x, gen(2), hue=0.2, blur_prob=0.5)
    assert torch.equal(a, b) and a.shape == x.shape

    # blur with sigma 1: a white dot becomes the outer product of the normalised 7-tap Gaussian
    dot = torch.zeros(1, 3, 9, 9)
    dot[..., 4, 4] = 1.0
    out = _unnormalized(photometric(_normalized(dot), gen(3), blur_prob=1.0, blur_sigma=(1.0, 1.0)))
    g = torch.exp(-torch.arange(-3, 4, dtype=torch.float32) ** 2 / 2)
    g = g / g.sum()
    assert torch.allclose(out[0, 0, 1:8, 1:8], g[:, None] * g[None, :], atol=1e-5)
    flat = photometric(_normalized(torch.full((1, 3, 5, 5), 0.5)), gen(4), blur_prob=1.0)  # a flat image stays flat
    assert torch.allclose(_unnormalized(flat), torch.full((1, 3, 5, 5), 0.5), atol=1e-5)

    # hue: pure red keeps value 1 and saturation 1; its hue moves by at most 0.1 of the circle (36 degrees),
    # so the second-largest channel stays <= 6 * 0.1; grey has no hue and stays grey
    red = torch.zeros(16, 3, 2, 2)
    red[:, 0] = 1.0
    shifted = _unnormalized(photometric(_normalized(red), gen(5), hue=0.1))
    top = shifted.max(dim=1).values
    bottom = shifted.min(dim=1).values
    middle = shifted.sum(dim=1) - top - bottom
    assert torch.allclose(top, torch.ones_like(top), atol=1e-4)
    assert torch.allclose(bottom, torch.zeros_like(bottom), atol=1e-4)
    assert middle.max() <= 0.6 + 1e-4 and middle.max() > 0.05  # shifted, within the bound
    greys = _normalized(torch.full((2, 3, 2, 2), 0.3))
    assert torch.allclose(photometric(greys, gen(6), hue=0.5), greys, atol=1e-4)


def test_cutmix_boxes() -> None:
    assert not cutmix_boxes(4, 8, 8, 0.0, gen()).any()
    boxes = cutmix_boxes(16, 10, 12, 1.0, gen(3))
    assert boxes.shape == (16, 10, 12) and boxes.dtype == torch.bool
    for b in boxes:
        rows, cols = b.any(1).nonzero().flatten(), b.any(0).nonzero().flatten()
        h, w = len(rows), len(cols)
        assert h * w == int(b.sum())  # one solid rectangle
        assert rows.tolist() == list(range(int(rows[0]), int(rows[0]) + h))
        assert 1 <= h * w <= 0.5 * 10 * 12
    assert torch.equal(cutmix_boxes(16, 10, 12, 1.0, gen(3)), boxes)
    some = cutmix_boxes(200, 4, 4, 0.5, gen(4)).flatten(1).any(1).float().mean()
    assert 0.35 < float(some) < 0.65
    assert cutmix_boxes(3, 2, 2, 1.0, gen(5)).flatten(1).any(1).all()  # fits even a 2x2 image


def test_apply_cutmix_reference() -> None:
    x = torch.arange(8.0).view(2, 1, 2, 2)  # image 0: 0..3, image 1: 4..7
    box = torch.tensor([[[True, False], [False, False]], [[False, False], [False, True]]])
    perm = torch.tensor([1, 0])
    out = apply_cutmix(x, box, perm)
    assert out.flatten().tolist() == [4.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 3.0]
    labels = torch.tensor([[[0, 0], [0, 0]], [[1, 1], [1, 1]]])
    assert apply_cutmix(labels, box, perm).tolist() == [[[1, 0], [0, 0]], [[1, 1], [1, 0]]]
    assert x.flatten().tolist() == list(range(8))  # input untouched
