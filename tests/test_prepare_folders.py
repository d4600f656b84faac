"""The prepare stage on the user's own ImageNet-style folders (data.source: folders), streamed into tars."""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
import yaml

from noisy_student.data import load_classes, load_imageset
from noisy_student.data.wds import read_info, split_path
from tests.conftest import ROOT, micro_params, run
from tests.test_folders import CLASSES, make_tree


def folders_params(tmp_path: Path, dirs: dict[str, Path], **data: Any) -> Path:
    p = micro_params(yaml.safe_load((ROOT / "params.yaml").read_text()))
    p["data"].update(
        source="folders",
        labeled_dir=str(dirs["labeled"]),
        unlabeled_dir=str(dirs["unlabeled"]),
        test_dir=str(dirs["test"]),
        image_size=16,
        **data,
    )
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(p))
    return path


def _prepare(params: Path, out: Path) -> dict[str, Any]:
    """Run the stage in a subprocess, as DVC does; return the prepared sets, class names, manifest, metrics.

    The manifest is the rows of every split folder's ``files.csv``.
    """
    run(
        [
            sys.executable,
            "-m",
            "stages.prepare",
            "--params",
            str(params),
            "--out",
            str(out / "prepared"),
            "--metrics",
            str(out / "m.json"),
        ],
        ROOT,
        env={"MLFLOW_TRACKING_URI": f"sqlite:///{out / 'mlflow.db'}"},
    )
    prepared = out / "prepared"
    splits = ("labeled", "unlabeled", "test")
    assert sorted(p.name for p in prepared.iterdir()) == ["classes.json", *sorted(f"{n}.wds" for n in splits)]
    manifest = []
    for name in splits:
        with open(split_path(prepared, name) / "files.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert {r["split"] for r in rows} == {name}
        manifest += rows
    return {
        **{n: load_imageset(split_path(prepared, n)) for n in splits},
        "classes": load_classes(prepared),
        "manifest": manifest,
        "metrics": json.loads((out / "m.json").read_text()),
    }


def test_prepare_folders_rgb_layout_ids_and_determinism(tmp_path: Path) -> None:
    dirs = make_tree(tmp_path / "images")
    params = folders_params(tmp_path, dirs)
    got = _prepare(params, tmp_path / "run1")
    labeled, unlabeled, test = got["labeled"], got["unlabeled"], got["test"]

    assert got["classes"] == list(CLASSES)
    assert labeled.images.shape == (12, 16, 16, 3) and labeled.images.dtype == np.uint8 and labeled.channels == 3
    assert labeled.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert labeled.ids.tolist() == list(range(12))
    # test has only cat and dog: their labels follow the labeled folder's class order (cat=1, dog=2)
    assert test.images.shape == (4, 16, 16, 3) and test.labels.tolist() == [1, 1, 2, 2]
    assert test.ids.tolist() == [1_000_000 + i for i in range(4)]
    assert unlabeled.images.shape == (7, 16, 16, 3)
    assert unlabeled.labels.tolist() == [-1] * 7  # unknown: the user's pool has no labels
    assert unlabeled.ids.tolist() == [2_000_000 + i for i in range(7)]
    assert {s for split in (labeled, unlabeled, test) for s in split.source.tolist()} == {"folders"}

    rows = {int(r["id"]): r for r in got["manifest"]}
    assert len(rows) == 12 + 7 + 4
    assert rows[0] == {"id": "0", "split": "labeled", "label": "0", "path": "bird/img0.jpg"}
    assert rows[1_000_003]["path"] == "dog/t1.png" and rows[1_000_003]["label"] == "2"
    assert rows[2_000_006]["path"] == "sub/deeper/d.png" and rows[2_000_006]["split"] == "unlabeled"
    m = got["metrics"]
    counts = {k: m[k] for k in ("labeled", "unlabeled", "test", "classes", "image_size", "channels")}
    assert counts == {"labeled": 12, "unlabeled": 7, "test": 4, "classes": 3, "image_size": 16, "channels": 3}

    # every split folder lists its tars; labeled and test carry the labeled class list their labels index
    assert read_info(split_path(tmp_path / "run1" / "prepared", "labeled")).num_samples == 12
    for name in ("labeled", "test"):
        assert load_classes(split_path(tmp_path / "run1" / "prepared", name)) == list(CLASSES)

    # same inputs + params -> byte-identical outputs (what DVC's cache relies on)
    _prepare(params, tmp_path / "run2")
    first, second = _files(tmp_path / "run1" / "prepared"), _files(tmp_path / "run2" / "prepared")
    assert sorted(first) == sorted(second)
    assert {
        "classes.json",
        "labeled.wds/files.csv",
        "test.wds/_info.json",
        "unlabeled.wds/unlabeled-000000.tar",
    } <= set(first)
    for name, data in first.items():
        assert data == second[name], name


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by its relative path."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_prepare_folders_grey_cap_and_overlap(tmp_path: Path) -> None:
    dirs = make_tree(tmp_path / "images")
    # the pool is the whole tree, labeled + test included: those files must be left out of it
    params = folders_params(tmp_path, {**dirs, "unlabeled": tmp_path / "images"}, channels=1, max_unlabeled=3)
    got = _prepare(params, tmp_path / "run")
    assert got["labeled"].images.shape == (12, 16, 16) and got["labeled"].channels == 1
    assert got["unlabeled"].images.shape == (3, 16, 16)
    m = got["metrics"]
    assert m["unlabeled_found"] == 12 + 4 + 7 and m["unlabeled_overlap_excluded"] == 16 and m["unlabeled"] == 3
    pool = [r["path"] for r in got["manifest"] if r["split"] == "unlabeled"]
    assert all(p.startswith("unlabeled/") for p in pool)


# ---- bad inputs: one clear message naming the path, exit code 2, no traceback, no MLflow run --------------


def _fail_in_process(tmp_path: Path, params: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """Run the stage's main() in this process (seconds faster than a subprocess per case); return stderr."""
    from stages.prepare import main

    with pytest.raises(typer.Exit) as exit_info:
        main(params_file=params, out=tmp_path / "out", metrics=tmp_path / "m.json")
    assert exit_info.value.exit_code == 2
    assert not (tmp_path / "out").exists()  # nothing written
    assert not list(tmp_path.glob(".out.*"))  # no staging folder left behind
    return capsys.readouterr().err


def _broken(tmp_path: Path, case: str) -> tuple[dict[str, Path], str]:
    """A tree broken one way, and a regex the error message must match."""
    dirs = make_tree(tmp_path / "images")
    if case == "missing_dir":
        dirs["labeled"] = tmp_path / "images" / "no-such-folder"
        return dirs, r"data\.labeled_dir: .*no-such-folder does not exist; expected a folder laid out as"
    if case == "empty_class":
        (dirs["labeled"] / "empty").mkdir()
        return dirs, r"data\.labeled_dir: class folder .*labeled/empty holds no image"
    if case == "unknown_test_class":
        make_tree(tmp_path / "other", test_classes=("cat", "fox"))
        dirs["test"] = tmp_path / "other" / "test"
        return dirs, r"data\.test_dir: class folder .*test/fox is not in data\.labeled_dir \(.*labeled\)"
    if case == "pool_is_labeled":
        dirs["unlabeled"] = dirs["labeled"]
        return (
            dirs,
            r"data\.unlabeled_dir: every image under .*labeled also lies in .*labeled or .*test; expected further",
        )
    if case == "unreadable":
        (dirs["unlabeled"] / "sub" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
        return dirs, r"sub/broken\.jpg: cannot read this image .*expected a valid image file"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["missing_dir", "empty_class", "unknown_test_class", "pool_is_labeled", "unreadable"])
def test_prepare_folders_bad_inputs(
    tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    dirs, expected = _broken(tmp_path, case)
    # the last line is the message (decoding progress bars may precede it)
    err = _fail_in_process(tmp_path, folders_params(tmp_path, dirs), capsys).strip().splitlines()[-1]
    assert err.startswith("error: ") and re.search(expected, err), err
    assert not (tmp_path / "mlflow.db").exists()  # stopped before an MLflow run was opened


def test_a_failed_rerun_leaves_the_earlier_splits(tmp_path: Path) -> None:
    """An image broken after a good run: the error names it, and the earlier split folders stay as they were."""
    from noisy_student.config import load_params
    from noisy_student.data.folders import FolderDataError
    from noisy_student.data.shard_folders import prepare_folders
    from noisy_student.data.wds import WdsDataError

    dirs = make_tree(tmp_path / "images")
    params = load_params(folders_params(tmp_path, dirs))
    out = tmp_path / "prepared"
    metrics, _ = prepare_folders(params, out)
    assert (metrics["labeled"], metrics["unlabeled"], metrics["test"]) == (12, 7, 4)
    before = _files(out)
    (dirs["test"] / "dog" / "t1.png").write_bytes(b"")  # test is written last: labeled and unlabeled are done
    with pytest.raises(FolderDataError, match=r"dog/t1\.png: cannot read this image"):
        prepare_folders(params, out)
    assert _files(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "params.yaml", "prepared"]  # no staging left
    # a folder that is not a split folder is never replaced, and that is said before any image is decoded
    (dirs["test"] / "dog" / "t1.png").unlink()
    (out / "test.wds" / "_info.json").unlink()
    before = _files(out)
    with pytest.raises(WdsDataError, match=r"test\.wds: a non-empty folder without _info\.json"):
        prepare_folders(params, out)
    assert _files(out) == before


def test_prepare_folders_cli_error_and_missing_param(tmp_path: Path) -> None:
    dirs = make_tree(tmp_path / "images")
    (dirs["labeled"] / "cat" / "img1.png").write_bytes(b"")  # an empty file with an image extension
    proc = run(
        [sys.executable, "-m", "stages.prepare", "--params", str(folders_params(tmp_path, dirs))], ROOT, check=False
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "cat/img1.png: cannot read this image" in proc.stderr
    # source: folders without test_dir is refused at params load, naming the key
    raw = yaml.safe_load((tmp_path / "params.yaml").read_text())
    raw["data"]["test_dir"] = None
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    proc = run([sys.executable, "-m", "stages.prepare", "--params", str(tmp_path / "params.yaml")], ROOT, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "data.test_dir" in proc.stderr and "required when data.source is 'folders'" in proc.stderr
