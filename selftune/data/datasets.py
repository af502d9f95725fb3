"""The torch datasets: a labelled split (image, mask; the mask drawn from points.json for a split labelled by
points) and the unlabelled pool (image)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from selftune.data.format import ClassTable, label_kind, list_images, list_pairs, read_image, read_mask
from selftune.data.points import PointTargets, check_inside, point_targets, points_path, read_points
from selftune.errors import DataError


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


class LabeledDataset(torch.utils.data.Dataset):
    """A labelled split: item i is (uint8 image [3, H, W], int64 mask [H, W]).

    A split labelled by points (its points.json, `selftune.data.points`) gives masks drawn from them with
    `points` (disk radius and ignored ring; the defaults when None): `self.points[i]` are item i's points.
    With cache=True the decoded arrays are kept in memory after the first read (each DataLoader
    worker keeps its own copy; labelled sets are small).
    """

    def __init__(self, root: Path, split: str, classes: ClassTable, *, cache: bool = True,
                 points: PointTargets | None = None) -> None:
        self.root = Path(root)
        self.split = split
        self.classes = classes
        self.kind = label_kind(self.root, split)  # "masks" or "points"
        self.targets = points or PointTargets()
        if self.kind == "points":
            images = list_images(self.root, split)
            self.pairs = [(image, points_path(self.root, split)) for image in images]
            self.points = read_points(points_path(self.root, split), [p.name for p in images], classes)
        else:
            self.pairs = list_pairs(self.root, split)
            self.points = []
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
        if self.kind == "points":
            h, w = image.shape[:2]
            check_inside(self.points[i], w, h, mask_path, image_path.name)
            mask = point_targets(h, w, self.points[i], self.targets)
        else:
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


POOL_DRAW_TRIES = 32  # files an unlabelled draw may try before an unreadable pool is an error


class PoolDraw(NamedTuple):
    """Unlabelled image(s) and the unreadable files passed over to draw them: one sample, or (collated) a batch."""

    image: torch.Tensor  # uint8 [3, H, W], or [B, 3, h, w] for a batch
    skipped: tuple[str, ...] = ()  # why each file passed over could not be read (the message names the file)


class UnlabeledDataset(torch.utils.data.Dataset):
    """The unlabelled pool: item i is uint8 [3, H, W], read from disk on each access.

    With skip_unreadable=True (the training loop's pool: large and noisy), item i is a `PoolDraw`: when
    file i cannot be read, the first readable file of a fixed pseudo-random sequence of other items
    (a pure function of i, so batch t stays a pure function of t) takes its place, and the draw
    says which files it passed over. Without it, an unreadable file is a DataError.

    The index is held as one numpy byte array (no per-path Python objects), so forked
    DataLoader workers share it without copy-on-access growth.
    """

    def __init__(self, root: Path, index: Sequence[str], *, skip_unreadable: bool = False) -> None:
        self.root = Path(root)
        self.top = self.root / "unlabeled" / "images"
        if len(index) == 0:
            raise DataError(f"no images in {self.top}: the unlabelled pool is empty")
        self._paths = np.array([p.encode("utf-8") for p in index])
        self.skip_unreadable = skip_unreadable

    def __len__(self) -> int:
        return len(self._paths)

    def relpath(self, i: int) -> str:
        return self._paths[i].decode("utf-8")

    def __getitem__(self, i: int) -> torch.Tensor | PoolDraw:
        if not self.skip_unreadable:
            return _to_tensor(read_image(self.top / self.relpath(i)))
        return self.draw(i)

    def draw(self, i: int) -> PoolDraw:
        """Item i, or the first readable of its replacements (see the class docstring)."""
        skipped: list[str] = []
        j = i
        for attempt in range(POOL_DRAW_TRIES):
            try:
                return PoolDraw(_to_tensor(read_image(self.top / self.relpath(j))), tuple(skipped))
            except DataError as exc:
                skipped.append(str(exc))
            j = replacement_index(i, attempt, len(self))
        raise DataError(f"{POOL_DRAW_TRIES} unlabelled images in a row cannot be read, the first: {skipped[0]}; "
                        f"is the pool {self.top} readable?")


def replacement_index(i: int, attempt: int, n: int) -> int:
    """The item that stands in for item i of n on its `attempt`-th unreadable draw: a pure function of the three."""
    return int(np.random.SeedSequence([i, attempt]).generate_state(1)[0]) % n


__all__ = ["POOL_DRAW_TRIES", "LabeledDataset", "PoolDraw", "UnlabeledDataset", "replacement_index"]
