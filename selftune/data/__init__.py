"""The dataset: its format on disk, the unlabelled index, torch datasets, validation, seeded batches, the demo set.

    from selftune.data import read_classes, validate_dataset, LabeledDataset, make_batches
    classes = read_classes("data/salak")                          # classes.csv
    summary = validate_dataset("data/salak", need_unlabeled=True)  # one DataError naming the bad file
    train = LabeledDataset("data/salak", "train", classes)        # (uint8 [3, H, W], int64 [H, W])

Modules, one concern each: `format` (classes.csv, image and mask decoding, the labelled splits),
`index` (the cached list of the unlabelled pool), `datasets` (`LabeledDataset`, `UnlabeledDataset`),
`validate` (`validate_dataset`, `DatasetSummary`, `dataset_fingerprint`), `batches` (`make_batches`:
batch t a pure function of (seed, stream, t)), `palette` (class colours for pictures), `points` (point
annotations, points.json, and the targets drawn from them), `demo` (the procedural demo dataset), `particles`
(the procedural binary particle-picking demo, labelled by points) and `cli` (`selftune data check` and
`selftune data demo`). docs/data.md
describes the format. This package imports nothing from `selftune.trainable`; the names below are
loaded on first use, so importing it (and `selftune --help`) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "IGNORE_VALUE": "selftune.data.format",
    "IMAGE_EXTENSIONS": "selftune.data.format",
    "ClassTable": "selftune.data.format",
    "list_pairs": "selftune.data.format",
    "read_classes": "selftune.data.format",
    "read_image": "selftune.data.format",
    "read_mask": "selftune.data.format",
    "split_exists": "selftune.data.format",
    "label_kind": "selftune.data.format",
    "list_images": "selftune.data.format",
    "Point": "selftune.data.points",
    "PointTargets": "selftune.data.points",
    "point_targets": "selftune.data.points",
    "read_points": "selftune.data.points",
    "ParticleSpec": "selftune.data.particles",
    "generate_particles": "selftune.data.particles",
    "unlabeled_index": "selftune.data.index",
    "unlabeled_index_path": "selftune.data.index",
    "LabeledDataset": "selftune.data.datasets",
    "UnlabeledDataset": "selftune.data.datasets",
    "PoolDraw": "selftune.data.datasets",
    "DatasetSummary": "selftune.data.validate",
    "check_crop": "selftune.data.validate",
    "class_frequencies": "selftune.data.validate",
    "dataset_fingerprint": "selftune.data.validate",
    "fingerprint_matches": "selftune.data.validate",
    "suggested_class_weights": "selftune.data.validate",
    "validate_dataset": "selftune.data.validate",
    "batch_indices": "selftune.data.batches",
    "collate": "selftune.data.batches",
    "derive_seed": "selftune.data.batches",
    "make_batches": "selftune.data.batches",
    "DEFAULT_PALETTE": "selftune.data.palette",
    "class_palette": "selftune.data.palette",
    "CLASS_COLORS": "selftune.data.demo",
    "CLASS_NAMES": "selftune.data.demo",
    "DEMO_VERSION": "selftune.data.demo",
    "DemoSpec": "selftune.data.demo",
    "default_demo_root": "selftune.data.demo",
    "ensure_demo": "selftune.data.demo",
    "generate_demo": "selftune.data.demo",
    "render_tile": "selftune.data.demo",
    "tile_rng": "selftune.data.demo",
}

__all__ = [
    "CLASS_COLORS",
    "CLASS_NAMES",
    "DEFAULT_PALETTE",
    "DEMO_VERSION",
    "IGNORE_VALUE",
    "IMAGE_EXTENSIONS",
    "ClassTable",
    "DatasetSummary",
    "DemoSpec",
    "LabeledDataset",
    "ParticleSpec",
    "Point",
    "PointTargets",
    "PoolDraw",
    "UnlabeledDataset",
    "batch_indices",
    "check_crop",
    "class_frequencies",
    "class_palette",
    "collate",
    "dataset_fingerprint",
    "default_demo_root",
    "derive_seed",
    "ensure_demo",
    "fingerprint_matches",
    "generate_demo",
    "generate_particles",
    "label_kind",
    "list_images",
    "list_pairs",
    "make_batches",
    "point_targets",
    "read_classes",
    "read_image",
    "read_mask",
    "read_points",
    "render_tile",
    "split_exists",
    "suggested_class_weights",
    "tile_rng",
    "unlabeled_index",
    "unlabeled_index_path",
    "validate_dataset",
]

if TYPE_CHECKING:
    from selftune.data.batches import batch_indices, collate, derive_seed, make_batches
    from selftune.data.datasets import LabeledDataset, PoolDraw, UnlabeledDataset
    from selftune.data.demo import (
        CLASS_COLORS,
        CLASS_NAMES,
        DEMO_VERSION,
        DemoSpec,
        default_demo_root,
        ensure_demo,
        generate_demo,
        render_tile,
        tile_rng,
    )
    from selftune.data.format import (
        IGNORE_VALUE,
        IMAGE_EXTENSIONS,
        ClassTable,
        label_kind,
        list_images,
        list_pairs,
        read_classes,
        read_image,
        read_mask,
        split_exists,
    )
    from selftune.data.index import unlabeled_index, unlabeled_index_path
    from selftune.data.palette import DEFAULT_PALETTE, class_palette
    from selftune.data.particles import ParticleSpec, generate_particles
    from selftune.data.points import Point, PointTargets, point_targets, read_points
    from selftune.data.validate import (
        DatasetSummary,
        check_crop,
        class_frequencies,
        dataset_fingerprint,
        fingerprint_matches,
        suggested_class_weights,
        validate_dataset,
    )


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'selftune.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
