"""The dataset format: reading, validation, the unlabelled index and reproducible batches.

Layout (docs/data.md has the details)::

    ROOT/classes.csv                 id,name[,r,g,b]; ids 0..K-1
    ROOT/{train,val,test}/images/    PNG, JPEG or TIFF; `test` is optional
    ROOT/{train,val,test}/masks/     <image stem>.png: class ids (255 = ignore) or class colours
    ROOT/unlabeled/images/           the unlabelled pool, nested folders allowed

`validate_dataset` checks all of it before training and raises one `DataError` naming the file.
`make_batches` makes batch t a pure function of (seed, stream, t), which is what exact resume needs.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from selftune.errors import DataError
from selftune.fileio import write_atomic

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
LABELED_SPLITS = ("train", "val", "test")
REQUIRED_SPLITS = ("train", "val")
IGNORE_VALUE = 255  # mask value meaning "not labelled" in class-id masks
INDEX_NAME = ".selftune_index.txt"
_INDEX_MAGIC = "# selftune-unlabeled-index v1 "
# A folder whose mtime is this close to the index's build time may have changed within the
# filesystem's timestamp granularity after it was listed ("racy" as git calls it): rebuild.
_RACY_NS = 2_000_000_000
UNLABELED_SAMPLE = 8  # unlabelled files decoded by validate_dataset


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
    if img.mode == "P":  # palette PNG: the palette index is the class id
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


def list_pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    """(image, mask) pairs of a labelled split, sorted by image name.

    DataError on a missing folder, an empty split, two images with one stem, or an image
    without its `<stem>.png` mask.
    """
    base = Path(root) / split
    img_dir, mask_dir = base / "images", base / "masks"
    for d in (img_dir, mask_dir):
        if not d.is_dir():
            raise DataError(f"missing folder {d} (split {split!r} needs images/ and masks/)")
    images = sorted(e.name for e in os.scandir(img_dir) if e.is_file() and _is_image(e.name))
    if not images:
        raise DataError(f"no images in {img_dir} (expected {', '.join(IMAGE_EXTENSIONS)} files)")
    masks = {e.name for e in os.scandir(mask_dir) if e.is_file()}
    seen: dict[str, str] = {}
    pairs = []
    for name in images:
        stem = Path(name).stem
        if stem in seen:
            raise DataError(f"{img_dir}: two images share the stem {stem!r} ({seen[stem]} and {name})")
        seen[stem] = name
        mask_name = stem + ".png"
        if mask_name not in masks:
            others = sorted(m for m in masks if Path(m).stem == stem)
            hint = f"; found {others[0]} but masks must be PNG (lossy formats change class ids)" if others else ""
            raise DataError(f"image {img_dir / name} has no mask {mask_dir / mask_name}{hint}")
        pairs.append((img_dir / name, mask_dir / mask_name))
    return pairs


def _orphan_masks(root: Path, split: str) -> list[str]:
    base = Path(root) / split
    stems = {Path(e.name).stem for e in os.scandir(base / "images") if _is_image(e.name)}
    return sorted(e.name for e in os.scandir(base / "masks") if e.is_file() and Path(e.name).stem not in stems
                  and not e.name.startswith("."))


# ---------------------------------------------------------------------- unlabelled index


def _cache_dir() -> Path:
    return Path.home() / ".cache" / "selftune"


def unlabeled_index_path(root: Path) -> Path:
    """Where the index of ROOT/unlabeled/images is kept when ROOT is writable."""
    return Path(root) / "unlabeled" / INDEX_NAME


def _fallback_index_path(root: Path) -> Path:
    key = hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:16]
    return _cache_dir() / f"index-{key}.txt"


def _scan_pool(top: Path) -> tuple[list[str], dict[str, int]]:
    """Relative paths of the images under `top` (recursive), and every folder's mtime_ns."""
    files: list[str] = []
    mtimes: dict[str, int] = {}
    seen_dirs: set[tuple[int, int]] = set()
    stack = [("", str(top))]
    while stack:
        rel, path = stack.pop()
        st = os.stat(path)
        if (st.st_dev, st.st_ino) in seen_dirs:  # a symlink loop
            continue
        seen_dirs.add((st.st_dev, st.st_ino))
        mtimes[rel] = st.st_mtime_ns
        prefix = rel + "/" if rel else ""
        with os.scandir(path) as it:
            for e in it:
                name = e.name
                if name.startswith("."):
                    continue
                if e.is_dir():
                    stack.append((prefix + name, e.path))
                elif name.lower().endswith(IMAGE_EXTENSIONS):
                    files.append(prefix + name)
    files.sort()
    return files, mtimes


