"""The built-in demo dataset: procedural aerial plantation tiles with the users' 7 classes.

Made to be a fair testbed for tuning self-training on 2 CPU cores:

- every class is recognisable from local colour, texture and shape (areca: large star-shaped
  palm crowns on a regular grid; snake fruit: dense small spiky clumps; road: thin long strips;
  open land: blobs of bare soil in the same tones as dirt roads; buildings: small gabled roofs
  with shadows; water: smooth dark ponds and streams; background: grass with scattered shrubs);
- each class's look (colours, crown size and spacing, ground scale, roofs, water tint) and the
  lighting, haze, shadows and noise change from survey to survey and tile to tile; the labelled
  tiles come from 4 of the 16 surveys (`train_surveys`) while val, test and the 1000 unlabelled
  tiles come from all of them, so the unlabelled pool covers what the labels miss;
- class frequencies are long-tailed (water and buildings are rare);
- the unlabelled pool is slightly shifted (more haze, warmer and dimmer light).

Everything is vectorised numpy over the whole tile; each tile has its own seed derived from
(spec.seed, split, index), so a spec always gives byte-identical files (same numpy version).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from selftune.errors import DataError
from selftune.fileio import write_folder

DEMO_VERSION = 6  # bump when the generator's output changes: ensure_demo then rebuilds its cache
MARKER = ".selftune_demo.json"
CLASS_NAMES = ("background", "water body", "building", "road", "areca tree", "snake fruit", "open land")
CLASS_COLORS = (
    (0, 0, 0), (30, 100, 255), (230, 30, 60), (255, 220, 40), (60, 190, 75), (150, 40, 170), (175, 115, 50),
)
BACKGROUND, WATER, BUILDING, ROAD, ARECA, SNAKE_FRUIT, OPEN_LAND = range(7)
_SPLIT_CODES = {"train": 1, "val": 2, "test": 3, "unlabeled": 4}
UNLABELED_PER_FOLDER = 250  # the pool is written in nested folders, as large pools usually are
_OWNED = ("classes.csv", "train", "val", "test", "unlabeled", MARKER)


@dataclass(frozen=True)
class DemoSpec:
    """What to generate. Sizes are in pixels; counts are tiles per split."""

    size: int = 64
    n_train: int = 24
    n_val: int = 48
    n_test: int = 96
    n_unlabeled: int = 1000
    seed: int = 0
    train_surveys: int = 4  # the labelled tiles come from the first N of the N_STYLES surveys; the rest from all
    unlabeled_masks: bool = False  # also write ROOT/unlabeled/masks (oracle experiments only; not part of the format)

    def __post_init__(self) -> None:
        if self.size < 16:
            raise DataError(f"demo size must be >= 16 pixels, got {self.size}")
        for name in ("n_train", "n_val"):
            if getattr(self, name) < 1:
                raise DataError(f"demo {name} must be >= 1, got {getattr(self, name)}")
        for name in ("n_test", "n_unlabeled", "seed"):
            if getattr(self, name) < 0:
                raise DataError(f"demo {name} must be >= 0, got {getattr(self, name)}")
        if not 1 <= self.train_surveys <= N_STYLES:
            raise DataError(f"demo train_surveys must be between 1 and {N_STYLES}, got {self.train_surveys}")


# ---------------------------------------------------------------------- field helpers


def _value_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth noise in [0, 1]: a (cells+1)^2 random grid, smoothstep-interpolated to size x size."""
    grid = rng.random((cells + 1, cells + 1), dtype=np.float32)
    p = (np.arange(size, dtype=np.float32) + np.float32(0.5)) * np.float32(cells / size)
    i = np.minimum(p.astype(np.int64), cells - 1)
    f = p - i.astype(np.float32)
    f = f * f * (3 - 2 * f)
    rows = grid[i] * (1 - f)[:, None] + grid[i + 1] * f[:, None]  # (size, cells+1)
    return rows[:, i] * (1 - f)[None, :] + rows[:, i + 1] * f[None, :]


def _fractal(rng: np.random.Generator, size: int, cells: int, octaves: int = 3) -> np.ndarray:
    """Zero-mean fractal noise, roughly in [-0.5, 0.5]."""
    out = np.zeros((size, size), dtype=np.float32)
    amp, total = 1.0, 0.0
    for _ in range(octaves):
        out += amp * (_value_noise(rng, size, min(cells, size)) - 0.5)
        total += amp
        amp *= 0.5
        cells *= 2
    return out / total


def _shift(a: np.ndarray, dy: float, dx: float) -> np.ndarray:
    """a moved by (dy, dx) pixels (bilinear, edges repeated): out[y, x] = a[y - dy, x - dx]."""
    s = a.shape[0]
    yy = np.clip(np.arange(s) - dy, 0, s - 1)
    xx = np.clip(np.arange(s) - dx, 0, s - 1)
    y0, x0 = np.floor(yy).astype(np.int64), np.floor(xx).astype(np.int64)
    y1, x1 = np.minimum(y0 + 1, s - 1), np.minimum(x0 + 1, s - 1)
    fy, fx = (yy - y0)[:, None], (xx - x0)[None, :]
    top = a[y0][:, x0] * (1 - fx) + a[y0][:, x1] * fx
    bot = a[y1][:, x0] * (1 - fx) + a[y1][:, x1] * fx
    return top * (1 - fy) + bot * fy


