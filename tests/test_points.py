"""Point annotations (points.json) as a label format, and the particle-picking demo that uses them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from selftune.cli import main
from selftune.data import LabeledDataset, read_classes, validate_dataset
from selftune.data.cli import format_summary
from selftune.data.format import ClassTable, label_kind
from selftune.data.particles import generate_particles, image_rng, render_micrograph
from selftune.data.points import Point, PointTargets, point_targets, read_points
from selftune.errors import ConfigError, DataError
from selftune.trainable.config import TrainConfig
from tests.helpers import TINY_PARTICLES

CLASSES = ClassTable(("background", "particle"))


@pytest.fixture(scope="module")
def particles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 32 px particle demo set: 3 train, 2 val, 2 test micrographs with points.json, 8 unlabelled. Read-only."""
    return generate_particles(tmp_path_factory.mktemp("particles") / "data", TINY_PARTICLES)


def copy_of(root: Path, tmp_path: Path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(root, out)
    return out


def write_points(root: Path, split: str, entries: object) -> Path:
    path = root / split / "points.json"
    path.write_text(json.dumps(entries))
    return path


# ---------------------------------------------------------------------- targets


def test_a_disk_is_the_class_a_ring_beyond_it_ignored_the_rest_background() -> None:
    t = point_targets(9, 9, [Point(4, 4, None, 1)], PointTargets(radius=2, ring=1))
    d = np.sqrt((np.arange(9)[:, None] - 4) ** 2 + (np.arange(9)[None, :] - 4) ** 2)
    assert ((t == 1) == (d <= 2)).all()
    assert ((t == 255) == ((d > 2) & (d <= 3))).all()
    assert ((t == 0) == (d > 3)).all()


def test_overlapping_disks_go_to_the_nearest_point_and_a_disk_beats_a_ring() -> None:
    pts = [Point(2, 2, None, 1), Point(5, 2, None, 2), Point(0, 8, 0.0, 1)]
    t = point_targets(9, 9, pts, PointTargets(radius=2, ring=2))
    assert t[2, 3] == 1 and t[2, 4] == 2  # midway at 3.5: each pixel to its nearer point
    assert t[2, 4] == 2 and t[2, 6] == 2  # inside the second disk, though in the first one's ring
    assert t[8, 0] == 1  # radius 0: the pixel holding the point is still the class
    assert t[8, 1] == 255 and t[8, 2] == 255 and t[8, 3] == 0


def test_points_json_forms_stems_radii_and_class_names(tmp_path: Path) -> None:
    path = tmp_path / "points.json"
    path.write_text(json.dumps({"a.png": [[1, 2], [3, 4.5, 6]], "b": [{"x": 1, "y": 1, "radius": 2, "class": "particle"}],
                                "c.png": []}))
    pts = read_points(path, ["a.png", "b.png", "c.png"], CLASSES)
    assert pts == [[Point(1, 2, None, 1), Point(3, 4.5, 6, 1)], [Point(1, 1, 2, 1)], []]


@pytest.mark.parametrize("text, message", [
    ('{"a.png": [[1, 2],', r"points\.json: malformed JSON at line 1, column \d+"),
    ('[[1, 2]]', r"points\.json: expected an object mapping image names"),
    ('{"a.png": [], "zz.png": []}', r"points\.json: entry 'zz\.png' names no image"),
    ('{"a.png": [], "a": []}', r"entries 'a\.png' and 'a' both name image a\.png"),
    ('{}', r"points\.json: image a\.png has no entry"),
    ('{"a.png": [[1]]}', r"points\.json: image 'a\.png', point 0: expected \[x, y\]"),
    ('{"a.png": [[1, 2], [1, "y"]]}', r"image 'a\.png', point 1: y must be a number"),
    ('{"a.png": [[1, 2, -3]]}', r"image 'a\.png', point 0: radius must be >= 0 pixels, got -3"),
    ('{"a.png": [{"x": 1, "y": 2, "class": 0}]}', r"point 0: class 0 is the background class"),
    ('{"a.png": [{"x": 1, "y": 2, "class": "cat"}]}', r"point 0: class \"cat\" is not in classes\.csv"),
    ('{"a.png": [{"x": 1, "y": 2, "size": 3}]}', r"point 0: unknown key 'size'"),
    ('{"a.png": {"x": 1}}', r"entry 'a\.png' must be a list of points"),
])
def test_bad_points_json_names_the_file_and_the_entry(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "points.json"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        read_points(path, ["a.png"], CLASSES)


# ---------------------------------------------------------------------- the format and the checks


def test_a_split_labelled_by_points_trains_on_their_targets(particles: Path) -> None:
    classes = read_classes(particles)
    assert label_kind(particles, "train") == "points"
    ds = LabeledDataset(particles, "train", classes, points=PointTargets(3, 1))
    image, mask = ds[0]
    assert image.shape == (3, 32, 32) and mask.shape == (32, 32)
    assert set(mask.unique().tolist()) <= {0, 1, 255}
    entry = json.loads((particles / "train" / "points.json").read_text())["train_0000.png"]
    x, y = entry[0]
    assert mask[round(y), round(x)] == 1


def test_point_outside_the_image_is_named_before_training(particles: Path, tmp_path: Path) -> None:
    root = copy_of(particles, tmp_path)
    entries = json.loads((root / "val" / "points.json").read_text())
    entries["val_0001.png"].append([40.0, 3.0])
    write_points(root, "val", entries)
    n = len(entries["val_0001.png"]) - 1
    with pytest.raises(DataError, match=rf"val/points\.json: image 'val_0001\.png', point {n} \(x=40, y=3\) is "
                                        r"outside the image \(32x32 px"):
        validate_dataset(root, need_unlabeled=False)


def test_masks_and_points_in_one_split_are_refused(particles: Path, tmp_path: Path) -> None:
    root = copy_of(particles, tmp_path)
    (root / "train" / "masks").mkdir()
    with pytest.raises(DataError, match=r"split 'train' has both .*masks and .*points\.json"):
        validate_dataset(root, need_unlabeled=False)


def test_check_reports_points_per_image_and_the_positive_share(particles: Path) -> None:
    summary = validate_dataset(particles, need_unlabeled=True, points=PointTargets(4, 2))
    stats = summary.points["train"]
    entries = json.loads((particles / "train" / "points.json").read_text())
    assert stats.points == sum(len(v) for v in entries.values()) and stats.images == 3
    assert 0 < stats.positive_share < 0.5 and 0 < stats.ignored_share < 0.5
    assert summary.pixel_counts[1] > 0  # the targets' positive pixels are the class statistics
    text = format_summary(summary)
    assert "Points (points.json; targets: disk radius 4 px, ignored ring 2 px)" in text
    assert f"{100 * stats.positive_share:.2f}" in text
    wider = validate_dataset(particles, need_unlabeled=False, points=PointTargets(6, 2))
    assert wider.points["train"].positive_share > stats.positive_share


def test_data_check_with_a_preview_of_points_and_targets(particles: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    preview = tmp_path / "preview.png"
    assert main(["data", "check", str(particles), "--preview", str(preview), "--point-radius", "3"]) == 0
    out = capsys.readouterr().out
    assert "targets: disk radius 3 px" in out and "OK" in out
    assert Image.open(preview).size[0] > 100
    assert main(["data", "check", str(particles), "--point-radius", "-1"]) == 2
    assert "--point-radius must be a number of pixels >= 0, got -1" in capsys.readouterr().err


def test_negative_radius_in_the_config_fails_by_name() -> None:
    with pytest.raises(ConfigError, match="point_radius must be a finite number of pixels >= 0, got -2"):
        TrainConfig.from_dict({"point_radius": -2})
    with pytest.raises(ConfigError, match="point_ring must be"):
        TrainConfig.from_dict({"point_ring": -0.5})


def test_fingerprint_follows_the_points(particles: Path, tmp_path: Path) -> None:
    from selftune.data import dataset_fingerprint

    root = copy_of(particles, tmp_path)
    before = dataset_fingerprint(root)
    entries = json.loads((root / "train" / "points.json").read_text())
    entries["train_0000.png"][0][0] += 1  # same file size, another label
    write_points(root, "train", entries)
    assert dataset_fingerprint(root) != before


# ---------------------------------------------------------------------- the particle demo


def test_particle_demo_is_deterministic_binary_and_valid(particles: Path, tmp_path: Path) -> None:
    again = generate_particles(tmp_path / "again", TINY_PARTICLES)
    files = sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())  # (not the pool's index cache)
    assert len(files) == 3 + 2 + 2 + 8 + 3 + 2  # images, points.json of 3 splits, classes.csv, the marker
    assert all((particles / f).read_bytes() == (again / f).read_bytes() for f in files)
    assert read_classes(particles).names == ("background", "particle")
    summary = validate_dataset(particles, need_unlabeled=True)
    assert summary.counts == {"train": 3, "val": 2, "test": 2, "unlabeled": 8}
    assert not (particles / "unlabeled" / "points.json").exists()
    other = render_micrograph(image_rng(1, "train", 0), TINY_PARTICLES)[0]
    assert not np.array_equal(other, np.asarray(Image.open(particles / "train" / "images" / "train_0000.png")))


def test_data_demo_task_particles_from_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "p"
    assert main(["data", "demo", str(root), "--task", "particles", "--size", "32", "--n-train", "1", "--n-val", "1",
                 "--n-test", "0", "--n-unlabeled", "2"]) == 0
    assert (root / "train" / "points.json").is_file() and not (root / "test").exists()
    assert main(["data", "demo", str(tmp_path / "q"), "--task", "particles", "--train-surveys", "2"]) == 2
    assert "--train-surveys is an option of --task plantation" in capsys.readouterr().err