def _load_index(path: Path, top: Path) -> list[str] | None:
    """The index at `path` if it is still valid for `top`, else None."""
    try:
        with open(path, encoding="utf-8") as f:
            header = f.readline()
            if not header.startswith(_INDEX_MAGIC):
                return None
            meta = json.loads(header[len(_INDEX_MAGIC):])
            files = f.read().splitlines()
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if meta.get("top") != str(top.resolve()) or meta.get("count") != len(files):
        return None
    built = int(meta.get("built_ns", 0))
    for rel, mtime in meta.get("dirs", {}).items():
        try:
            now = os.stat(top / rel if rel else top).st_mtime_ns
        except OSError:
            return None
        if now != mtime or now >= built - _RACY_NS:
            return None
    return files


def unlabeled_index(root: Path) -> list[str]:
    """Relative paths (with '/') of the images in ROOT/unlabeled/images, sorted, from a cached index.

    The pool is listed once with os.scandir (nested folders included, hidden names skipped) and
    the list is written atomically to ROOT/unlabeled/.selftune_index.txt, or to
    ~/.cache/selftune/index-<hash>.txt when ROOT is read-only. It is rebuilt when any indexed
    folder's modification time changed (adding or removing a file changes its folder's mtime).
    """
    root = Path(root)
    top = root / "unlabeled" / "images"
    if not top.is_dir():
        raise DataError(f"missing folder {top} (the unlabelled pool)")
    primary, fallback = unlabeled_index_path(root), _fallback_index_path(root)
    for path in (primary, fallback):
        files = _load_index(path, top)
        if files is not None:
            return files
    built_ns = _now_ns(root)
    files, mtimes = _scan_pool(top)
    meta = {"top": str(top.resolve()), "count": len(files), "built_ns": built_ns, "dirs": mtimes}
    text = _INDEX_MAGIC + json.dumps(meta, separators=(",", ":")) + "\n" + "".join(f + "\n" for f in files)
    for path in (primary, fallback):
        try:
            write_atomic(path, text)
            break
        except OSError:
            continue
    else:
        warnings.warn(f"could not write the unlabelled index for {top}; it will be rebuilt next time", stacklevel=2)
    return files


def _now_ns(root: Path) -> int:
    """The filesystem's idea of "now" (file mtimes come from the file server's clock on network mounts)."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".selftune-clock-", dir=root / "unlabeled")
    except OSError:
        import time

        return time.time_ns()
    try:
        os.close(fd)
        return os.stat(tmp).st_mtime_ns
    finally:
        os.unlink(tmp)


# ---------------------------------------------------------------------- datasets


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


class LabeledDataset(torch.utils.data.Dataset):
    """A labelled split: item i is (uint8 image [3, H, W], int64 mask [H, W]).

    With cache=True the decoded arrays are kept in memory after the first read (each DataLoader
    worker keeps its own copy; labelled sets are small).
    """

    def __init__(self, root: Path, split: str, classes: ClassTable, *, cache: bool = True) -> None:
        self.root = Path(root)
        self.split = split
        self.classes = classes
        self.pairs = list_pairs(self.root, split)
        self.cache = cache
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.pairs)

    def stem(self, i: int) -> str:
        return self.pairs[i][0].stem

    def arrays(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(HxWx3 uint8 image, HxW uint8 mask) of item i, from the cache when enabled."""
        if i in self._cache:
            return self._cache[i]
        image_path, mask_path = self.pairs[i]
        image = read_image(image_path)
        mask = read_mask(mask_path, self.classes)
        if image.shape[:2] != mask.shape:
            raise DataError(
                f"image {image_path} is {image.shape[1]}x{image.shape[0]} but its mask {mask_path} is "
                f"{mask.shape[1]}x{mask.shape[0]} (width x height)"
            )
        out = (image, mask.astype(np.uint8))
        if self.cache:
            self._cache[i] = out
        return out

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.arrays(i)
        return _to_tensor(image), torch.from_numpy(mask.astype(np.int64))


