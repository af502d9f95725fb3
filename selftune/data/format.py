"""The dataset format on disk: classes.csv, image and mask decoding, the labelled splits.

Layout (docs/data.md has the details)::

    ROOT/classes.csv                 id,name[,r,g,b]; ids 0..K-1
    ROOT/{train,val,test}/images/    PNG, JPEG or TIFF; `test` is optional
    ROOT/{train,val,test}/masks/     <image stem>.png: class ids (255 = ignore) or class colours
    ROOT/{train,val,test}/points.json  or, instead of masks/, point annotations (`selftune.data.points`)
    ROOT/unlabeled/images/           the unlabelled pool, nested folders allowed (listed by `index`)

Every reader raises one `DataError` naming the file (and the line, pixel or value) at fault.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from selftune.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
LABELED_SPLITS = ("train", "val", "test")
REQUIRED_SPLITS = ("train", "val")
IGNORE_VALUE = 255  # mask value meaning "not labelled" in class-id masks
POINTS_FILE = "points.json"  # a split's point annotations, the alternative to its masks/ folder


# ---------------------------------------------------------------------- classes


@dataclass(frozen=True)
class ClassTable:
    """The classes from classes.csv, in id order; `colors` is set when it has r,g,b columns."""

    names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.names)


def read_classes(root: Path) -> ClassTable:
    """Read ROOT/classes.csv; a missing file or a bad line raises DataError naming file and line."""
    path = Path(root) / "classes.csv"
    if not path.is_file():
        raise DataError(f"missing {path}: a dataset needs a classes.csv with header 'id,name' (optionally ',r,g,b')")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    rows = [(i, r) for i, r in enumerate(csv.reader(text.splitlines()), start=1) if any(c.strip() for c in r)]
    if not rows:
        raise DataError(f"{path} is empty: expected a header 'id,name' (optionally ',r,g,b') and one line per class")
    line, header = rows[0]
    header = [c.strip().lower() for c in header]
    if header not in (["id", "name"], ["id", "name", "r", "g", "b"]):
        raise DataError(f"{path}:{line}: header must be 'id,name' or 'id,name,r,g,b', got {','.join(header)!r}")
    has_colors = len(header) == 5
    by_id: dict[int, tuple[str, tuple[int, int, int] | None]] = {}
    names: dict[str, int] = {}
    colors: dict[tuple[int, int, int], int] = {}
    for line, row in rows[1:]:
        cells = [c.strip() for c in row]
        if len(cells) != len(header):
            raise DataError(f"{path}:{line}: expected {len(header)} columns ({','.join(header)}), got {len(cells)}")
        try:
            cid = int(cells[0])
        except ValueError:
            raise DataError(f"{path}:{line}: class id must be an integer, got {cells[0]!r}") from None
        name = cells[1]
        if not name:
            raise DataError(f"{path}:{line}: class {cid} has an empty name")
        if cid in by_id:
            raise DataError(f"{path}:{line}: duplicate class id {cid}")
        if name in names:
            raise DataError(f"{path}:{line}: duplicate class name {name!r} (also id {names[name]})")
        color = None
        if has_colors:
            try:
                rgb = tuple(int(c) for c in cells[2:5])
            except ValueError:
                raise DataError(f"{path}:{line}: r,g,b must be integers 0-255, got {','.join(cells[2:5])!r}") from None
            if not all(0 <= c <= 255 for c in rgb):
                raise DataError(f"{path}:{line}: r,g,b must be integers 0-255, got {','.join(cells[2:5])!r}")
            color = (rgb[0], rgb[1], rgb[2])
            if color in colors:
                raise DataError(f"{path}:{line}: colour {color} is already used by class id {colors[color]}")
            colors[color] = cid
        by_id[cid] = (name, color)
        names[name] = cid
    k = len(by_id)
    if k == 0:
        raise DataError(f"{path} has a header but no classes")
    if k == 1:  # one class: every pixel is it, and there is nothing to segment or score
        raise DataError(f"{path} defines one class ({by_id[min(by_id)][0]!r}); segmentation needs at least two, "
                        "e.g. add `0,background` and number the others from 1")
    if sorted(by_id) != list(range(k)):
        missing = sorted(set(range(k)) - set(by_id))
        raise DataError(
            f"{path}: class ids must be 0..{k - 1} with none missing; got {sorted(by_id)} (missing {missing})"
        )
    if k > IGNORE_VALUE:
        raise DataError(f"{path}: at most {IGNORE_VALUE} classes are supported ({IGNORE_VALUE} means ignore), got {k}")
    return ClassTable(
        names=tuple(by_id[i][0] for i in range(k)),
        colors=tuple(by_id[i][1] for i in range(k)) if has_colors else None,  # type: ignore[misc]
    )


# ---------------------------------------------------------------------- images and masks


def _open(path: Path) -> Image.Image:
    try:
        img = Image.open(path)
        img.load()
        return img
    except FileNotFoundError:
        raise DataError(f"image file not found: {path}") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot decode {path}: corrupt or not an image ({exc})") from None


def _read_tiff_array(path: Path) -> np.ndarray:
    import tifffile

    try:
        arr = tifffile.imread(path)
    except Exception as exc:  # tifffile raises many types for bad files
        raise DataError(f"cannot decode {path}: corrupt or unsupported TIFF ({exc})") from None
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # planar (C, H, W) -> (H, W, C)
    return arr


def _read_array(path: Path) -> np.ndarray:
    """Decode to (H, W) or (H, W, C); TIFFs that Pillow cannot read go through tifffile."""
    try:
        img = _open(path)
    except DataError:
        if path.suffix.lower() in (".tif", ".tiff") and path.is_file():
            return _read_tiff_array(path)
        raise
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode in ("1", "CMYK", "YCbCr", "LAB", "HSV"):
        img = img.convert("RGB" if img.mode != "1" else "L")
    elif img.mode in ("I;16", "I;16B", "I;16L", "I", "F") and path.suffix.lower() in (".tif", ".tiff"):
        return _read_tiff_array(path)
    return np.asarray(img)


def read_image(path: Path) -> np.ndarray:
    """Read an image as HxWx3 uint8: grey is replicated, alpha dropped; DataError names the path."""
    path = Path(path)
    arr = _read_array(path)
    if arr.dtype != np.uint8:
        raise DataError(f"{path}: images must be 8-bit, got pixel type {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] in (1, 2):  # grey (+ alpha)
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        return np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        return np.ascontiguousarray(arr[:, :, :3])
    raise DataError(f"{path}: expected a 1-, 3- or 4-channel image, got array shape {arr.shape}")


def read_mask(path: Path, classes: ClassTable) -> np.ndarray:
    """Read a mask as HxW int64 class ids (255 kept as ignore).

    Single-channel PNGs hold class ids; RGB(A) PNGs hold class colours from classes.csv (an RGB
    mask whose channels are all equal is read as ids). DataError names the file and the bad
    value or colour.
    """
    path = Path(path)
    try:
        img = _open(path)
    except DataError as exc:
        raise DataError(str(exc).replace("image file", "mask file", 1)) from None
    if img.mode == "P" and classes.colors is not None:  # by colour: the palette may list them in any order
        return _palette_to_ids(path, np.asarray(img), img.getpalette() or [], classes)
    if img.mode == "P":  # palette PNG, classes.csv without colours: the palette index is the class id
        arr = np.asarray(img)
    elif img.mode == "1":  # 1-bit PNG: ids 0 and 1
        arr = np.asarray(img).astype(np.uint8)
    elif img.mode in ("L", "I", "I;16", "I;16B", "I;16L", "LA"):
        arr = np.asarray(img.convert("L") if img.mode == "LA" else img)
    elif img.mode in ("RGB", "RGBA"):
        rgb = np.asarray(img)[:, :, :3]
        if classes.colors is None:
            if (rgb[:, :, 0] == rgb[:, :, 1]).all() and (rgb[:, :, 0] == rgb[:, :, 2]).all():
                arr = rgb[:, :, 0]
            else:
                raise DataError(
                    f"{path}: mask is a colour (RGB) image but classes.csv has no r,g,b columns; "
                    "add the class colours or save masks as single-channel class ids"
                )
        else:
            return _colors_to_ids(path, rgb, classes)
    else:
        raise DataError(f"{path}: unsupported mask mode {img.mode!r}; use a single-channel PNG of class ids")
    ids = arr.astype(np.int64, copy=False)
    bad = (ids >= classes.num_classes) & (ids != IGNORE_VALUE)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise DataError(
            f"{path}: class id {int(ids[r, c])} at pixel (row {r}, col {c}) is not in classes.csv "
            f"(ids 0-{classes.num_classes - 1}, {IGNORE_VALUE} = ignore)"
        )
    return np.ascontiguousarray(ids)


def _palette_to_ids(path: Path, index: np.ndarray, palette: list[int], classes: ClassTable) -> np.ndarray:
    """A palette mask's class ids through its palette's colours and classes.csv's r,g,b (a mask saved with the
    colours in another order than the class ids is read right); palette index 255 is ignore, as in class-id
    masks, whatever its colour (palettes padded with black would otherwise turn it into a black class)."""
    assert classes.colors is not None
    by_color = {c: i for i, c in enumerate(classes.colors)}
    lut = np.full(256, -1, dtype=np.int64)
    for i in np.unique(index).tolist():
        color = tuple(palette[3 * i:3 * i + 3])
        if i == IGNORE_VALUE:
            lut[i] = IGNORE_VALUE
        elif color in by_color:
            lut[i] = by_color[color]
        else:
            r, c = np.argwhere(index == i)[0]
            shown = f"colour {color}" if len(color) == 3 else "no colour"
            raise DataError(
                f"{path}: palette index {i} ({shown}) at pixel (row {r}, col {c}) is not a class colour in "
                "classes.csv; a palette mask is read by its colours when classes.csv has r,g,b: give the masks' "
                "palette the class colours, or drop the r,g,b columns to read palette indices as class ids")
    return lut[index]


def _colors_to_ids(path: Path, rgb: np.ndarray, classes: ClassTable) -> np.ndarray:
    assert classes.colors is not None
    keys = (rgb[:, :, 0].astype(np.int32) << 16) | (rgb[:, :, 1].astype(np.int32) << 8) | rgb[:, :, 2]
    uniq, inverse = np.unique(keys, return_inverse=True)
    lookup = {(r << 16) | (g << 8) | b: i for i, (r, g, b) in enumerate(classes.colors)}
    ids = np.empty(len(uniq), dtype=np.int64)
    for j, key in enumerate(uniq.tolist()):
        if key not in lookup:
            r, c = np.argwhere(keys == key)[0]
            color = (key >> 16, (key >> 8) & 255, key & 255)
            raise DataError(
                f"{path}: colour {color} at pixel (row {r}, col {c}) is not a class colour in classes.csv"
            )
        ids[j] = lookup[key]
    return ids[inverse.reshape(keys.shape)]


# ---------------------------------------------------------------------- splits


def _is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def split_exists(root: Path, split: str) -> bool:
    """Whether ROOT/<split>/images exists (`test` is optional)."""
    return (Path(root) / split / "images").is_dir()


def label_kind(root: Path, split: str) -> str:
    """How a labelled split is labelled: "masks" (its masks/ folder) or "points" (its points.json).

    DataError when it has both (which one holds the truth would be a guess) or neither.
    """
    base = Path(root) / split
    masks, points = (base / "masks").is_dir(), (base / POINTS_FILE).is_file()
    if masks and points:
        raise DataError(f"split {split!r} has both {base / 'masks'} and {base / POINTS_FILE}; keep one of them")
    if points:
        return "points"
    if not (base / "images").is_dir():
        raise DataError(f"missing folder {base / 'images'} (split {split!r} needs images/ and masks/ or {POINTS_FILE})")
    if not masks:
        raise DataError(f"missing folder {base / 'masks'} (split {split!r} needs images/ and masks/, or images/ and "
                        f"{POINTS_FILE})")
    return "masks"


def list_images(root: Path, split: str) -> list[Path]:
    """The images of a labelled split, sorted by name; DataError on a missing folder, an empty split, or two
    images with one stem."""
    img_dir = Path(root) / split / "images"
    if not img_dir.is_dir():
        raise DataError(f"missing folder {img_dir} (split {split!r} needs images/ and masks/ or {POINTS_FILE})")
    images = sorted(e.name for e in os.scandir(img_dir) if e.is_file() and _is_image(e.name))
    if not images:
        raise DataError(f"no images in {img_dir} (expected {', '.join(IMAGE_EXTENSIONS)} files)")
    seen: dict[str, str] = {}
    for name in images:
        stem = Path(name).stem
        if stem in seen:
            raise DataError(f"{img_dir}: two images share the stem {stem!r} ({seen[stem]} and {name})")
        seen[stem] = name
    return [img_dir / name for name in images]


def list_pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    """(image, mask) pairs of a split labelled by masks, sorted by image name.

    DataError on a missing folder, an empty split, two images with one stem, or an image
    without its `<stem>.png` mask.
    """
    base = Path(root) / split
    img_dir, mask_dir = base / "images", base / "masks"
    for d in (img_dir, mask_dir):
        if not d.is_dir():
            hint = f"; its labels are points ({base / POINTS_FILE})" if (base / POINTS_FILE).is_file() else ""
            raise DataError(f"missing folder {d} (split {split!r} needs images/ and masks/){hint}")
    images = list_images(root, split)
    masks = {e.name for e in os.scandir(mask_dir) if e.is_file()}
    pairs = []
    for image in images:
        mask_name = image.stem + ".png"
        if mask_name not in masks:
            others = sorted(m for m in masks if Path(m).stem == image.stem)
            hint = f"; found {others[0]} but masks must be PNG (lossy formats change class ids)" if others else ""
            raise DataError(f"image {image} has no mask {mask_dir / mask_name}{hint}")
        pairs.append((image, mask_dir / mask_name))
    return pairs


def _orphan_masks(root: Path, split: str) -> list[str]:
    base = Path(root) / split
    stems = {Path(e.name).stem for e in os.scandir(base / "images") if _is_image(e.name)}
    return sorted(e.name for e in os.scandir(base / "masks") if e.is_file() and Path(e.name).stem not in stems
                  and not e.name.startswith("."))


__all__ = [
    "IGNORE_VALUE",
    "IMAGE_EXTENSIONS",
    "LABELED_SPLITS",
    "POINTS_FILE",
    "REQUIRED_SPLITS",
    "ClassTable",
    "label_kind",
    "list_images",
    "list_pairs",
    "read_classes",
    "read_image",
    "read_mask",
    "split_exists",
]
