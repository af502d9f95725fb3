"""The dataset format: reading, every validation error, the unlabelled index, seeded batches, `data check`."""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from selftune.data import (
    ClassTable,
    LabeledDataset,
    UnlabeledDataset,
    class_frequencies,
    dataset_fingerprint,
    list_pairs,
    make_batches,
    read_classes,
    read_image,
    read_mask,
    suggested_class_weights,
    unlabeled_index,
    unlabeled_index_path,
    validate_dataset,
)
from selftune.data import cli as data_cli
from selftune.errors import DataError, SelftuneError
from selftune.trainable.augment import crop_transform

CLASSES3 = ClassTable(names=("a", "b", "c"), colors=((0, 0, 0), (255, 0, 0), (0, 255, 0)))


def copy_data(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "data"
    shutil.copytree(src, dst)
    return dst


def age_tree(top: Path, seconds: float = 3600) -> None:
    """Date every folder under `top` back, like a dataset that has sat on disk a while."""
    t = time.time() - seconds
    for d in [top, *(p for p in top.rglob("*") if p.is_dir())]:
        os.utime(d, (t, t))


def first_pair(root: Path, split: str = "train") -> tuple[Path, Path]:
    return list_pairs(root, split)[0]


def run_cli(argv: list[str]) -> int:
    """What `selftune.cli.main` does for the `data` command: parse, run, turn errors into exit 2."""
    parser = argparse.ArgumentParser(prog="selftune")
    data_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except SelftuneError as exc:
        print(f"selftune: error: {exc}")
        return 2


# ---------------------------------------------------------------------- classes.csv


def write_classes(root: Path, text: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.csv").write_text(text)
    return root / "classes.csv"


def test_read_classes_with_and_without_colours(tmp_path: Path) -> None:
    write_classes(tmp_path / "a", "id,name\n1,water\n0,background\n")
    t = read_classes(tmp_path / "a")
    assert t.names == ("background", "water") and t.colors is None and t.num_classes == 2
    write_classes(tmp_path / "b", "id, name, r, g, b\n0,background,0,0,0\n1,water,0,0,255\n\n")
    t = read_classes(tmp_path / "b")
    assert t.colors == ((0, 0, 0), (0, 0, 255))


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("idx,name\n0,a\n", ":1: header"),
        ("id,name\n0,a\n2,b\n", "missing [1]"),
        ("id,name\n0,a\n1,a\n", ":3: duplicate class name 'a'"),
        ("id,name\n0,a\n0,b\n", ":3: duplicate class id 0"),
        ("id,name\nzero,a\n", ":2: class id must be an integer, got 'zero'"),
        ("id,name\n0,\n", ":2: class 0 has an empty name"),
        ("id,name\n0,a,extra\n", ":2: expected 2 columns"),
        ("id,name,r,g,b\n0,a,0,0,300\n", ":2: r,g,b must be integers 0-255"),
        ("id,name,r,g,b\n0,a,1,2,3\n1,b,1,2,3\n", ":3: colour (1, 2, 3) is already used"),
        ("id,name\n", "has a header but no classes"),
        ("", "is empty"),
    ],
)
def test_malformed_classes_csv_names_file_and_line(tmp_path: Path, text: str, expect: str) -> None:
    path = write_classes(tmp_path, text)
    with pytest.raises(DataError) as err:
        read_classes(tmp_path)
    assert str(path) in str(err.value) and expect in str(err.value)


def test_missing_classes_csv(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"missing .*classes\.csv"):
        read_classes(tmp_path)


# ---------------------------------------------------------------------- images and masks


