"""The particle-picking demo: procedural micrograph-like images, binary (background, particle), point labels.

A testbed for binary self-training from point labels (seed 003: a UNet trained on particle centres,
self-trained in rounds with positive/negative thresholds). Each micrograph has:

- a noisy background: uneven ice (a gradient and smooth low-frequency noise), a per-image brightness,
  and strong, slightly correlated pixel noise (low signal-to-noise, like a low-dose exposure);
- particles: faint round blobs of radius `radius_min`-`radius_max` px, darker than the ice, with a faint
  bright fringe and a contrast that varies per particle and per image (the defocus); some particles sit
  in clusters of touching neighbours, the rest apart;
- distractors that are not particles: a few large dark ice contaminants and small dense dots.

The labelled splits (`n_train` few images, `n_val`, `n_test`) carry every particle's centre in
`points.json` (no radius: the train config's `point_radius` draws the disks); the large unlabelled pool
(`n_unlabeled`) comes from the same microscope, unlabelled. Everything is vectorised numpy per image and
each image has its own generator, a pure function of (seed, split, index): a spec always gives the same
files. `selftune data demo ROOT --task particles` writes one.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from selftune.errors import DataError
from selftune.fileio import write_folder

PARTICLES_VERSION = 1  # bump when the generator's output changes
MARKER = ".selftune_demo.json"  # the same marker file as the plantation demo, with "task": "particles"
CLASS_NAMES = ("background", "particle")
CLASS_COLORS = ((0, 0, 0), (255, 70, 70))
_SPLIT_CODES = {"train": 11, "val": 12, "test": 13, "unlabeled": 14}
UNLABELED_PER_FOLDER = 250
_OWNED = ("classes.csv", "train", "val", "test", "unlabeled", MARKER)


@dataclass(frozen=True)
class ParticleSpec:
    """What to generate. Sizes and radii are in pixels; counts are images per split."""

    size: int = 96
    n_train: int = 4
    n_val: int = 8
    n_test: int = 24
    n_unlabeled: int = 600
    seed: int = 0
    particles: float = 14.0  # mean particles per image (Poisson), before the cluster members
    cluster_share: float = 0.3  # share of the particles that seed a cluster of 2-5 touching neighbours
    radius_min: float = 3.0
    radius_max: float = 5.0

    def __post_init__(self) -> None:
        if self.size < 32:
            raise DataError(f"particles demo size must be >= 32 pixels, got {self.size}")
        for name in ("n_train", "n_val"):
            if getattr(self, name) < 1:
                raise DataError(f"particles demo {name} must be >= 1, got {getattr(self, name)}")
        for name in ("n_test", "n_unlabeled", "seed"):
            if getattr(self, name) < 0:
                raise DataError(f"particles demo {name} must be >= 0, got {getattr(self, name)}")
        if not 0 < self.radius_min <= self.radius_max <= self.size / 4:
            raise DataError(f"particles demo radii must satisfy 0 < radius_min <= radius_max <= size/4, got "
                            f"{self.radius_min}, {self.radius_max}")
        if self.particles < 0 or not 0 <= self.cluster_share <= 1:
            raise DataError(f"particles demo needs particles >= 0 and cluster_share in [0, 1], got "
                            f"{self.particles}, {self.cluster_share}")


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of one image: a pure function of (seed, split, index)."""
    return np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_CODES[split], index]))


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth noise in [0, 1]: a (cells+1)^2 random grid, bilinearly interpolated to size x size."""
    grid = rng.random((cells + 1, cells + 1))
    t = np.linspace(0, cells, size, endpoint=False)
    i = t.astype(int)
    f = t - i
    f = f * f * (3 - 2 * f)
    rows = grid[i] * (1 - f)[:, None] + grid[i + 1] * f[:, None]
    return rows[:, i] * (1 - f)[None, :] + rows[:, i + 1] * f[None, :]


def _blur(a: np.ndarray) -> np.ndarray:
    """3x3 binomial blur with edge padding."""
    p = np.pad(a, 1, mode="edge")
    h = p[:, :-2] * 0.25 + p[:, 1:-1] * 0.5 + p[:, 2:] * 0.25
    return h[:-2] * 0.25 + h[1:-1] * 0.5 + h[2:] * 0.25


def _centres(rng: np.random.Generator, spec: ParticleSpec) -> list[tuple[float, float, float]]:
    """(x, y, radius) of every particle: Poisson many placed apart, some of them seeding a touching cluster."""
    s, margin = spec.size, 2.0
    out: list[tuple[float, float, float]] = []

    def free(x: float, y: float, r: float, gap: float) -> bool:
        return all((x - a) ** 2 + (y - b) ** 2 >= (gap * (r + c)) ** 2 for a, b, c in out)

    for _ in range(rng.poisson(spec.particles)):
        for _try in range(20):
            r = rng.uniform(spec.radius_min, spec.radius_max)
            x, y = rng.uniform(margin, s - 1 - margin, size=2)
            if free(x, y, r, 1.6):
                out.append((x, y, r))
                break
        else:
            continue
        if rng.random() < spec.cluster_share:  # neighbours touching this one
            cx, cy, cr = out[-1]
            for _member in range(rng.integers(2, 6)):
                r = rng.uniform(spec.radius_min, spec.radius_max)
                angle = rng.uniform(0, 2 * math.pi)
                d = (cr + r) * rng.uniform(0.95, 1.15)
                x, y = cx + d * math.cos(angle), cy + d * math.sin(angle)
                if margin <= x <= s - 1 - margin and margin <= y <= s - 1 - margin and free(x, y, r, 0.9):
                    out.append((x, y, r))
                    cx, cy, cr = x, y, r  # the cluster grows as a chain or a clump
    return out


def _window(x: float, y: float, reach: float, size: int) -> tuple[tuple[slice, slice], np.ndarray]:
    """The pixels within `reach` of (x, y) as a (rows, cols) slice of a size x size image, and their distances."""
    r0, r1 = max(0, math.floor(y - reach)), min(size, math.ceil(y + reach) + 1)
    c0, c1 = max(0, math.floor(x - reach)), min(size, math.ceil(x + reach) + 1)
    rows = np.arange(r0, r1, dtype=np.float64)[:, None]
    cols = np.arange(c0, c1, dtype=np.float64)[None, :]
    return (slice(r0, r1), slice(c0, c1)), np.sqrt((rows - y) ** 2 + (cols - x) ** 2)


def render_micrograph(rng: np.random.Generator, spec: ParticleSpec) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """One micrograph: (uint8 [size, size] image, the particle centres as (x, y) pixels)."""
    s = spec.size
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float64)
    # the ice: a gradient, smooth unevenness and the exposure's brightness
    angle = rng.uniform(0, 2 * math.pi)
    ramp = ((xx - s / 2) * math.cos(angle) + (yy - s / 2) * math.sin(angle)) / s
    img = rng.uniform(0.45, 0.6) + rng.uniform(0.0, 0.12) * ramp + rng.uniform(0.02, 0.08) * (
        _smooth_noise(rng, s, 3) - 0.5)
    contrast = rng.uniform(0.05, 0.13)  # this image's defocus: how visible its particles are
    centres = _centres(rng, spec)
    density = np.zeros((s, s))
    for x, y, r in centres:
        win, d = _window(x, y, 2.2 * r, s)  # the blob and its fringe vanish beyond 2 radii
        d = d / r
        body = 1.0 / (1.0 + np.exp((d - 0.9) * 8.0))  # a soft-edged disk
        fringe = np.exp(-(((d - 1.35) / 0.25) ** 2))  # a faint bright ring around it
        density[win] += rng.uniform(0.4, 1.0) * (body - 0.25 * fringe)
    img = img - contrast * density
    # distractors: large dark ice contaminants and small dense dots, none of them particles
    for _ in range(rng.poisson(0.8)):
        x, y = rng.uniform(0, s, size=2)
        r = rng.uniform(2.5, 4.0) * spec.radius_max
        d = np.sqrt(((xx - x) / rng.uniform(0.7, 1.3)) ** 2 + (yy - y) ** 2) / r
        img = img - rng.uniform(0.15, 0.3) / (1.0 + np.exp((d - 1.0) * 6.0))
    for _ in range(rng.poisson(1.5)):
        x, y = rng.uniform(0, s, size=2)
        d = np.sqrt((xx - x) ** 2 + (yy - y) ** 2) / rng.uniform(1.0, 1.8)
        img = img - rng.uniform(0.2, 0.35) / (1.0 + np.exp((d - 1.0) * 5.0))
    # the detector: strong pixel noise, a little correlated
    noise = rng.standard_normal((s, s))
    noise = 0.6 * noise + 0.8 * _blur(noise)
    img = img + rng.uniform(0.07, 0.11) * noise
    image = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
    return image, [(round(x, 2), round(y, 2)) for x, y, _ in centres]


def _paths(spec: ParticleSpec) -> list[tuple[str, int, str]]:
    out = []
    for split, n in (("train", spec.n_train), ("val", spec.n_val), ("test", spec.n_test)):
        out += [(split, i, f"{split}_{i:04d}.png") for i in range(n)]
    out += [("unlabeled", i, f"part{i // UNLABELED_PER_FOLDER:03d}/u{i:06d}.png") for i in range(spec.n_unlabeled)]
    return out


def _write_all(stage: Path, spec: ParticleSpec, progress: bool) -> None:
    from PIL import Image

    lines = ["id,name,r,g,b"] + [f"{i},{n},{r},{g},{b}" for i, (n, (r, g, b)) in
                                 enumerate(zip(CLASS_NAMES, CLASS_COLORS, strict=True))]
    (stage / "classes.csv").write_text("\n".join(lines) + "\n")
    points: dict[str, dict[str, list[list[float]]]] = {}
    jobs = _paths(spec)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc="micrographs", unit="image")
    try:
        for split, i, rel in jobs:
            image, centres = render_micrograph(image_rng(spec.seed, split, i), spec)
            folder = stage / split / "images"
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image, mode="L").save(folder / rel, format="PNG", compress_level=6)
            if split != "unlabeled":
                points.setdefault(split, {})[rel] = [[x, y] for x, y in centres]
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    for split, entries in points.items():
        (stage / split / "points.json").write_text(json.dumps(entries, indent=0) + "\n")
    meta = {"version": PARTICLES_VERSION, "task": "particles", "spec": dataclasses.asdict(spec)}
    (stage / MARKER).write_text(json.dumps(meta, indent=1) + "\n")


def generate_particles(root: Path, spec: ParticleSpec = ParticleSpec(), *, overwrite: bool = False,
                       progress: bool = False) -> Path:
    """Write the particle demo dataset to ROOT and return ROOT.

    Refuses a non-empty ROOT unless `overwrite`, which first removes only what a demo writes there. The set
    is written into a staging folder beside ROOT and moved into place at the end, so an interrupted run
    never leaves a half-written dataset.
    """
    return write_folder(root, lambda stage: _write_all(stage, spec, progress), owned=_OWNED, marker=MARKER,
                        overwrite=overwrite, what="demo destination")


__all__ = ["CLASS_NAMES", "PARTICLES_VERSION", "ParticleSpec", "generate_particles", "image_rng",
           "render_micrograph"]
