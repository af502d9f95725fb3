"""Bad sweep input: one clear message naming the culprit, exit 2, before any trial starts."""

from __future__ import annotations

from pathlib import Path

from selftune.cli import main

SMALL_CROP = ["--set", "crop_size=32"]  # the demo's 64 px crop on the 32 px tiles of `tiny_data` is refused by name


def _sweep(args: list[str], capsys) -> tuple[int, str]:
    rc = main(["sweep", *args])
    return rc, capsys.readouterr().err


def test_unknown_space(tiny_data: Path, tmp_path: Path, capsys) -> None:
    rc, err = _sweep(["--demo", "--data", str(tiny_data), *SMALL_CROP, "--space", "thresold", "--storage", str(tmp_path)], capsys)
    assert rc == 2 and "unknown space 'thresold'" in err
    assert not any(tmp_path.iterdir())  # nothing written


def test_space_parameter_not_a_field_and_empty_range(tiny_data: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    (tmp_path / "badspaces.py").write_text(
        "def typo(trial, ctx):\n    trial.suggest_float('st_wieght', 0.5, 2.0)\n"
        "def empty(trial, ctx):\n    trial.suggest_float('lr', 1e-3, 1e-4, log=True)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    rc, err = _sweep(["--demo", "--data", str(tiny_data), *SMALL_CROP, "--space", "badspaces:typo", "--check"], capsys)
    assert rc == 2 and "parameter 'st_wieght' is not a config field" in err
    rc, err = _sweep(["--demo", "--data", str(tiny_data), *SMALL_CROP, "--space", "badspaces:empty", "--check"], capsys)
    assert rc == 2 and "parameter 'lr' has an inverted range [0.001, 0.0001]" in err


def test_sweep_file_unknown_key(tmp_path: Path, capsys) -> None:
    f = tmp_path / "s.yaml"
    f.write_text("name: x\nsearch_alg: tpe\n")
    rc, err = _sweep([str(f)], capsys)
    assert rc == 2 and "unknown sweep key 'search_alg'" in err and "s.yaml" in err


def test_missing_data_folder(tmp_path: Path, capsys) -> None:
    rc, err = _sweep(["--demo", "--data", str(tmp_path / "nope"), "--check"], capsys)
    assert rc == 2 and "nope" in err


def test_unwritable_storage(tiny_data: Path, tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    rc, err = _sweep(["--demo", "--data", str(tiny_data), *SMALL_CROP, "--storage", str(blocker / "results"), "--check"], capsys)
    assert rc == 2 and "storage path" in err and "is not writable" in err
    assert blocker.read_text() == "not a folder"


def test_unreachable_address(tiny_data: Path, tmp_path: Path, capsys) -> None:
    rc, err = _sweep(["--demo", "--data", str(tiny_data), *SMALL_CROP, "--storage", str(tmp_path), "--address", "127.0.0.1:9"],
                     capsys)
    assert rc == 2 and "cannot reach the Ray cluster at --address 127.0.0.1:9" in err


def test_gpus_requested_where_there_are_none(tiny_data: Path, tmp_path: Path, capsys) -> None:
    import ray

    try:
        rc, err = _sweep(["--demo", "--data", str(tiny_data), *SMALL_CROP, "--storage", str(tmp_path), "--gpus-per-trial", "1",
                          "--num-cpus", "1"], capsys)
    finally:
        ray.shutdown()
    assert rc == 2 and "gpus_per_trial is 1 but the Ray cluster has 0 GPUs" in err
    assert not list((tmp_path / "demo").glob("trial_*"))  # no trial started


def test_bad_base_value(tiny_data: Path, capsys) -> None:
    rc, err = _sweep(["--demo", "--data", str(tiny_data), *SMALL_CROP, "--set", "lr=-1", "--check"], capsys)
    assert rc == 2 and "lr must be a positive number, got -1" in err


def test_missing_teacher_checkpoint(tiny_data: Path, tmp_path: Path, capsys) -> None:
    rc, err = _sweep(["--demo", "--data", str(tiny_data), *SMALL_CROP, "--space", "thresholds", "--set", f"teacher_checkpoint={tmp_path / 'gone.pt'}",
                      "--check"], capsys)
    assert rc == 2 and "teacher_checkpoint: checkpoint file not found" in err and "gone.pt" in err