@pytest.mark.parametrize("ext", ["png", "jpg", "tif"])
@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA"])
def test_read_image_formats_and_channels(tmp_path: Path, ext: str, mode: str) -> None:
    if ext == "jpg" and mode == "RGBA":
        pytest.skip("JPEG has no alpha")
    rng = np.random.default_rng(0)
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    arr = rng.integers(0, 256, (5, 7, channels), dtype=np.uint8).squeeze()
    path = tmp_path / f"x.{ext}"
    Image.fromarray(arr, mode).save(path, **({"quality": 100} if ext == "jpg" else {}))
    out = read_image(path)
    assert out.shape == (5, 7, 3) and out.dtype == np.uint8
    if ext != "jpg":  # lossless: exact values, grey replicated, alpha dropped
        expect = np.repeat(arr[:, :, None], 3, 2) if mode == "L" else arr[:, :, :3]
        np.testing.assert_array_equal(out, expect)


def test_read_image_tifffile_planar_and_palette(tmp_path: Path) -> None:
    arr = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)  # (C, H, W), as some GIS tools write
    tifffile.imwrite(tmp_path / "p.tif", arr, planarconfig="separate")
    out = read_image(tmp_path / "p.tif")
    np.testing.assert_array_equal(out, np.moveaxis(arr, 0, -1))
    pal = Image.fromarray(np.array([[0, 1]], dtype=np.uint8), "P")
    pal.putpalette([10, 20, 30, 40, 50, 60])
    pal.save(tmp_path / "pal.png")
    np.testing.assert_array_equal(read_image(tmp_path / "pal.png"), [[[10, 20, 30], [40, 50, 60]]])


def test_read_image_rejects_16_bit(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "x.tif", np.zeros((4, 4), dtype=np.uint16))
    with pytest.raises(DataError, match=r"x\.tif.*8-bit"):
        read_image(tmp_path / "x.tif")


@pytest.mark.parametrize("name", ["bad.png", "bad.jpg", "bad.tif"])
def test_corrupt_image_names_the_file(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    with pytest.raises(DataError) as err:
        read_image(tmp_path / name)
    assert str(tmp_path / name) in str(err.value)


def test_read_mask_ids_keep_ignore(tmp_path: Path) -> None:
    ids = np.array([[0, 1], [2, 255]], dtype=np.uint8)
    Image.fromarray(ids).save(tmp_path / "m.png")
    out = read_mask(tmp_path / "m.png", CLASSES3)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, ids)


def test_read_mask_bad_id_names_file_value_and_pixel(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, 1], [3, 0]], dtype=np.uint8)).save(tmp_path / "m.png")
    with pytest.raises(DataError) as err:
        read_mask(tmp_path / "m.png", CLASSES3)
    msg = str(err.value)
    assert str(tmp_path / "m.png") in msg and "class id 3" in msg and "row 1, col 0" in msg