def _blur3(img: np.ndarray) -> np.ndarray:
    """A [1, 2, 1]^2 / 16 blur over the first two axes (edges repeated)."""
    p = np.pad(img, [(1, 1), (1, 1)] + [(0, 0)] * (img.ndim - 2), mode="edge")
    v = p[:-2] + 2 * p[1:-1] + p[2:]
    return (v[:, :-2] + 2 * v[:, 1:-1] + v[:, 2:]) / 16.0


def _crowns(
    x: np.ndarray, y: np.ndarray, rng: np.random.Generator, *, spacing: float, angle: float, jitter: float,
    radius: float, radius_var: float, fronds: int, frond_amp: float, keep: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tree crowns on a jittered, rotated lattice: (coverage in [0, 1], d/R, angle) of the nearest crown.

    Each lattice cell has its own jitter, radius and frond phase (from per-call random tables
    indexed by a hash of the cell), and a crown only with probability `keep` (gaps in rows).
    With jitter 1 and a low `keep` the crowns are scattered at random (stratified sampling).
    """
    table = 512  # a power of two: the hash below is a bit mask
    ju, jv, rr, ph, kp = rng.random((5, table), dtype=np.float32)
    c, s = math.cos(angle), math.sin(angle)
    u = (x * c + y * s) / spacing
    v = (-x * s + y * c) / spacing
    iu0, iv0 = np.floor(u).astype(np.int32), np.floor(v).astype(np.int32)

    def cell(du: int | np.ndarray, dv: int | np.ndarray) -> tuple[np.ndarray, ...]:
        """Hash, offsets (lattice units) and radius of the neighbour cell (du, dv) of each pixel."""
        iu, iv = iu0 + du, iv0 + dv
        h = (iu * 7919 + iv * 104729 + 13) & (table - 1)
        dx = u - (iu + 0.5 + jitter * (ju.take(h) - 0.5))
        dy = v - (iv + 0.5 + jitter * (jv.take(h) - 0.5))
        return h, dx, dy, radius * (1 + radius_var * (rr.take(h) - 0.5))

    # A crown reaches at most `reach` lattice units from its centre. When that is less than the
    # gap to the cell beyond the nearest edge, the 2x2 cells nearest the pixel are enough.
    reach = radius / spacing * (1 + radius_var / 2) * (1 + frond_amp)
    if reach < 1 - jitter / 2:
        su = np.where(u - iu0 < 0.5, -1, 1).astype(np.int32)
        sv = np.where(v - iv0 < 0.5, -1, 1).astype(np.int32)
        candidates = [(0, 0), (su, 0), (0, sv), (su, sv)]
    else:
        candidates = [(du, dv) for du in (-1, 0, 1) for dv in (-1, 0, 1)]
    best_q = np.full(x.shape, np.inf, dtype=np.float32)
    best_du = np.zeros(x.shape, dtype=np.int32)
    best_dv = np.zeros(x.shape, dtype=np.int32)
    for du, dv in candidates:
        h, dx, dy, r = cell(du, dv)
        q = np.where(kp.take(h) < keep, np.sqrt(dx * dx + dy * dy) * spacing / r, np.inf)
        better = q < best_q
        best_q = np.where(better, q, best_q)
        best_du = np.where(better, du, best_du)
        best_dv = np.where(better, dv, best_dv)
    h, dx, dy, r = cell(best_du, best_dv)  # the nearest crown's geometry, per pixel
    d = np.sqrt(dx * dx + dy * dy) * spacing
    ang = np.arctan2(dy, dx) + np.float32(angle)
    if frond_amp:
        r = r * (1 + frond_amp * np.cos(fronds * ang + np.float32(6.283) * ph.take(h)))
    cov = np.clip(r - d + 0.5, 0, 1) * np.isfinite(best_q)
    return cov.astype(np.float32), (d / np.maximum(r, 1e-3)).astype(np.float32), ang.astype(np.float32)


def _crowns_in(region: np.ndarray, x: np.ndarray, y: np.ndarray, rng: np.random.Generator, **kw: float) -> tuple[
    np.ndarray, np.ndarray, np.ndarray
]:
    """`_crowns` evaluated only over the bounding box of `region` (coverage 0 elsewhere)."""
    cov, rho, ang = np.zeros(x.shape, np.float32), np.full(x.shape, 9.0, np.float32), np.zeros(x.shape, np.float32)
    rows, cols = np.flatnonzero(region.any(1)), np.flatnonzero(region.any(0))
    if rows.size:
        box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        cov[box], rho[box], ang[box] = _crowns(x[box], y[box], rng, **kw)  # type: ignore[arg-type]
    return cov, rho, ang


def _jitter_color(
    rng: np.random.Generator, base: tuple[float, float, float], amount: float, spread: float | None = None
) -> np.ndarray:
    """A per-tile variant of a base colour: brightness times 1 +- amount, each channel +- spread."""
    spread = amount / 3 if spread is None else spread
    c = np.asarray(base) * rng.uniform(1 - amount, 1 + amount) + rng.normal(0, spread, 3)
    return np.clip(c, 0.02, 0.98).astype(np.float32)


# ---------------------------------------------------------------------- survey styles

N_STYLES = 16  # "surveys": each has its own look for every class; the labelled tiles see train_surveys of them
_ARECA_BASES = ((0.5, 0.62, 0.28), (0.38, 0.56, 0.34), (0.3, 0.5, 0.42), (0.56, 0.6, 0.34), (0.44, 0.52, 0.22))
_SNAKE_BASES = ((0.3, 0.42, 0.2), (0.24, 0.32, 0.22), (0.34, 0.4, 0.3), (0.2, 0.36, 0.3), (0.36, 0.36, 0.18))
_SOIL_BASES = ((0.58, 0.44, 0.31), (0.68, 0.6, 0.47), (0.55, 0.52, 0.48), (0.62, 0.38, 0.26))
_ROOF_BASES = ((0.62, 0.64, 0.66), (0.58, 0.27, 0.2), (0.72, 0.42, 0.28), (0.32, 0.42, 0.6), (0.86, 0.86, 0.83))
_WATER_BASES = ((0.24, 0.22, 0.15), (0.1, 0.2, 0.16), (0.08, 0.13, 0.22))


@dataclass(frozen=True)
class _Style:
    """One survey's look: tiles of a style share these, with small per-tile variation."""

    zoom: float
    dry: float
    soil: tuple[float, ...]
    shrub: tuple[float, ...]
    areca: tuple[float, ...]
    areca_spacing: float
    areca_radius: float
    snake: tuple[float, ...]
    snake_spacing: float
    roofs: tuple[int, ...]
    water: int
    paved: float
    gain: float
    warm: float
    haze: float


@functools.lru_cache(maxsize=256)
def _style(seed: int, k: int) -> _Style:
    rng = np.random.default_rng(np.random.SeedSequence([seed, 99, k]))

    def color(bases: tuple[tuple[float, float, float], ...], amount: float) -> tuple[float, ...]:
        return tuple(float(c) for c in _jitter_color(rng, bases[rng.integers(len(bases))], amount, spread=0.04))

    return _Style(
        zoom=float(rng.uniform(0.8, 1.25)), dry=float(rng.uniform(0, 0.9)), soil=color(_SOIL_BASES, 0.1),
        shrub=color(((0.25, 0.36, 0.17),), 0.2), areca=color(_ARECA_BASES, 0.15),
        areca_spacing=float(rng.uniform(8.0, 12.0)), areca_radius=float(rng.uniform(0.3, 0.4)),
        snake=color(_SNAKE_BASES, 0.15), snake_spacing=float(rng.uniform(3.4, 5.0)),
        roofs=tuple(int(i) for i in rng.choice(len(_ROOF_BASES), 2, replace=False)),
        water=int(rng.integers(len(_WATER_BASES))), paved=float(rng.uniform(0, 0.8)),
        gain=float(rng.uniform(0.82, 1.15)), warm=float(rng.uniform(-0.06, 0.04)), haze=float(rng.uniform(0, 0.22)),
    )


# ---------------------------------------------------------------------- one tile
#
# `render_tile` draws a tile in stages, one function each, defined below it in the order it calls
# them: the scene (pixel grid, ground scale, sun), the label layout (cover regions, roads, water,
# buildings), each class's look, the ground and plants with their shadows, then roads, water and
# roofs over them, and last the camera's acquisition effects. All stages draw from the tile's one
# generator, so the order of the stages, and of the draws inside each, is part of the output.


class _Scene(NamedTuple):
    """What every drawing stage of one tile shares."""

    st: _Style  # the tile's survey style
    s: int  # tile side in pixels
    yy: np.ndarray  # pixel-centre coordinates, float32 [s, s]
    xx: np.ndarray
    zoom: float  # ground sampling distance: the survey's, varied per tile
    sun: float  # sun azimuth (radians)
    sdy: float  # shadows fall this way: (sdy, sdx) pixels per unit of object height
    sdx: float


class _Textures(NamedTuple):
    """The tile's noise fields and base colours, shared by the classes' looks."""

    fine: np.ndarray  # fractal noise [s, s], fine grain
    mid: np.ndarray  # fractal noise [s, s], patches
    soil: np.ndarray  # RGB
    grass: np.ndarray  # RGB


class _Plants(NamedTuple):
    """One vegetation class: its ground, the coverage of its crowns (before masking by class), the shaded crowns."""

    ground: np.ndarray  # [s, s, 3]
    cover: np.ndarray  # [s, s] in [0, 1]
    crowns: np.ndarray  # [s, s, 3]


class _Roofs(NamedTuple):
    """The buildings: roof coverage, shading (lit or shaded side) and colour, and the shadows they cast."""

    cover: np.ndarray  # [s, s] in [0, 1]
    shade: np.ndarray  # [s, s]
    color: np.ndarray  # [s, s, 3]
    shadow: np.ndarray  # [s, s] in [0, 1]


def render_tile(
    rng: np.random.Generator, size: int, *, shifted: bool = False, seed: int = 0, index: int = 0,
    surveys: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One tile: (HxWx3 uint8 image, HxW uint8 class ids).

    The tile belongs to one of `N_STYLES` survey styles of `seed` (one of the first `surveys` of
    them when given: the labelled tiles' surveys); `shifted` draws the unlabelled
    pool's conditions (more haze, dimmer and warmer light). Every 8th tile of a split (by `index`)
    has water and every 8th a road with buildings, so no split of 8 or more tiles lacks a class.
    """
    st = _style(seed, int(rng.integers(N_STYLES)) % (surveys or N_STYLES))
    sc = _scene(rng, size, st)

    # ---- layout: cover regions (warped Voronoi), clearings, roads, water, buildings
    labels = _cover_regions(rng, sc)
    road_dist, road_anchor = _roads(rng, sc, labels, index)
    water = _water(rng, sc, labels, index)
    roofs = _buildings(rng, sc, labels, water, road_anchor, index)

    # ---- appearance: per-tile colours and textures for each class
    tex = _textures(rng, sc)
    background = _background(rng, sc, labels, tex)
    open_land = _open_land(rng, tex)
    areca = _areca(rng, sc, labels, tex)
    snake_fruit = _snake_fruit(rng, sc, labels, tex)
    img = _ground_and_plants(sc, labels, background, open_land, areca, snake_fruit, roofs.shadow)
    img = _paint_roads(rng, sc, img, road_dist, water, tex)
    img = _paint_water(rng, sc, img, water)
    img = _paint_roofs(img, roofs, tex)

    # ---- acquisition: illumination, colour cast, cloud shadow, haze, blur, noise
    return _acquire(rng, sc, img, shifted), labels


def _scene(rng: np.random.Generator, size: int, st: _Style) -> _Scene:
    """The pixel grid, this tile's ground scale and the sun (direction and shadow length)."""
    s = size
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) + np.float32(0.5)
    zoom = st.zoom * rng.uniform(0.95, 1.05)  # ground sampling distance: a survey's own
    sun = rng.uniform(0, 2 * math.pi)
    sun_len = rng.uniform(0.8, 2.2) * zoom
    sdy, sdx = math.sin(sun) * sun_len, math.cos(sun) * sun_len  # shadows fall this way
    return _Scene(st=st, s=s, yy=yy, xx=xx, zoom=zoom, sun=sun, sdy=sdy, sdx=sdx)


def _cover_regions(rng: np.random.Generator, sc: _Scene) -> np.ndarray:
    """The labels' base: 2-5 land-cover regions (a warped Voronoi) and maybe a clearing of bare soil."""
    s, yy, xx = sc.s, sc.yy, sc.xx
    labels = np.zeros((s, s), dtype=np.uint8)
    n_regions = int(rng.integers(2, 6))
    seeds = rng.uniform(-0.2 * s, 1.2 * s, (n_regions, 2)).astype(np.float32)
    wy = _fractal(rng, s, 3) * 0.5 * s
    wx = _fractal(rng, s, 3) * 0.5 * s
    d2 = (yy[None] + wy - seeds[:, 0, None, None]) ** 2 + (xx[None] + wx - seeds[:, 1, None, None]) ** 2
    region = np.argmin(d2, axis=0)
    covers = rng.choice([BACKGROUND, SNAKE_FRUIT, ARECA, OPEN_LAND], size=n_regions, p=[0.34, 0.3, 0.2, 0.16])
    labels[:] = covers[region]
    if rng.random() < 0.35:  # a clearing of bare soil
        cy, cx = rng.uniform(0, s, 2)
        r = rng.uniform(0.08, 0.2) * s
        blob = np.hypot(yy - cy, xx - cx) / r + _fractal(rng, s, 4) * 1.2
        labels[blob < 1] = OPEN_LAND
    return labels


def _roads(
    rng: np.random.Generator, sc: _Scene, labels: np.ndarray, index: int
) -> tuple[np.ndarray, tuple[float, float, float, float] | None]:
    """Label 0-2 gently curved roads: (signed distance to the nearest road's edge, inf without roads;
    the last road's (y, x, angle, width), which buildings line up along, or None without roads)."""
    s, yy, xx, zoom = sc.s, sc.yy, sc.xx, sc.zoom
    road_anchor = None
    road_dist = np.full((s, s), np.inf, dtype=np.float32)
    if rng.random() < 0.45 or index % 8 == 2:
        for _ in range(1 if rng.random() < 0.75 else 2):
            ang = rng.uniform(0, math.pi)
            oy, ox = rng.uniform(0.2 * s, 0.8 * s, 2)
            along = (xx - ox) * math.cos(ang) + (yy - oy) * math.sin(ang)
            across = -(xx - ox) * math.sin(ang) + (yy - oy) * math.cos(ang)
            across = across + rng.uniform(-1, 1) * 0.6 * along**2 / s  # gentle curve
            width = rng.uniform(2.0, 3.8) * zoom
            road_dist = np.minimum(road_dist, np.abs(across) - width / 2)
            road_anchor = (oy, ox, ang, width)
        labels[road_dist < 0] = ROAD
    return road_dist, road_anchor


def _water(rng: np.random.Generator, sc: _Scene, labels: np.ndarray, index: int) -> np.ndarray:
    """Label a pond or a stream on some tiles; returns the water mask (bool [s, s])."""
    s, yy, xx, zoom = sc.s, sc.yy, sc.xx, sc.zoom
    water = np.zeros((s, s), dtype=bool)
    if rng.random() < 0.1 or index % 8 == 5:
        if rng.random() < 0.55:  # pond
            cy, cx = rng.uniform(0.1 * s, 0.9 * s, 2)
            r = rng.uniform(0.12, 0.28) * s
            water = np.hypot(yy - cy, xx - cx) / r + _fractal(rng, s, 4) * 0.8 < 1
        else:  # stream
            ang = rng.uniform(0, math.pi)
            oy, ox = rng.uniform(0.25 * s, 0.75 * s, 2)
            across = -(xx - ox) * math.sin(ang) + (yy - oy) * math.cos(ang) + _fractal(rng, s, 2) * 0.5 * s
            water = np.abs(across) < rng.uniform(2.0, 4.5) * zoom
        labels[water] = WATER
    return water


def _buildings(
    rng: np.random.Generator, sc: _Scene, labels: np.ndarray, water: np.ndarray,
    road_anchor: tuple[float, float, float, float] | None, index: int,
) -> _Roofs:
    """Label 1-5 gabled roofs (along the road when there is one, else anywhere; none on water)
    and cast their shadows."""
    s, yy, xx, zoom, sun, sdy, sdx, st = sc.s, sc.yy, sc.xx, sc.zoom, sc.sun, sc.sdy, sc.sdx, sc.st
    roof = np.zeros((s, s), dtype=np.float32)  # building coverage
    roof_shade = np.zeros((s, s), dtype=np.float32)
    roof_col = np.zeros((s, s, 3), dtype=np.float32)
    roof_shadow = np.zeros((s, s), dtype=np.float32)
    p_building = 0.6 if road_anchor is not None else 0.2
    if rng.random() < p_building or index % 8 == 2:
        for _ in range(int(rng.integers(1, 6))):
            bl, bw = rng.uniform(4.5, 9.0, 2) * zoom
            if road_anchor is not None:
                oy, ox, ang, width = road_anchor
                t = rng.uniform(-0.4, 0.4) * s
                side = rng.choice([-1.0, 1.0])
                off = side * (width / 2 + bw / 2 + rng.uniform(0.8, 2.5))
                cy = oy + t * math.sin(ang) + off * math.cos(ang)
                cx = ox + t * math.cos(ang) - off * math.sin(ang)
                ang_b = ang + rng.normal(0, 0.08)
            else:
                cy, cx = rng.uniform(0.1 * s, 0.9 * s, 2)
                ang_b = rng.uniform(0, math.pi)
            height = rng.uniform(0.8, 1.6)
            color = _jitter_color(rng, _ROOF_BASES[st.roofs[0] if rng.random() < 0.7 else st.roofs[1]], 0.1)
            for k, (ody, odx) in enumerate(((0.0, 0.0), (sdy * height, sdx * height))):
                u = (xx - cx - odx) * math.cos(ang_b) + (yy - cy - ody) * math.sin(ang_b)
                v = -(xx - cx - odx) * math.sin(ang_b) + (yy - cy - ody) * math.cos(ang_b)
                cov = np.clip(bl / 2 - np.abs(u) + 0.5, 0, 1) * np.clip(bw / 2 - np.abs(v) + 0.5, 0, 1)
                if k == 0:
                    new = cov > roof
                    roof = np.maximum(roof, cov)
                    lit = math.sin(sun - ang_b) > 0
                    roof_shade = np.where(new, np.where((v > 0) == lit, 1.08, 0.8), roof_shade)
                    roof_col = np.where(new[:, :, None], color, roof_col)
                else:
                    roof_shadow = np.maximum(roof_shadow, cov)
        roof *= ~water
        labels[roof > 0.5] = BUILDING
    return _Roofs(cover=roof, shade=roof_shade, color=roof_col, shadow=roof_shadow)


def _textures(rng: np.random.Generator, sc: _Scene) -> _Textures:
    """The tile's two noise fields, its soil colour and its grass colour (green to dry)."""
    s, st = sc.s, sc.st
    fine = _fractal(rng, s, 16, 2)
    mid = _fractal(rng, s, 6, 3)
    soil = _jitter_color(rng, st.soil, 0.06, spread=0.015)
    dry = np.clip(st.dry + rng.normal(0, 0.08), 0, 1)  # green to dry grass
    grass = _jitter_color(rng, (0.34 + 0.2 * dry, 0.5, 0.24 + 0.08 * dry), 0.08, spread=0.015)
    return _Textures(fine=fine, mid=mid, soil=soil, grass=grass)


def _crown_shade(rho: np.ndarray, ang: np.ndarray, fronds: float, sun: float) -> np.ndarray:
    """Brightness [s, s, 1] over crowns: brighter at the centre, on the sunny side and along the fronds."""
    lit = 1.0 - 0.25 * np.cos(ang - sun) * np.clip(rho, 0, 1)  # the side facing the sun is brighter
    return ((0.7 + 0.45 * (1 - np.clip(rho, 0, 1) ** 2)) * lit * (0.9 + 0.1 * np.cos(fronds * ang)))[:, :, None]


def _background(rng: np.random.Generator, sc: _Scene, labels: np.ndarray, tex: _Textures) -> _Plants:
    """Background: grass with darker patches and scattered shrubs (not on a grid)."""
    xx, yy, zoom, st = sc.xx, sc.yy, sc.zoom, sc.st
    grass, mid, fine = tex.grass, tex.mid, tex.fine
    bg = grass * (1 + 0.35 * mid[:, :, None] + 0.12 * fine[:, :, None])
    shrub_spacing = rng.uniform(7.0, 12.0) * zoom
    is_bg = labels == BACKGROUND
    shrub_cov, shrub_rho, shrub_ang = _crowns_in(
        is_bg, xx, yy, rng, spacing=shrub_spacing, angle=rng.uniform(0, math.pi / 2), jitter=1.0,
        radius=rng.uniform(0.12, 0.28) * shrub_spacing, radius_var=0.8, fronds=3, frond_amp=0.15,
        keep=rng.uniform(0.3, 0.8),
    )
    shrub_col = _jitter_color(rng, st.shrub, 0.08, spread=0.015)
    shrubs = shrub_col * _crown_shade(shrub_rho, shrub_ang, 0, sc.sun) * (1 + 0.2 * fine[:, :, None])
    return _Plants(ground=bg, cover=shrub_cov, crowns=shrubs)


def _open_land(rng: np.random.Generator, tex: _Textures) -> np.ndarray:
    """Open land: soil with slow tone changes and sparse grass specks."""
    soil, grass, mid, fine = tex.soil, tex.grass, tex.mid, tex.fine
    open_img = soil * (1 + 0.25 * mid[:, :, None] + 0.06 * fine[:, :, None])
    specks = (fine > rng.uniform(0.2, 0.35))[:, :, None]
    return np.where(specks, open_img * 0.6 + grass * 0.4, open_img)


def _areca(rng: np.random.Generator, sc: _Scene, labels: np.ndarray, tex: _Textures) -> _Plants:
    """Areca: large star-shaped crowns on a regular grid over a grassy-to-soily understory."""
    xx, yy, zoom, st = sc.xx, sc.yy, sc.zoom, sc.st
    grass, soil, mid, fine = tex.grass, tex.soil, tex.mid, tex.fine
    spacing_a = st.areca_spacing * rng.uniform(0.93, 1.07) * zoom
    a_cov, a_rho, a_ang = _crowns_in(
        labels == ARECA, xx, yy, rng, spacing=spacing_a, angle=rng.uniform(0, math.pi / 2), jitter=0.12,
        radius=st.areca_radius * rng.uniform(0.93, 1.07) * spacing_a, radius_var=0.25, fronds=int(rng.integers(6, 10)),
        frond_amp=rng.uniform(0.15, 0.3), keep=rng.uniform(0.85, 1.0),
    )
    under = grass * (1 - (mix := rng.uniform(0, 0.7))) + soil * mix
    areca_ground = under * (1 + 0.2 * mid[:, :, None] + 0.1 * fine[:, :, None])
    areca_col = _jitter_color(rng, st.areca, 0.08, spread=0.015)
    crowns_a = areca_col * _crown_shade(a_rho, a_ang, 14, sc.sun)
    return _Plants(ground=areca_ground, cover=a_cov, crowns=crowns_a)


def _snake_fruit(rng: np.random.Generator, sc: _Scene, labels: np.ndarray, tex: _Textures) -> _Plants:
    """Snake fruit: dense small spiky clumps over deep shade."""
    xx, yy, zoom, st, fine = sc.xx, sc.yy, sc.zoom, sc.st, tex.fine
    spacing_s = st.snake_spacing * rng.uniform(0.93, 1.07) * zoom
    s_cov, s_rho, s_ang = _crowns_in(
        labels == SNAKE_FRUIT, xx, yy, rng, spacing=spacing_s, angle=rng.uniform(0, math.pi / 2), jitter=0.7,
        radius=rng.uniform(0.38, 0.55) * spacing_s, radius_var=0.5, fronds=5,
        frond_amp=rng.uniform(0.2, 0.4), keep=0.93,
    )
    snake_col = _jitter_color(rng, st.snake, 0.08, spread=0.015)
    snake_ground = snake_col * 0.35 * (1 + 0.3 * fine[:, :, None])
    crowns_s = snake_col * _crown_shade(s_rho, s_ang, 10, sc.sun) * (1 + 0.25 * fine[:, :, None])
    return _Plants(ground=snake_ground, cover=s_cov, crowns=crowns_s)


def _ground_and_plants(
    sc: _Scene, labels: np.ndarray, background: _Plants, open_land: np.ndarray, areca: _Plants,
    snake_fruit: _Plants, roof_shadow: np.ndarray,
) -> np.ndarray:
    """Compose the ground by class, darken it by the shadows of plants and buildings, then lay the crowns over it."""
    s, sdy, sdx = sc.s, sc.sdy, sc.sdx
    img = np.empty((s, s, 3), dtype=np.float32)
    img[:] = background.ground
    is_bg = labels == BACKGROUND
    shrub_cov, shrubs = background.cover, background.crowns
    lab = labels[:, :, None]
    img = np.where(lab == OPEN_LAND, open_land, img)
    img = np.where(lab == ARECA, areca.ground, img)
    img = np.where(lab == SNAKE_FRUIT, snake_fruit.ground, img)
    shadow = np.zeros((s, s), dtype=np.float32)
    shadow = np.maximum(shadow, _shift(shrub_cov * is_bg, sdy * 0.6, sdx * 0.6))
    areca_here = areca.cover * (labels == ARECA)
    snake_here = snake_fruit.cover * (labels == SNAKE_FRUIT)
    shadow = np.maximum(shadow, _shift(areca_here, sdy * 1.4, sdx * 1.4))
    shadow = np.maximum(shadow, _shift(snake_here, sdy * 0.5, sdx * 0.5))
    shadow = np.maximum(shadow, roof_shadow)
    img *= (1 - 0.55 * shadow)[:, :, None]

    img = np.where(is_bg[:, :, None], img * (1 - shrub_cov[:, :, None]) + shrubs * shrub_cov[:, :, None], img)
    img = img * (1 - areca_here[:, :, None]) + areca.crowns * areca_here[:, :, None]
    img = img * (1 - snake_here[:, :, None]) + snake_fruit.crowns * snake_here[:, :, None]
    return img


def _paint_roads(
    rng: np.random.Generator, sc: _Scene, img: np.ndarray, road_dist: np.ndarray, water: np.ndarray, tex: _Textures
) -> np.ndarray:
    """Roads: the soil's tones (dirt) or grey (paved), smoother than open land, darker verges."""
    if not np.isfinite(road_dist).any():
        return img
    soil, fine, mid = tex.soil, tex.fine, tex.mid
    paved = rng.random() < sc.st.paved
    road_col = _jitter_color(rng, (0.55, 0.55, 0.53), 0.1) if paved else soil * rng.uniform(0.95, 1.15)
    road_img = road_col * (1 + 0.05 * fine[:, :, None] + 0.08 * mid[:, :, None])
    cov = np.clip(0.5 - road_dist, 0, 1) * (~water)
    verge = np.clip(1.2 - np.abs(road_dist - 0.6), 0, 1) * (~water) * (1 - cov)
    img = img * (1 - 0.25 * verge[:, :, None])
    return img * (1 - cov[:, :, None]) + road_img * cov[:, :, None]


def _paint_water(rng: np.random.Generator, sc: _Scene, img: np.ndarray, water: np.ndarray) -> np.ndarray:
    """Water: smooth, dark, tinted per tile; darker in the middle; wet, darker ground along the shore."""
    if not water.any():
        return img
    s, st = sc.s, sc.st
    tint = _jitter_color(rng, _WATER_BASES[st.water], 0.12, spread=0.015)
    depth = _blur3(_blur3(water.astype(np.float32)))  # 0 outside, 1 well inside
    glint = np.clip(_value_noise(rng, s, 3) - 0.7, 0, 1) * rng.uniform(0, 0.6)
    water_img = tint * (1.15 - 0.3 * depth[:, :, None]) + glint[:, :, None] * 0.3
    bank = np.clip(depth * (1 - depth) * 4, 0, 1) * (~water)  # wet, darker ground along the shore
    img = img * (1 - 0.35 * bank[:, :, None])
    return np.where(water[:, :, None], water_img, img)


def _paint_roofs(img: np.ndarray, roofs: _Roofs, tex: _Textures) -> np.ndarray:
    """Roofs over everything else, in their colour and side shading."""
    if not roofs.cover.any():
        return img
    roof = roofs.cover
    roof_img = roofs.color * roofs.shade[:, :, None] * (1 + 0.03 * tex.fine[:, :, None])
    return img * (1 - roof[:, :, None]) + roof_img * roof[:, :, None]


def _acquire(rng: np.random.Generator, sc: _Scene, img: np.ndarray, shifted: bool) -> np.ndarray:
    """The camera: illumination, colour cast, cloud shadow, haze, blur, noise; then to uint8."""
    s, st = sc.s, sc.st
    gain = st.gain * rng.uniform(0.88, 1.08) * (0.93 if shifted else 1.0)
    warm = st.warm + rng.uniform(-0.03, 0.03) + (0.04 if shifted else 0.0)
    img = img * gain * np.array([1 + warm, 1.0, 1 - warm])
    cloud = 1 - rng.uniform(0, 0.3) * np.clip(_value_noise(rng, s, 2) * 2 - 0.6, 0, 1)
    img = img * cloud[:, :, None]
    haze = st.haze + rng.uniform(0.0, 0.1) + (rng.uniform(0.05, 0.15) if shifted else 0.0)
    haze_map = haze * (0.75 + 0.5 * _value_noise(rng, s, 2))
    haze_col = _jitter_color(rng, (0.74, 0.77, 0.8), 0.05)
    img = img * (1 - haze_map[:, :, None]) + haze_col * haze_map[:, :, None]
    blur = rng.uniform(0.0, 0.7)
    img = img * (1 - blur) + _blur3(img) * blur
    sigma = rng.uniform(0.005, 0.035)
    img = img + sigma * rng.standard_normal((s, s, 1), dtype=np.float32)
    img = img + (sigma * 0.4) * rng.standard_normal((s, s, 3), dtype=np.float32)
    return np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)


def tile_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of one tile: a pure function of (seed, split, index)."""
    return np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_CODES[split], index]))


# ---------------------------------------------------------------------- writing


def _save_png(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(array).save(path, format="PNG", compress_level=6)


def _is_nonempty_dir(p: Path) -> bool:
    return p.is_dir() and any(p.iterdir())


def _tile_paths(spec: DemoSpec) -> list[tuple[str, int, str]]:
    """(split, index, relative path without folder) of every tile, in generation order."""
    out = []
    for split, n in (("train", spec.n_train), ("val", spec.n_val), ("test", spec.n_test)):
        out += [(split, i, f"{split}_{i:04d}.png") for i in range(n)]
    out += [
        ("unlabeled", i, f"part{i // UNLABELED_PER_FOLDER:03d}/u{i:06d}.png") for i in range(spec.n_unlabeled)
    ]
    return out


def generate_demo(
    root: Path, spec: DemoSpec = DemoSpec(), *, overwrite: bool = False, progress: bool = False,
    workers: int | None = 1,
) -> Path:
    """Write the demo dataset to ROOT and return ROOT.

    Refuses a non-empty ROOT unless `overwrite`, which first removes only what a demo writes
    there (classes.csv, train/, val/, test/, unlabeled/). The set is written into a staging
    folder beside ROOT and moved into place at the end, so an interrupted run never leaves a
    half-written dataset and concurrent calls cannot mix files.

    `workers` > 1 renders in forked processes (Linux; the files are the same either way);
    None picks the CPU count when that is safe (a process without other Python threads).
    """
    return write_folder(root, lambda stage: _write_all(stage, spec, progress, _pick_workers(workers)), owned=_OWNED,
                        marker=MARKER, overwrite=overwrite, what="demo destination")


def _pick_workers(workers: int | None) -> int:
    import multiprocessing
    import threading

    if "fork" not in multiprocessing.get_all_start_methods():
        return 1
    if workers is None:  # forking a process with other threads (Ray, gRPC) is not safe
        return (os.cpu_count() or 1) if threading.active_count() == 1 else 1
    return max(1, workers)


def _render_and_save(job: tuple[Path, DemoSpec, str, int, str]) -> int:
    stage, spec, split, i, rel = job
    image, mask = render_tile(
        tile_rng(spec.seed, split, i), spec.size, shifted=split == "unlabeled", seed=spec.seed, index=i,
        surveys=spec.train_surveys if split == "train" else None,
    )
    if split == "unlabeled":
        _save_png(image, stage / "unlabeled" / "images" / rel)
        if spec.unlabeled_masks:
            _save_png(mask, stage / "unlabeled" / "masks" / rel)
    else:
        _save_png(image, stage / split / "images" / rel)
        _save_png(mask, stage / split / "masks" / rel)
    return 1


def _write_all(stage: Path, spec: DemoSpec, progress: bool, workers: int) -> None:
    for split in ("train", "val", "test"):
        if split == "test" and spec.n_test == 0:
            continue
        (stage / split / "images").mkdir(parents=True)
        (stage / split / "masks").mkdir(parents=True)
    n_parts = -(-spec.n_unlabeled // UNLABELED_PER_FOLDER)
    (stage / "unlabeled" / "images").mkdir(parents=True)
    for kind in ("images", "masks") if spec.unlabeled_masks else ("images",):
        for part in range(n_parts):
            (stage / "unlabeled" / kind / f"part{part:03d}").mkdir(parents=True, exist_ok=True)
    lines = ["id,name,r,g,b"] + [
        f"{i},{n},{r},{g},{b}" for i, (n, (r, g, b)) in enumerate(zip(CLASS_NAMES, CLASS_COLORS, strict=True))
    ]
    (stage / "classes.csv").write_text("\n".join(lines) + "\n")
    jobs = [(stage, spec, split, i, rel) for split, i, rel in _tile_paths(spec)]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc="demo tiles", unit="tile")
    try:
        if workers > 1 and len(jobs) >= 64:
            import multiprocessing

            with multiprocessing.get_context("fork").Pool(workers) as pool:
                for n in pool.imap_unordered(_render_and_save, jobs, chunksize=16):
                    if bar is not None:
                        bar.update(n)
        else:
            for job in jobs:
                _render_and_save(job)
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    meta = {"version": DEMO_VERSION, "spec": dataclasses.asdict(spec)}
    (stage / MARKER).write_text(json.dumps(meta, indent=1) + "\n")


def default_demo_root() -> Path:
    return Path.home() / ".cache" / "selftune" / "demo"


def _marker(root: Path) -> dict | None:
    try:
        return json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return None


def ensure_demo(root: Path | None = None) -> Path:
    """The default demo set at ~/.cache/selftune/demo (or ROOT): generated if absent; returns its path.

    The default cache is regenerated when it was made by another generator version or spec.
    """
    is_default = root is None
    root = default_demo_root() if root is None else Path(root).expanduser()
    meta = _marker(root)
    wanted = {"version": DEMO_VERSION, "spec": dataclasses.asdict(DemoSpec())}
    if meta is not None and (meta == wanted or not is_default):
        return root
    if meta is None and _is_nonempty_dir(root):
        raise DataError(f"{root} is not empty and is not a selftune demo dataset (no {MARKER}); remove it or pass --data")
    return generate_demo(root, DemoSpec(), overwrite=meta is not None, workers=None)


__all__ = [
    "CLASS_COLORS",
    "CLASS_NAMES",
    "DEMO_VERSION",
    "DemoSpec",
    "default_demo_root",
    "ensure_demo",
    "generate_demo",
    "render_tile",
    "tile_rng",
]
