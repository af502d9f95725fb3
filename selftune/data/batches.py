"""Reproducible batches: `make_batches` makes batch t a pure function of (seed, stream, t).

That is what exact resume needs: a run resumed at step t draws the same batches, and the same
per-sample augmentation seeds, as a run that went on from step 0.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from selftune.data.datasets import PoolDraw
from selftune.errors import DataError


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
        if isinstance(item, PoolDraw):  # an unlabelled draw that may have passed over unreadable files
            if self.transform is None:
                return item
            image, _ = self.transform(item.image, None, generator=torch.Generator().manual_seed(sample_seed))
            return item._replace(image=image)
        image, mask = item if isinstance(item, tuple) else (item, None)
        if self.transform is not None:
            image, mask = self.transform(image, mask, generator=torch.Generator().manual_seed(sample_seed))
        return image if mask is None else (image, mask)


def collate(samples: list[Any]) -> Any:
    """Stack images to uint8 [B, 3, h, w] and masks to int64 [B, h, w] (a tuple when labelled; a `PoolDraw` with
    all the samples' skipped files for unlabelled draws)."""
    if isinstance(samples[0], PoolDraw):
        return PoolDraw(torch.stack([s.image for s in samples]), tuple(why for s in samples for why in s.skipped))
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


__all__ = ["batch_indices", "collate", "derive_seed", "make_batches"]