def test_read_colour_mask(tmp_path: Path) -> None:
    rgb = np.array([[[0, 0, 0], [255, 0, 0]], [[0, 255, 0], [255, 0, 0]]], dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "m.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png", CLASSES3), [[0, 1], [2, 1]])
    rgba = np.concatenate([rgb, np.full((2, 2, 1), 255, np.uint8)], axis=2)
    Image.fromarray(rgba).save(tmp_path / "m4.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "m4.png", CLASSES3), [[0, 1], [2, 1]])


def test_colour_not_in_classes_csv_names_file_and_colour(tmp_path: Path) -> None:
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    rgb[1, 1] = (1, 2, 3)
    Image.fromarray(rgb).save(tmp_path / "m.png")
    with pytest.raises(DataError) as err:
        read_mask(tmp_path / "m.png", CLASSES3)
    assert str(tmp_path / "m.png") in str(err.value) and "(1, 2, 3)" in str(err.value)


def test_colour_mask_without_colours_in_classes_csv(tmp_path: Path) -> None:
    no_colors = ClassTable(names=CLASSES3.names)
    grey = np.stack([np.array([[0, 1], [2, 1]], dtype=np.uint8)] * 3, axis=2)
    Image.fromarray(grey).save(tmp_path / "grey.png")  # ids saved as RGB: accepted
    np.testing.assert_array_equal(read_mask(tmp_path / "grey.png", no_colors), [[0, 1], [2, 1]])
    grey[0, 0] = (255, 0, 0)
    Image.fromarray(grey).save(tmp_path / "rgb.png")
    with pytest.raises(DataError, match=r"rgb\.png.*no r,g,b columns"):
        read_mask(tmp_path / "rgb.png", no_colors)


# ---------------------------------------------------------------------- splits


def test_list_pairs_sorted_and_matching(tiny_data: Path) -> None:
    pairs = list_pairs(tiny_data, "train")
    assert [p[0].name for p in pairs] == sorted(p[0].name for p in pairs)
    assert len(pairs) == 6 and all(i.stem == m.stem and m.suffix == ".png" for i, m in pairs)


def test_image_without_mask(tiny_data: Path, tmp_path: Path) -> None:
    root = copy_data(tiny_data, tmp_path)
    image, mask = first_pair(root)
    mask.unlink()
    with pytest.raises(DataError) as err:
        list_pairs(root, "train")
    assert str(image) in str(err.value) and str(mask) in str(err.value)
    Image.open(image).convert("L").save(mask.with_suffix(".jpg"))
    with pytest.raises(DataError, match="masks must be PNG"):
        list_pairs(root, "train")


def test_two_images_with_one_stem(tiny_data: Path, tmp_path: Path) -> None:
    root = copy_data(tiny_data, tmp_path)
    image, _ = first_pair(root)
    Image.open(image).save(image.with_suffix(".jpg"))
    with pytest.raises(DataError, match="share the stem"):
        list_pairs(root, "train")


def test_datasets_return_tensors(tiny_data: Path) -> None:
    classes = read_classes(tiny_data)
    ds = LabeledDataset(tiny_data, "val", classes)
    image, mask = ds[1]
    assert image.shape == (3, 32, 32) and image.dtype == torch.uint8
    assert mask.shape == (32, 32) and mask.dtype == torch.int64 and int(mask.max()) < classes.num_classes
    assert torch.equal(ds[1][0], image)  # from the cache
    pool = UnlabeledDataset(tiny_data, unlabeled_index(tiny_data))
    assert len(pool) == 12 and pool[11].shape == (3, 32, 32) and pool[11].dtype == torch.uint8
    with pytest.raises(DataError, match="pool is empty"):
        UnlabeledDataset(tiny_data, [])


# ---------------------------------------------------------------------- validation


def test_validate_tiny_demo(tiny_data: Path) -> None:
    s = validate_dataset(tiny_data, need_unlabeled=True, num_classes=7)
    assert s.counts == {"train": 6, "val": 4, "test": 4, "unlabeled": 12}
    assert s.class_names[0] == "background" and len(s.class_names) == 7
    assert sum(s.pixel_counts) == 6 * 32 * 32 and s.ignored_pixels == 0
    assert abs(sum(s.frequencies) - 1) < 1e-9 and s.image_sizes == ((32, 32),)
    present = [w for w, n in zip(s.suggested_weights, s.pixel_counts, strict=True) if n > 0]
    assert abs(np.mean(present) - 1) < 1e-9
    for c, n in enumerate(s.pixel_counts):
        if n == 0:
            assert s.suggested_weights[c] == 0
            assert any(f"class {c} " in w and "weight is 0" in w for w in s.warnings)


def test_validate_skips_pool_when_not_needed(tiny_data: Path, tmp_path: Path) -> None:
    root = copy_data(tiny_data, tmp_path)
    shutil.rmtree(root / "unlabeled")
    shutil.rmtree(root / "test")  # optional
    s = validate_dataset(root, need_unlabeled=False)
    assert s.counts == {"train": 6, "val": 4}
    with pytest.raises(DataError, match=r"missing folder .*unlabeled/images"):
        validate_dataset(root, need_unlabeled=True)


def _break(root: Path, how: str) -> Path:
    """Damage a copy of the tiny dataset one way; return the file the error must name."""
    image, mask = first_pair(root, "val")
    if how == "missing_folder":
        shutil.rmtree(root / "val" / "masks")
        return root / "val" / "masks"
    if how == "size_mismatch":
        Image.fromarray(np.zeros((31, 32), np.uint8)).save(mask)
        return image
    if how == "bad_id":
        arr = np.asarray(Image.open(mask)).copy()
        arr[3, 4] = 7
        Image.fromarray(arr).save(mask)
        return mask
    if how == "bad_colour":
        (root / "classes.csv").write_text(
            "id,name,r,g,b\n" + "".join(f"{i},c{i},{i},{i},{i}\n" for i in range(7))
        )
        rgb = np.zeros((32, 32, 3), np.uint8)
        rgb[5, 6] = (9, 9, 8)
        Image.fromarray(rgb).save(mask)
        return mask
    if how == "corrupt":
        image.write_bytes(b"garbage" * 10)
        return image
    if how == "empty_pool":
        shutil.rmtree(root / "unlabeled" / "images")
        (root / "unlabeled" / "images" / "sub").mkdir(parents=True)
        (root / "unlabeled" / "images" / "notes.txt").write_text("not an image")
        return root / "unlabeled" / "images"
    if how == "corrupt_pool":
        first = root / "unlabeled" / "images" / unlabeled_index(root)[0]
        first.write_bytes(b"\x89PNG\r\n\x1a\nbroken")
        return first
    if how == "classes":
        (root / "classes.csv").write_text("id,name\n0,a\n0,b\n")
        return root / "classes.csv"
    raise AssertionError(how)


@pytest.mark.parametrize(
    "how", ["missing_folder", "size_mismatch", "bad_id", "bad_colour", "corrupt", "empty_pool", "corrupt_pool",
            "classes"],
)
def test_validate_errors_name_the_file(tiny_data: Path, tmp_path: Path, how: str) -> None:
    root = copy_data(tiny_data, tmp_path)
    culprit = _break(root, how)
    with pytest.raises(DataError) as err:
        validate_dataset(root, need_unlabeled=True)
    assert str(culprit) in str(err.value)


def test_validate_num_classes_mismatch(tiny_data: Path) -> None:
    with pytest.raises(DataError, match="defines 7 classes but 6 were expected"):
        validate_dataset(tiny_data, need_unlabeled=False, num_classes=6)


def test_validate_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="dataset folder not found"):
        validate_dataset(tmp_path / "nope", need_unlabeled=False)


