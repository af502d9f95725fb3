"""The torch datasets: a labelled split (image, mask) and the unlabelled pool (image)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from selftune.data.format import ClassTable, list_pairs, read_image, read_mask
from selftune.errors import DataError


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


__all__ = ["LabeledDataset", "UnlabeledDataset"]