class UnlabeledDataset(torch.utils.data.Dataset):
    """The unlabelled pool: item i is uint8 [3, H, W], read from disk on each access.

    The index is held as one numpy byte array (no per-path Python objects), so forked
    DataLoader workers share it without copy-on-access growth.
    """

    def __init__(self, root: Path, index: Sequence[str]) -> None:
        self.root = Path(root)
        self.top = self.root / "unlabeled" / "images"
        if len(index) == 0:
            raise DataError(f"no images in {self.top}: the unlabelled pool is empty")
        self._paths = np.array([p.encode("utf-8") for p in index])

    def __len__(self) -> int:
        return len(self._paths)

    def relpath(self, i: int) -> str:
        return self._paths[i].decode("utf-8")

    def __getitem__(self, i: int) -> torch.Tensor:
        return _to_tensor(read_image(self.top / self.relpath(i)))


# ---------------------------------------------------------------------- validation


@dataclass
class DatasetSummary:
    """What `validate_dataset` found: counts, class pixel statistics (train split) and warnings."""

    root: Path
    counts: dict[str, int]  # images per split: train, val, [test], [unlabeled (when checked)]
    class_names: tuple[str, ...]
    pixel_counts: tuple[int, ...]  # train pixels per class (ignore pixels excluded)
    frequencies: tuple[float, ...]  # pixel_counts / sum
    suggested_weights: tuple[float, ...]  # inverse frequency, mean 1 over present classes, 0 if absent
    ignored_pixels: int = 0  # train pixels marked 255
    image_sizes: tuple[tuple[int, int], ...] = ()  # distinct (height, width) of labelled images
    warnings: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def class_frequencies(pixel_counts: Sequence[int] | np.ndarray) -> tuple[float, ...]:
    """Each class's share of the labelled pixels; all zeros when there are none."""
    counts = np.asarray(pixel_counts, dtype=np.float64)
    total = counts.sum()
    return tuple(float(x) for x in (counts / total if total > 0 else np.zeros_like(counts)))


def suggested_class_weights(frequencies: Sequence[float] | np.ndarray) -> tuple[float, ...]:
    """Inverse-frequency class weights normalised to mean 1 over the present classes.

    As in seed 004's imbalance fix (weight ~ 1/frequency, normalised). A class with no pixels
    gets weight 0: there is nothing to weight, and 1/0 would be infinite.
    """
    f = np.asarray(frequencies, dtype=np.float64)
    present = f > 0
    w = np.zeros_like(f)
    if present.any():
        w[present] = 1.0 / f[present]
        w[present] /= w[present].mean()
    return tuple(float(x) for x in w)