def test_frequencies_and_weights_reference() -> None:
    # seed 004: 66% foreground, 34% background
    f = class_frequencies([34, 66])
    assert f == pytest.approx((0.34, 0.66))
    w = suggested_class_weights(f)
    raw = np.array([1 / 0.34, 1 / 0.66])
    assert w == pytest.approx(tuple(raw / raw.mean()))
    assert suggested_class_weights(class_frequencies([10, 0, 30])) == pytest.approx((1.5, 0.0, 0.5))
    assert class_frequencies([0, 0]) == (0.0, 0.0) and suggested_class_weights([0.0, 0.0]) == (0.0, 0.0)


def test_fingerprint_tracks_content(tiny_data: Path, tmp_path: Path) -> None:
    root = copy_data(tiny_data, tmp_path)
    fp = dataset_fingerprint(root)
    assert len(fp) == 16 and fp == dataset_fingerprint(root) == dataset_fingerprint(tiny_data)
    image, _ = first_pair(root)
    shutil.copy(image, root / "unlabeled" / "images" / "extra.png")
    fp2 = dataset_fingerprint(root)
    assert fp2 != fp
    (root / "classes.csv").write_text((root / "classes.csv").read_text().replace("road", "track"))
    assert dataset_fingerprint(root) != fp2


# ---------------------------------------------------------------------- unlabelled index


