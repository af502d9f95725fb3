"""Issue 29, data: palette masks read by colour, one class refused, a split with nothing labelled refused, and a
fingerprint that sees relabelled masks (compared on `sweep --resume`)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from selftune.cli import main
from selftune.data import dataset_fingerprint, fingerprint_matches, read_classes, read_mask, validate_dataset
from selftune.data.validate import _fingerprint
from selftune.errors import DataError

COLORS = [(0, 0, 0), (255, 0, 0), (0, 255, 0)]


def _palette_mask(path: Path, index: np.ndarray, palette: list[tuple[int, int, int]]) -> None:
    img = Image.fromarray(index.astype(np.uint8), "P")
    img.putpalette([c for rgb in palette for c in rgb])
    img.save(path)


def _classes(root: Path, colors: bool = True) -> None:
    rows = [f"{i},c{i}" + (",{},{},{}".format(*c) if colors else "") for i, c in enumerate(COLORS)]
    (root / "classes.csv").write_text(("id,name,r,g,b" if colors else "id,name") + "\n" + "\n".join(rows) + "\n")


def test_a_palette_in_another_order_is_read_by_colour(tmp_path: Path) -> None:
    _classes(tmp_path)
    index = np.array([[0, 1], [2, 255]])
    # the palette lists the class colours as green, black, red: index 0 is class 2, 1 is class 0, 2 is class 1
    _palette_mask(tmp_path / "m.png", index, [(0, 255, 0), (0, 0, 0), (255, 0, 0)] + [(9, 9, 9)] * 253)
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png", read_classes(tmp_path)), [[2, 0], [1, 255]])


def test_a_palette_colour_that_is_no_class_is_named(tmp_path: Path) -> None:
    _classes(tmp_path)
    _palette_mask(tmp_path / "m.png", np.array([[0, 1]]), [(0, 0, 0), (1, 2, 3)])
    with pytest.raises(DataError, match=r"m\.png: palette index 1 \(colour \(1, 2, 3\)\) at pixel \(row 0, col 1\) "
                                        r"is not a class colour"):
        read_mask(tmp_path / "m.png", read_classes(tmp_path))


def test_without_colours_a_palette_index_is_the_class_id(tmp_path: Path) -> None:
    _classes(tmp_path, colors=False)
    _palette_mask(tmp_path / "m.png", np.array([[0, 1, 2]]), [(0, 255, 0), (0, 0, 0), (255, 0, 0)])
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png", read_classes(tmp_path)), [[0, 1, 2]])


def test_one_class_is_refused(tmp_path: Path, capsys) -> None:
    (tmp_path / "classes.csv").write_text("id,name\n0,object\n")
    with pytest.raises(DataError, match=r"defines one class \('object'\); segmentation needs at least two"):
        read_classes(tmp_path)


def _copy(tiny_data: Path, tmp_path: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(tiny_data, root, ignore=shutil.ignore_patterns(".*"))
    return root


@pytest.mark.parametrize("split", ["val", "train", "test"])
def test_a_split_with_nothing_labelled_is_refused(tiny_data: Path, tmp_path: Path, capsys, split: str) -> None:
    root = _copy(tiny_data, tmp_path)
    for mask in (root / split / "masks").glob("*.png"):
        Image.fromarray(np.full_like(np.array(Image.open(mask)), 255)).save(mask)
    code = main(["data", "check", str(root), "--no-unlabeled"])
    err = capsys.readouterr().err
    assert code == 2 and f"every mask pixel of split {split!r} is 255 (ignore)" in err and "label some pixels" in err


def test_the_fingerprint_sees_a_relabelled_mask_of_the_same_size(tiny_data: Path, tmp_path: Path) -> None:
    root = _copy(tiny_data, tmp_path)
    before, legacy = dataset_fingerprint(root), _fingerprint(root, label_bytes=False)
    mask = sorted((root / "train" / "masks").glob("*.png"))[0]
    size = mask.stat().st_size
    m = np.array(Image.open(mask))
    for value in range(1, 7):  # relabel one pixel until the PNG keeps its size (the case names and sizes miss)
        m2 = m.copy()
        m2[0, 0] = (m[0, 0] + value) % 7
        Image.fromarray(m2).save(mask)
        if mask.stat().st_size == size:
            break
    else:
        pytest.skip("no relabelling kept the file size")
    assert _fingerprint(root, label_bytes=False) == legacy  # what was recorded before: blind to it
    assert dataset_fingerprint(root) != before and not fingerprint_matches(root, before)
    assert fingerprint_matches(root, dataset_fingerprint(root)) and fingerprint_matches(root, legacy)


def test_validate_still_accepts_the_tiny_set(tiny_data: Path) -> None:
    assert validate_dataset(tiny_data, need_unlabeled=True).num_classes == 7