def validate_dataset(root: Path, *, need_unlabeled: bool, num_classes: int | None = None) -> DatasetSummary:
    """Check a dataset before training; raise one DataError naming the first bad file or folder.

    Reads classes.csv and every labelled image and mask in full (sizes must match, ids/colours
    must be known, files must decode). For the unlabelled pool (only when `need_unlabeled`) it
    checks the folder is there and non-empty and decodes the first few files.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset folder not found: {root}")
    classes = read_classes(root)
    if num_classes is not None and num_classes != classes.num_classes:
        raise DataError(
            f"{root / 'classes.csv'} defines {classes.num_classes} classes but {num_classes} were expected"
        )
    k = classes.num_classes
    counts: dict[str, int] = {}
    notes: list[str] = []
    pixels = np.zeros(k, dtype=np.int64)
    ignored = 0
    sizes: set[tuple[int, int]] = set()
    seen_in: dict[str, np.ndarray] = {}
    for split in LABELED_SPLITS:
        if split not in REQUIRED_SPLITS and not (root / split).exists():
            continue
        ds = LabeledDataset(root, split, classes, cache=False)
        counts[split] = len(ds)
        present = np.zeros(k, dtype=bool)
        for i in range(len(ds)):
            image, mask = ds.arrays(i)
            sizes.add(image.shape[:2])
            hist = np.bincount(mask.ravel(), minlength=256)
            present |= hist[:k] > 0
            if split == "train":
                pixels += hist[:k]
                ignored += int(hist[IGNORE_VALUE])
        seen_in[split] = present
        orphans = _orphan_masks(root, split)
        if orphans:
            notes.append(f"{split}: {len(orphans)} mask(s) without an image, e.g. {root / split / 'masks' / orphans[0]}")
    if need_unlabeled:
        top = root / "unlabeled" / "images"
        index = unlabeled_index(root)
        if not index:
            raise DataError(f"no images in {top}: self-training needs an unlabelled pool (or use method=supervised)")
        counts["unlabeled"] = len(index)
        for rel in index[:UNLABELED_SAMPLE]:
            read_image(top / rel)
    freqs = class_frequencies(pixels)
    weights = suggested_class_weights(freqs)
    for c in range(k):
        if pixels[c] == 0:
            notes.append(f"class {c} ({classes.names[c]!r}) has no train pixels: its suggested weight is 0")
        elif not seen_in["val"][c]:
            notes.append(f"class {c} ({classes.names[c]!r}) does not occur in val: its IoU cannot be measured there")
    if len(sizes) > 1:
        notes.append(f"labelled images come in {len(sizes)} sizes ({_sizes_text(sizes)}); crops handle that")
    return DatasetSummary(
        root=root, counts=counts, class_names=classes.names, pixel_counts=tuple(int(x) for x in pixels),
        frequencies=freqs, suggested_weights=weights, ignored_pixels=ignored,
        image_sizes=tuple(sorted(sizes)), warnings=notes,
    )


def _sizes_text(sizes: set[tuple[int, int]]) -> str:
    shown = sorted(sizes)[:3]
    more = ", ..." if len(sizes) > 3 else ""
    return ", ".join(f"{w}x{h}" for h, w in shown) + more


def dataset_fingerprint(root: Path) -> str:
    """A short sha256 over classes.csv, the labelled file list with sizes, and the unlabelled count.

    Cheap (no image is decoded; the unlabelled pool is counted from its index) and enough to tell
    datasets apart in exported provenance.
    """
    root = Path(root)
    h = hashlib.sha256()
    classes_csv = root / "classes.csv"
    h.update(classes_csv.read_bytes() if classes_csv.is_file() else b"")
    for split in LABELED_SPLITS:
        for sub in ("images", "masks"):
            d = root / split / sub
            if not d.is_dir():
                continue
            for e in sorted(os.scandir(d), key=lambda e: e.name):
                if e.is_file() and not e.name.startswith("."):
                    h.update(f"\n{split}/{sub}/{e.name}\t{e.stat().st_size}".encode())
    n_unlabeled = len(unlabeled_index(root)) if (root / "unlabeled" / "images").is_dir() else 0
    h.update(f"\nunlabeled\t{n_unlabeled}".encode())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------- reproducible batches


def derive_seed(*parts: int) -> int:
    """A 63-bit seed that is a pure function of the integer parts (numpy's SeedSequence hashing)."""
    state = np.random.SeedSequence([int(p) & 0xFFFFFFFFFFFFFFFF for p in parts]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & 0x7FFFFFFFFFFFFFFF


class _SeededBatches(torch.utils.data.Sampler):
    """Infinite batch sampler: batch t is [(index, sample_seed)] drawn from a generator seeded by (seed, stream, t)."""

    def __init__(self, n: int, batch_size: int, seed: int, stream: int, start_iter: int) -> None:
        self.n, self.batch_size = n, batch_size
        self.seed, self.stream, self.start_iter = seed, stream, start_iter

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        t = self.start_iter
        while True:
            yield batch_indices(self.n, self.batch_size, self.seed, self.stream, t)
            t += 1


def batch_indices(n: int, batch_size: int, seed: int, stream: int, t: int) -> list[tuple[int, int]]:
    """The (dataset index, sample seed) pairs of batch t: indices drawn with replacement."""
    g = torch.Generator().manual_seed(derive_seed(seed, stream, t))
    idx = torch.randint(n, (batch_size,), generator=g).tolist()
    seeds = torch.randint(0, 2**62, (batch_size,), generator=g).tolist()
    return list(zip(idx, seeds, strict=True))


class _Augmented(torch.utils.data.Dataset):
    """Takes (index, sample_seed) and returns the transformed sample."""

    def __init__(self, dataset: torch.utils.data.Dataset, transform: Callable[..., Any] | None) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, sample_seed = key
        item = self.dataset[index]
        image, mask = item if isinstance(item, tuple) else (item, None)
        if self.transform is not None:
            image, mask = self.transform(image, mask, generator=torch.Generator().manual_seed(sample_seed))
        return image if mask is None else (image, mask)


def collate(samples: list[Any]) -> Any:
    """Stack images to uint8 [B, 3, h, w] and masks to int64 [B, h, w] (a tuple when labelled)."""
    if isinstance(samples[0], tuple):
        images, masks = zip(*samples, strict=True)
        return torch.stack(images), torch.stack(masks)
    return torch.stack(samples)


def make_batches(
    dataset: torch.utils.data.Dataset,
    *,
    batch_size: int,
    seed: int,
    stream: int,
    start_iter: int = 0,
    num_workers: int = 0,
    transform: Callable[..., Any] | None = None,
    collate: Callable[[list[Any]], Any] = collate,
) -> Iterator[Any]:
    """An endless iterator of batches; batch number t (from `start_iter`) depends only on (seed, stream, t).

    Indices are drawn with replacement; each sample is transformed by
    `transform(image, mask, generator=g)` with its own seeded generator (mask is None for
    unlabelled data). Resuming at t gives the same batches as running on from 0. Use a distinct
    `stream` per data source (e.g. 0 labelled, 1 unlabelled) so they are independent.
    """
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise DataError("cannot draw batches from an empty dataset")
    sampler = _SeededBatches(n, batch_size, seed, stream, start_iter)
    loader = torch.utils.data.DataLoader(
        _Augmented(dataset, transform),
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate,
        persistent_workers=num_workers > 0,
        # DataLoader draws worker seeds from this generator instead of the global RNG, so
        # building a loader never shifts the training loop's own random stream.
        generator=torch.Generator().manual_seed(derive_seed(seed, stream, -1)),
    )
    return iter(loader)


__all__ = [
    "IGNORE_VALUE",
    "IMAGE_EXTENSIONS",
    "ClassTable",
    "DatasetSummary",
    "LabeledDataset",
    "UnlabeledDataset",
    "batch_indices",
    "class_frequencies",
    "collate",
    "dataset_fingerprint",
    "derive_seed",
    "list_pairs",
    "make_batches",
    "read_classes",
    "read_image",
    "read_mask",
    "split_exists",
    "suggested_class_weights",
    "unlabeled_index",
    "unlabeled_index_path",
    "validate_dataset",
]