def make_pool(root: Path) -> Path:
    top = root / "unlabeled" / "images"
    for rel in ["b.png", "a.jpg", "sub/c.tif", "sub/deeper/d.PNG", "sub2/e.png"]:
        (top / rel).parent.mkdir(parents=True, exist_ok=True)
        (top / rel).write_bytes(b"")
    (top / "notes.txt").write_text("skip me")
    (top / ".hidden.png").write_bytes(b"")
    (top / ".cache").mkdir()
    (top / ".cache" / "x.png").write_bytes(b"")
    age_tree(top)
    return top


def test_index_lists_nested_images_sorted(tmp_path: Path) -> None:
    make_pool(tmp_path)
    assert unlabeled_index(tmp_path) == ["a.jpg", "b.png", "sub/c.tif", "sub/deeper/d.PNG", "sub2/e.png"]
    text = unlabeled_index_path(tmp_path).read_text().splitlines()
    assert text[0].startswith("# selftune-unlabeled-index") and text[1:] == unlabeled_index(tmp_path)
    assert not [p for p in unlabeled_index_path(tmp_path).parent.iterdir() if p.name.endswith(".tmp")]


def test_index_reused_then_rebuilt_when_a_file_is_added(tmp_path: Path) -> None:
    top = make_pool(tmp_path)
    first = unlabeled_index(tmp_path)
    st = unlabeled_index_path(tmp_path).stat()
    assert unlabeled_index(tmp_path) == first
    st2 = unlabeled_index_path(tmp_path).stat()
    assert (st2.st_ino, st2.st_mtime_ns) == (st.st_ino, st.st_mtime_ns)  # not rewritten
    (top / "sub" / "deeper" / "new.png").write_bytes(b"")  # only that folder's mtime changes
    assert unlabeled_index(tmp_path) == sorted([*first, "sub/deeper/new.png"])
    assert unlabeled_index_path(tmp_path).stat().st_ino != st.st_ino  # replaced atomically (new file)
    (top / "sub2" / "e.png").unlink()
    assert "sub2/e.png" not in unlabeled_index(tmp_path)


def test_index_rebuilt_while_folders_are_fresh(tmp_path: Path) -> None:
    # a folder changed within the filesystem's timestamp granularity of the listing cannot be trusted
    top = tmp_path / "unlabeled" / "images"
    top.mkdir(parents=True)
    (top / "a.png").write_bytes(b"")
    unlabeled_index(tmp_path)
    ino = unlabeled_index_path(tmp_path).stat().st_ino
    unlabeled_index(tmp_path)
    assert unlabeled_index_path(tmp_path).stat().st_ino != ino


def test_index_falls_back_to_user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_pool(tmp_path / "data")
    unlabeled_index_path(tmp_path / "data").mkdir()  # the index path cannot be written
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    files = unlabeled_index(tmp_path / "data")
    cached = list((tmp_path / "home" / ".cache" / "selftune").glob("index-*.txt"))
    assert len(cached) == 1 and cached[0].read_text().splitlines()[1:] == files
    ino = cached[0].stat().st_ino
    assert unlabeled_index(tmp_path / "data") == files and cached[0].stat().st_ino == ino


def test_index_missing_pool(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="missing folder"):
        unlabeled_index(tmp_path)


# ---------------------------------------------------------------------- seeded batches


