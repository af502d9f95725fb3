"""Point annotations: `ROOT/{split}/points.json` instead of `masks/`, and the training targets drawn from them.

One entry per image of the split, keyed by the image's file name (or its stem), holding a list of points
(docs/data.md has the schema)::

    {"mic_0001.png": [[12.5, 40], [80, 33.2, 6]],
     "mic_0002.png": [{"x": 10, "y": 20, "radius": 5, "class": "particle"}],
     "mic_0003.png": []}

x is the column and y the row in pixels, (0, 0) the centre of the top-left pixel; a point must lie within
[0, width - 1] x [0, height - 1]. A point is `[x, y]`, `[x, y, radius]` or an object with `x`, `y` and
optionally `radius` and `class` (an id or a name from classes.csv, not background; default class 1).

Targets (`point_targets`): a pixel within `radius` of a point (and the pixel holding the point) is that
point's class, a pixel in the ring of width `ring` beyond the disk is ignored (255: the loss and the metrics
skip it, so a particle's uncertain edge teaches nothing), the rest is background (class 0). `PointTargets`
holds the radius for points without their own and the ring width; the train config's `point_radius` and
`point_ring` set them for a run.

Every reader raises one `DataError` naming the file and the entry at fault.
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from selftune.data.format import IGNORE_VALUE, POINTS_FILE, ClassTable
from selftune.errors import DataError

POINT_RADIUS = 4.0  # default disk radius in pixels around each point (TrainConfig.point_radius)
POINT_RING = 2.0  # default width in pixels of the ignored ring beyond the disk (TrainConfig.point_ring)
_POINT_KEYS = ("x", "y", "radius", "class")


class Point(NamedTuple):
    """One annotated centre: column x, row y (pixels), its own radius or None, its class id."""

    x: float
    y: float
    radius: float | None
    cls: int


@dataclass(frozen=True)
class PointTargets:
    """How points become a mask: the disk radius of points without their own, and the ignored ring's width."""

    radius: float = POINT_RADIUS
    ring: float = POINT_RING

    def __post_init__(self) -> None:
        for name in ("radius", "ring"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
                raise DataError(f"point {name} must be a finite number >= 0 pixels, got {v!r}")


def points_path(root: Path, split: str) -> Path:
    return Path(root) / split / POINTS_FILE


def read_points(path: Path, image_names: list[str], classes: ClassTable) -> list[list[Point]]:
    """The points of each image in `image_names` (file names, in order), read from `path`.

    DataError, naming the file and the entry, on malformed JSON, an entry for an unknown image (or two entries
    for one image), an image without an entry, or a malformed point: not [x, y], [x, y, radius] or an object
    of x, y, radius, class; a coordinate or radius that is not a finite number; a negative radius; a class
    that is background or not in classes.csv. Whether a point lies inside its image is checked when the image
    is read (`check_inside`).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected an object mapping image names to lists of points, got "
                        f"{type(data).__name__}")
    if classes.num_classes < 2:
        raise DataError(f"{path}: points need a class besides background, but classes.csv has "
                        f"{classes.num_classes} class")
    by_name = {n: i for i, n in enumerate(image_names)}
    by_stem = {Path(n).stem: i for i, n in enumerate(image_names)}
    found: dict[int, str] = {}
    out: list[list[Point]] = [[] for _ in image_names]
    for key, entry in data.items():
        i = by_name.get(key, by_stem.get(key))
        if i is None:
            hint = difflib.get_close_matches(key, list(by_name), n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise DataError(f"{path}: entry {key!r} names no image of {path.parent / 'images'}{extra}")
        if i in found:
            raise DataError(f"{path}: entries {found[i]!r} and {key!r} both name image {image_names[i]}")
        found[i] = key
        if not isinstance(entry, list):
            raise DataError(f"{path}: entry {key!r} must be a list of points, got {type(entry).__name__}")
        out[i] = [_point(path, key, j, p, classes) for j, p in enumerate(entry)]
    missing = [n for i, n in enumerate(image_names) if i not in found]
    if missing:
        raise DataError(f"{path}: image {missing[0]} has no entry ({len(missing)} image(s) without one); give "
                        f"\"{missing[0]}\": [] for an image without any object")
    return out


def _point(path: Path, key: str, j: int, p: Any, classes: ClassTable) -> Point:
    where = f"{path}: image {key!r}, point {j}"
    if isinstance(p, dict):
        if unknown := sorted(set(p) - set(_POINT_KEYS)):
            raise DataError(f"{where}: unknown key {unknown[0]!r} (a point has {', '.join(_POINT_KEYS)})")
        if "x" not in p or "y" not in p:
            raise DataError(f"{where}: a point needs both x and y, got {json.dumps(p)}")
        x, y, radius, cls = p["x"], p["y"], p.get("radius"), p.get("class", 1)
    elif isinstance(p, list) and len(p) in (2, 3):
        x, y, radius, cls = p[0], p[1], (p[2] if len(p) == 3 else None), 1
    else:
        raise DataError(f"{where}: expected [x, y], [x, y, radius] or {{\"x\": .., \"y\": ..}}, got {json.dumps(p)}")
    for name, v in (("x", x), ("y", y)) + ((("radius", radius),) if radius is not None else ()):
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise DataError(f"{where}: {name} must be a number of pixels, got {json.dumps(v)}")
    if radius is not None and radius < 0:
        raise DataError(f"{where}: radius must be >= 0 pixels, got {radius}")
    return Point(float(x), float(y), None if radius is None else float(radius), _class_id(where, cls, classes))


def _class_id(where: str, cls: Any, classes: ClassTable) -> int:
    if isinstance(cls, str) and cls in classes.names:
        cid = classes.names.index(cls)
    elif isinstance(cls, int) and not isinstance(cls, bool) and 0 <= cls < classes.num_classes:
        cid = cls
    else:
        ids = "id 1 or its name" if classes.num_classes == 2 else f"ids 1-{classes.num_classes - 1} or their names"
        raise DataError(f"{where}: class {json.dumps(cls)} is not in classes.csv ({ids})")
    if cid == 0:
        raise DataError(f"{where}: class {json.dumps(cls)} is the background class (0); points mark objects")
    return cid


def check_inside(points: list[Point], width: int, height: int, path: Path, key: str) -> None:
    """DataError naming the file, the image and the point when a point lies outside the `width` x `height` image."""
    for j, p in enumerate(points):
        if not (0 <= p.x <= width - 1 and 0 <= p.y <= height - 1):
            raise DataError(f"{path}: image {key!r}, point {j} (x={p.x:g}, y={p.y:g}) is outside the image "
                            f"({width}x{height} px: x in [0, {width - 1}], y in [0, {height - 1}])")


def point_targets(height: int, width: int, points: list[Point], targets: PointTargets,
                  ignore_index: int = IGNORE_VALUE) -> np.ndarray:
    """uint8 [height, width] class ids drawn from `points`: each point's disk its class, the ring beyond it
    `ignore_index`, the rest 0. Where disks overlap the nearest point wins; a disk beats another's ring."""
    labels = np.zeros((height, width), dtype=np.uint8)
    nearest = np.full((height, width), np.inf, dtype=np.float64)
    ringed = np.zeros((height, width), dtype=bool)
    for p in points:
        r = targets.radius if p.radius is None else p.radius
        outer = r + targets.ring
        r0, r1 = max(0, math.floor(p.y - outer)), min(height, math.ceil(p.y + outer) + 1)
        c0, c1 = max(0, math.floor(p.x - outer)), min(width, math.ceil(p.x + outer) + 1)
        rows = np.arange(r0, r1, dtype=np.float64)[:, None]
        cols = np.arange(c0, c1, dtype=np.float64)[None, :]
        d = np.sqrt((rows - p.y) ** 2 + (cols - p.x) ** 2)
        centre = np.zeros_like(d, dtype=bool)
        cy, cx = min(height - 1, round(p.y)), min(width - 1, round(p.x))
        centre[cy - r0, cx - c0] = True  # the pixel holding the point, whatever the radius
        win = nearest[r0:r1, c0:c1]
        inside = ((d <= r) | centre) & (d < win)
        win[inside] = d[inside]
        labels[r0:r1, c0:c1][inside] = p.cls
        ringed[r0:r1, c0:c1] |= d <= outer
    labels[ringed & ~np.isfinite(nearest)] = ignore_index
    return labels


__all__ = ["POINTS_FILE", "POINT_RADIUS", "POINT_RING", "Point", "PointTargets", "check_inside", "point_targets",
           "points_path", "read_points"]
