"""The procedural demo data: deterministic, the users' classes, long-tailed, refuses to clobber."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from selftune.data import read_classes, unlabeled_index, validate_dataset
from selftune.data.demo import (
    CLASS_NAMES,
    MARKER,
    DemoSpec,
    ensure_demo,
    generate_demo,
    render_tile,
    tile_rng,
)
from selftune.errors import DataError

SMALL = DemoSpec(size=16, n_train=3, n_val=2, n_test=1, n_unlabeled=60, seed=1)


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_spec_gives_byte_identical_files(tmp_path: Path) -> None:
    a = files(generate_demo(tmp_path / "a", SMALL, workers=1))
    b = files(generate_demo(tmp_path / "b", SMALL, workers=2))  # forked workers write the same bytes
    assert a == b
    assert len([k for k in a if k.endswith(".png")]) == 2 * 3 + 2 * 2 + 2 * 1 + 60
    c = files(generate_demo(tmp_path / "c", DemoSpec(**{**SMALL.__dict__, "seed": 2}), workers=1))
    assert c.keys() == a.keys() and c != a


def test_layout_classes_and_marker(tiny_data: Path) -> None:
    classes = read_classes(tiny_data)
    assert classes.names == CLASS_NAMES == (
        "background", "water body", "building", "road", "areca tree", "snake fruit", "open land"
    )
    assert classes.colors is not None and len(set(classes.colors)) == 7
    for m in (tiny_data / "train" / "masks").iterdir():
        arr = np.asarray(Image.open(m))
        assert Image.open(m).mode == "L" and arr.shape == (32, 32) and arr.max() < 7
    assert all("/" in p for p in unlabeled_index(tiny_data))  # the pool is in nested folders
    meta = json.loads((tiny_data / MARKER).read_text())
    assert meta["spec"]["size"] == 32 and meta["spec"]["n_unlabeled"] == 12
    assert validate_dataset(tiny_data, need_unlabeled=True).counts["unlabeled"] == 12
    # the staging folder is gone and ROOT has a plain mkdir's permissions (not mkdtemp's 0700)
    assert [p.name for p in tiny_data.parent.iterdir()] == ["data"]
    (tiny_data.parent.parent / "ref").mkdir(exist_ok=True)
    assert tiny_data.stat().st_mode == (tiny_data.parent.parent / "ref").stat().st_mode


def test_refuses_non_empty_root_and_overwrites_cleanly(tmp_path: Path) -> None:
    root = tmp_path / "d"
    root.mkdir()
    (root / "mine.txt").write_text("keep me")
    with pytest.raises(DataError) as err:
        generate_demo(root, SMALL)
    assert str(root) in str(err.value)
    generate_demo(root, DemoSpec(size=16, n_train=3, n_val=1, n_test=1, n_unlabeled=2), overwrite=True)
    generate_demo(root, DemoSpec(size=16, n_train=2, n_val=1, n_test=0, n_unlabeled=1), overwrite=True)
    assert sorted(p.name for p in (root / "train" / "images").iterdir()) == ["train_0000.png", "train_0001.png"]
    assert not (root / "test").exists() and (root / "mine.txt").read_text() == "keep me"
    generate_demo(tmp_path / "empty", SMALL)  # an existing empty folder is fine
    (tmp_path / "file").write_text("")
    with pytest.raises(DataError, match="not a folder"):
        generate_demo(tmp_path / "file", SMALL)


def test_bad_spec() -> None:
    with pytest.raises(DataError, match="n_train must be >= 1"):
        DemoSpec(n_train=0)
    with pytest.raises(DataError, match="size must be >= 16"):
        DemoSpec(size=8)
    with pytest.raises(DataError, match="train_surveys must be between 1 and 16, got 17"):
        DemoSpec(train_surveys=17)


def test_labelled_tiles_come_from_fewer_surveys(tmp_path: Path) -> None:
    """train_surveys changes the labelled tiles only; the other splits stay the same byte for byte."""
    spec = DemoSpec(size=16, n_train=8, n_val=2, n_test=1, n_unlabeled=20, seed=1)
    all_ = files(generate_demo(tmp_path / "all", DemoSpec(**{**spec.__dict__, "train_surveys": 16}), workers=1))
    one = files(generate_demo(tmp_path / "one", DemoSpec(**{**spec.__dict__, "train_surveys": 1}), workers=1))
    for name in all_:  # the labelled masks may differ too: a survey's zoom scales its objects
        if not name.startswith("train/") and name != MARKER:
            assert all_[name] == one[name], name
    assert sum(all_[n] != one[n] for n in all_ if n.startswith("train/images/")) >= 6
    # with one survey every labelled tile has that survey's look: their mean colours are close together
    spread = {k: np.std([np.asarray(Image.open(tmp_path / k / n)).reshape(-1, 3).mean(0)
                         for n in all_ if n.startswith("train/images/")], axis=0).mean() for k in ("all", "one")}
    assert spread["one"] < spread["all"]


def test_unlabeled_masks_match_the_pool(tmp_path: Path) -> None:
    root = generate_demo(tmp_path / "d", DemoSpec(size=16, n_train=1, n_val=1, n_test=0, n_unlabeled=5,
                                                  unlabeled_masks=True))
    pool = unlabeled_index(root)
    assert sorted(str(p.relative_to(root / "unlabeled" / "masks")) for p in (root / "unlabeled" / "masks").rglob("*.png")) == pool


def test_ensure_demo_reuses_an_existing_set(tiny_data: Path, tmp_path: Path) -> None:
    before = (tiny_data / MARKER).stat().st_mtime_ns
    assert ensure_demo(tiny_data) == tiny_data and (tiny_data / MARKER).stat().st_mtime_ns == before
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x").write_text("")
    with pytest.raises(DataError, match="not a selftune demo dataset"):
        ensure_demo(tmp_path / "other")


def test_class_frequencies_are_long_tailed_and_every_class_occurs() -> None:
    counts = np.zeros(7)
    tiles_with = np.zeros(7)
    for i in range(120):
        _, mask = render_tile(tile_rng(0, "train", i), 48)
        c = np.bincount(mask.ravel(), minlength=7)
        counts += c
        tiles_with += c > 0
    freq = dict(zip(CLASS_NAMES, counts / counts.sum(), strict=True))
    assert min(freq["background"], freq["snake fruit"], freq["open land"]) > 0.1
    assert max(freq["building"], freq["water body"], freq["road"]) < 0.05
    assert min(freq.values()) > 0.002
    assert (tiles_with / 120)[[1, 2]].max() < 0.5  # water and buildings appear in a minority of tiles


def test_unlabelled_pool_is_hazier() -> None:
    def contrast(split: str) -> float:
        return float(np.mean([render_tile(tile_rng(0, split, i), 32, shifted=split == "unlabeled")[0].std()
                              for i in range(80)]))

    assert contrast("unlabeled") < contrast("train")