def take(it, n: int) -> list:
    return [next(it) for _ in range(n)]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_make_batches_resume_gives_the_same_batches(tiny_data: Path, num_workers: int) -> None:
    ds = LabeledDataset(tiny_data, "train", read_classes(tiny_data))
    tf = crop_transform(crop=24, scale_min=1.0, scale_max=1.5, hflip=True, vflip=True, ignore_index=255)
    kw = dict(batch_size=5, seed=3, stream=0, num_workers=num_workers, transform=tf)
    rng_before = torch.get_rng_state()
    full = take(make_batches(ds, start_iter=0, **kw), 6)
    resumed = take(make_batches(ds, start_iter=4, **kw), 2)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the loop's global RNG is untouched
    for (xa, ya), (xb, yb) in zip(full[4:], resumed, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    images, masks = full[0]
    assert images.shape == (5, 3, 24, 24) and images.dtype == torch.uint8
    assert masks.shape == (5, 24, 24) and masks.dtype == torch.int64
    assert not torch.equal(full[0][0], full[1][0])


def test_make_batches_unlabeled_streams_and_workers_agree(tiny_data: Path) -> None:
    pool = UnlabeledDataset(tiny_data, unlabeled_index(tiny_data))
    tf = crop_transform(crop=16, scale_min=0.8, scale_max=1.2, hflip=True, vflip=False, ignore_index=255)
    kw = dict(batch_size=4, seed=0, start_iter=7, transform=tf)
    a = take(make_batches(pool, stream=1, num_workers=0, **kw), 3)
    b = take(make_batches(pool, stream=1, num_workers=1, **kw), 3)
    c = take(make_batches(pool, stream=2, num_workers=0, **kw), 3)
    assert a[0].shape == (4, 3, 16, 16) and a[0].dtype == torch.uint8
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0])


def test_make_batches_without_transform(tiny_data: Path) -> None:
    ds = LabeledDataset(tiny_data, "val", read_classes(tiny_data))
    images, masks = next(make_batches(ds, batch_size=3, seed=0, stream=0))
    assert images.shape == (3, 3, 32, 32) and masks.shape == (3, 32, 32)


# ---------------------------------------------------------------------- data CLI


def test_data_check_cli(tiny_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["data", "check", str(tiny_data)]) == 0
    out = capsys.readouterr().out
    assert "train" in out and "unlabeled        12 images" in out and "snake fruit" in out
    assert "weight" in out and out.rstrip().endswith("OK")


def test_data_check_preview_png(tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_png = tmp_path / "figs" / "preview.png"
    assert run_cli(["data", "check", str(tiny_data), "--preview", str(out_png), "--preview-count", "4"]) == 0
    assert f"Preview written to {out_png}" in capsys.readouterr().out
    from PIL import Image

    with Image.open(out_png) as im:
        assert im.format == "PNG" and im.width > 400 and im.height > 300
        pixels = np.asarray(im.convert("RGB"))
    # the masks row is drawn in classes.csv colours: the areca green must be on the picture
    assert (pixels == np.array([60, 190, 75], dtype=np.uint8)).all(axis=-1).sum() > 100
    assert not list(out_png.parent.glob(".*.tmp"))  # written atomically, nothing left behind


def test_data_check_cli_bad_dataset(tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = copy_data(tiny_data, tmp_path)
    culprit = _break(root, "bad_id")
    assert run_cli(["data", "check", "--no-unlabeled", str(root)]) == 2
    out = capsys.readouterr().out
    assert out.startswith("selftune: error:") and str(culprit) in out


def test_data_demo_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["data", "demo", str(tmp_path / "d"), "--size", "16", "--n-train", "2", "--n-val", "1", "--n-test", "0",
            "--n-unlabeled", "3", "--seed", "5", "--workers", "1"]
    assert run_cli(argv) == 0
    assert "2 train, 1 val, 0 test, 3 unlabelled" in capsys.readouterr().out
    assert validate_dataset(tmp_path / "d", need_unlabeled=True).counts == {"train": 2, "val": 1, "unlabeled": 3}
    assert run_cli(argv) == 2  # not empty any more
    assert "not empty" in capsys.readouterr().out
    assert run_cli([*argv, "--overwrite", "--unlabeled-masks"]) == 0
    assert len(list((tmp_path / "d" / "unlabeled" / "masks").rglob("*.png"))) == 3
