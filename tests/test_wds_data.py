"""WebDataset split folders, the one on-disk form of every prepared split: written from an ImageSet or from
image folders (the prepare stage, `noisy-student shard`), read back by us and by timm."""

from __future__ import annotations

import csv
import json
import re
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from noisy_student.config import ParamsError, load_params, parse_params
from noisy_student.data import ImageSet, load_classes, load_imageset, save_imageset
from noisy_student.data.folders import decode_image, decode_stream
from noisy_student.data.prepare import prepare_fashion_mnist, write_prepared
from noisy_student.data.shard_folders import prepare_folders, scan_split
from noisy_student.data.splits import OOD_ID_OFFSET, TEST_ID_OFFSET, id_offsets
from noisy_student.data.wds import (
    INFO_FILE,
    WdsDataError,
    WdsSample,
    WdsWriter,
    iter_tar,
    read_info,
    split_path,
)
from tests.conftest import FASHION_MNIST, ROOT, micro_params, run
from tests.test_folders import make_tree
from tests.test_prepare_folders import folders_params


def _imageset(n: int, channels: int, seed: int = 0) -> ImageSet:
    rng = np.random.default_rng(seed)
    shape = (n, 9, 7) if channels == 1 else (n, 9, 7, 3)
    return ImageSet(
        rng.integers(0, 256, shape, dtype=np.uint8),
        rng.integers(-1, 4, n).astype(np.int64),
        (np.arange(n, dtype=np.int64) * 7 + 3)[::-1].copy(),  # not sorted: the row order must survive
        np.array([("fashion_mnist", "digits", "photos")[i % 3] for i in range(n)]),
    )


def _assert_same(a: ImageSet, b: ImageSet) -> None:
    assert a.images.shape == b.images.shape and a.images.dtype == b.images.dtype == np.uint8
    for field in ("images", "labels", "ids", "source"):
        assert np.array_equal(getattr(a, field), getattr(b, field)), field
    assert b.labels.dtype == np.int64 and b.ids.dtype == np.int64


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by its relative path."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _write(folder: Path, samples: list[WdsSample]) -> None:
    """Samples written one by one as split ``test``, two per tar."""
    with WdsWriter(folder, "test", 2) as writer:
        for sample in samples:
            writer.write(sample)


@pytest.mark.parametrize("channels", [1, 3])
def test_round_trip_and_info(tmp_path: Path, channels: int) -> None:
    data = _imageset(11, channels)
    folder = tmp_path / "labeled.wds"
    info = save_imageset(folder, data, shard_size=4)  # 4 does not divide 11: the last tar holds 3
    names = ("labeled-000000.tar", "labeled-000001.tar", "labeled-000002.tar")
    assert (info.split, info.num_samples, info.filenames, info.shard_lengths) == ("labeled", 11, names, (4, 4, 3))
    assert sorted(p.name for p in folder.iterdir()) == [INFO_FILE, *names]
    assert json.loads((folder / INFO_FILE).read_text()) == {
        "name": "labeled",
        "num_samples": 11,
        "splits": {
            "labeled": {"name": "labeled", "num_samples": 11, "filenames": list(names), "shard_lengths": [4, 4, 3]}
        },
    }
    assert read_info(folder) == info and read_info(folder).paths(folder) == [folder / n for n in names]
    _assert_same(data, load_imageset(folder))
    assert not [p for p in tmp_path.iterdir() if p.name != "labeled.wds"]  # no temporary folder left


def test_tar_members_and_iter_tar_order(tmp_path: Path) -> None:
    data = _imageset(5, 3)
    info = save_imageset(tmp_path / "unlabeled.wds", data, shard_size=3)
    with tarfile.open(tmp_path / "unlabeled.wds" / info.filenames[0]) as tar:
        members = tar.getnames()
        first = data.ids[0]
        assert members[:3] == [f"{first:010d}.cls", f"{first:010d}.json", f"{first:010d}.png"]
        assert tar.extractfile(members[0]).read() == str(data.labels[0]).encode("ascii")
        meta = json.loads(tar.extractfile(members[1]).read())
        assert meta == {"id": int(first), "label": int(data.labels[0]), "source": "fashion_mnist"}
    samples = [
        s for path in read_info(tmp_path / "unlabeled.wds").paths(tmp_path / "unlabeled.wds") for s in iter_tar(path)
    ]
    assert [s.key for s in samples] == [f"{i:010d}" for i in data.ids]
    for row, s in enumerate(samples):
        assert isinstance(s, WdsSample) and s.image.dtype == np.uint8 and s.image.shape == (9, 7, 3)
        assert np.array_equal(s.image, data.images[row])
        assert (s.label, s.id, s.source) == (data.labels[row], data.ids[row], data.source[row])


def test_same_images_same_bytes_and_rewrite_replaces(tmp_path: Path) -> None:
    data = _imageset(7, 1)
    a, b = tmp_path / "a" / "test.wds", tmp_path / "b" / "test.wds"
    save_imageset(a, data, 2)
    save_imageset(b, data, 2)
    for name in [*read_info(a).filenames, INFO_FILE]:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    # a rerun with fewer images replaces the folder: no tar of the earlier run survives
    save_imageset(a, _imageset(3, 1), 2)
    assert sorted(p.name for p in a.iterdir()) == [INFO_FILE, "test-000000.tar", "test-000001.tar"]
    # a failed write leaves the earlier folder untouched
    bad = [WdsSample.of(np.zeros((4, 4), np.uint8), 0, 1, "x"), WdsSample.of(np.zeros((5, 4), np.uint8), 0, 2, "x")]
    with pytest.raises(ValueError, match=r"expected every image of the split to have the first one's \(4, 4\)"):
        _write(a, bad)
    assert read_info(a).num_samples == 3
    assert sorted(p.name for p in a.parent.iterdir()) == ["test.wds"]  # no temporary folder left
    with pytest.raises(ValueError, match="written twice"):
        _write(tmp_path / "c.wds", [bad[0], bad[0]])
    # an unrelated folder is never replaced
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.txt").write_text("precious")
    with pytest.raises(WdsDataError, match=r"mine: a non-empty folder without _info\.json"):
        save_imageset(tmp_path / "mine", data, 2)
    assert (tmp_path / "mine" / "thesis.txt").read_text() == "precious"


def test_timm_reads_the_shards(tmp_path: Path) -> None:
    from timm.data import create_dataset

    data = _imageset(7, 3)
    folder = tmp_path / "labeled.wds"
    save_imageset(folder, data, shard_size=3)
    ds = create_dataset("wds/labeled", root=str(folder), split="labeled", is_training=False, batch_size=4)
    got = [(np.asarray(img), target) for img, target in ds]
    assert len(got) == 7
    # in eval mode the reader keeps file order; cls -1 (unknown) comes through as -1
    assert [t for _, t in got] == data.labels.tolist()
    assert all(np.array_equal(img, data.images[i]) for i, (img, _) in enumerate(got))


def test_split_path_is_the_split_folder(tmp_path: Path) -> None:
    data = _imageset(4, 1)
    assert split_path(tmp_path, "test") == tmp_path / "test.wds"
    assert split_path(str(tmp_path), "unlabeled") == tmp_path / "unlabeled.wds"
    save_imageset(split_path(tmp_path, "test"), data, 3)
    assert read_info(split_path(tmp_path, "test")).split == "test"  # named after the folder
    _assert_same(data, load_imageset(split_path(tmp_path, "test")))


def test_read_errors_name_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "labeled.wds"
    with pytest.raises(FileNotFoundError, match=r"labeled\.wds does not exist: expected a \.wds split folder"):
        read_info(folder)
    save_imageset(folder, _imageset(5, 3), 2)
    info_text = (folder / INFO_FILE).read_text()

    (folder / "labeled-000001.tar").unlink()
    with pytest.raises(FileNotFoundError, match=r"labeled-000001\.tar: listed in .*_info\.json but missing"):
        load_imageset(folder)

    save_imageset(folder, _imageset(5, 3), 2)
    raw = json.loads(info_text)
    raw["splits"]["labeled"]["shard_lengths"] = [2, 1, 2]  # sums to 5 still, but tar 1 holds 2
    (folder / INFO_FILE).write_text(json.dumps(raw))
    with pytest.raises(WdsDataError, match=r"labeled-000001\.tar: 2 samples; expected 1"):
        load_imageset(folder)
    raw["splits"]["labeled"]["shard_lengths"] = [2, 2]
    (folder / INFO_FILE).write_text(json.dumps(raw))
    with pytest.raises(WdsDataError, match=r"_info\.json: split 'labeled' lists 3 tars with shard_lengths \[2, 2\]"):
        read_info(folder)
    (folder / INFO_FILE).write_text("{not json")
    with pytest.raises(WdsDataError, match=r"_info\.json: unreadable"):
        read_info(folder)
    (folder / INFO_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=r"labeled\.wds/_info\.json not found"):
        load_imageset(folder)
    (tmp_path / "junk.tar").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(WdsDataError, match=r"junk\.tar: not a readable tar file"):
        list(iter_tar(tmp_path / "junk.tar"))
    # a copy cut inside its last member (the png of the last sample): the headers read, the data does not
    save_imageset(tmp_path / "one.wds", _imageset(5, 3), 5)
    tar = tmp_path / "one.wds" / "one-000000.tar"
    with tarfile.open(tar) as t:
        last = t.getmembers()[-1]
    cut = tmp_path / "cut.tar"
    cut.write_bytes(tar.read_bytes()[: last.offset_data + 10])
    with pytest.raises(WdsDataError, match=rf"cut\.tar: truncated inside {last.name}"):
        list(iter_tar(cut))
    assert len(list(iter_tar(tar))) == 5


# ---- the prepare stage on Fashion-MNIST -------------------------------------------------------------------


def _micro_params(tmp_path: Path, **data: object) -> Path:
    p = micro_params(yaml.safe_load((ROOT / "params.yaml").read_text()))
    p["data"].update(data)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(p))
    return path


def test_prepare_stage_writes_what_the_library_builds(tmp_path: Path) -> None:
    assert FASHION_MNIST.is_dir(), "make test installs dataset-fashion-mnist"
    params = _micro_params(tmp_path, wds_shard_size=64)
    out = tmp_path / "prepared"
    cmd = [sys.executable, "-m", "stages.prepare", "--params", str(params), "--out", str(out)]
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    run([*cmd, "--metrics", str(tmp_path / "m.json")], ROOT, env=env)
    assert sorted(p.name for p in out.iterdir()) == ["classes.json", "labeled.wds", "test.wds", "unlabeled.wds"]
    assert read_info(out / "unlabeled.wds").shard_lengths == (64,) * 5 + (20,)  # 300 + 40 out-of-domain

    # the same params in this process: identical images, labels, ids and sources, and identical bytes
    prepared = prepare_fashion_mnist(load_params(params))
    for split in ("labeled", "unlabeled", "test"):
        _assert_same(getattr(prepared, split), load_imageset(split_path(out, split)))
    write_prepared(tmp_path / "again", prepared, 64)
    assert _files(tmp_path / "again") == _files(out)
    assert load_classes(out) == list(prepared.classes)
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["labeled"] == 100 and metrics["unlabeled"] == 340 and metrics["test"] == 200

    # another tar size replaces every split folder whole: no tar of the earlier layout is left
    write_prepared(out, prepared, 1000)
    assert sorted(p.name for p in out.iterdir()) == ["classes.json", "labeled.wds", "test.wds", "unlabeled.wds"]
    assert sorted(p.name for p in (out / "unlabeled.wds").iterdir()) == [INFO_FILE, "unlabeled-000000.tar"]
    _assert_same(prepared.unlabeled, load_imageset(split_path(out, "unlabeled")))


# ---- noisy-student shard -------------------------------------------------------------------------------


def _shard(*args: str) -> tuple[int, str]:
    from noisy_student.cli import app

    result = CliRunner().invoke(app, ["shard", *args])
    return result.exit_code, result.output


def test_shard_command_matches_prepare_folders(tmp_path: Path) -> None:
    dirs = make_tree(tmp_path / "images")
    # the pool is the whole tree: prepare leaves the labeled and test files out of it, the command's --exclude too
    params = load_params(
        folders_params(tmp_path, {**dirs, "unlabeled": tmp_path / "images"}, max_unlabeled=5, wds_shard_size=5)
    )
    prepared = tmp_path / "prepared"
    prepare_folders(params, prepared)

    out = tmp_path / "shards"
    common = ["--image-size", "16", "--channels", "3", "--shard-size", "5", "--seed", str(params.seed)]
    code, text = _shard(str(dirs["labeled"]), str(out / "labeled.wds"), "--split", "labeled", *common)
    assert code == 0, text
    assert "shard: 12 labeled images of 12 found" in text
    classes = out / "labeled.wds" / "classes.json"
    code, text = _shard(str(dirs["test"]), str(out / "test.wds"), "--split", "test", "--classes", str(classes), *common)
    assert code == 0, text
    excluded = ["--exclude", str(dirs["labeled"]), "--exclude", str(dirs["test"]), "--max-images", "5"]
    code, text = _shard(
        str(tmp_path / "images"), str(out / "unlabeled.wds"), "--split", "unlabeled", *common, *excluded
    )
    assert code == 0, text

    # three shard calls write what prepare writes, byte for byte: tars, _info.json, files.csv, classes.json
    for split in ("labeled", "unlabeled", "test"):
        assert _files(out / f"{split}.wds") == _files(split_path(prepared, split)), split
    assert load_imageset(out / "unlabeled.wds").ids.tolist() == load_imageset(prepared / "unlabeled.wds").ids.tolist()
    assert read_info(out / "labeled.wds").shard_lengths == (5, 5, 2)
    assert load_classes(out / "labeled.wds") == ["bird", "cat", "dog"]
    assert load_classes(out / "test.wds") == ["bird", "cat", "dog"]  # the labeled list, though test has 2 classes
    assert not (out / "unlabeled.wds" / "classes.json").exists()
    manifest = (out / "test.wds" / "files.csv").read_text().splitlines()
    assert manifest[0] == "id,split,label,path" and manifest[-1] == "1000003,test,2,dog/t1.png"
    # timm reads labeled shards written from real files, targets in the labeled class order
    from timm.data import create_dataset

    ds = create_dataset("wds/test", root=str(out / "test.wds"), split="test", is_training=False, batch_size=4)
    assert [t for _, t in ds] == [1, 1, 2, 2]  # cat, cat, dog, dog in the labeled class order


def test_shard_grey_and_pool_decoding(tmp_path: Path) -> None:
    dirs = make_tree(tmp_path / "images")
    found = scan_split(dirs["unlabeled"], "unlabeled")
    assert found.ids.tolist() == [2_000_000 + i for i in range(7)] and found.labels.tolist() == [-1] * 7
    expected = np.stack([decode_image(f, 12, 1) for f in found.files])
    streamed = np.stack(list(decode_stream(found.files, 12, 1, workers=2, chunk=3, pool_min=1)))
    assert np.array_equal(streamed, expected)
    code, text = _shard(str(dirs["unlabeled"]), str(tmp_path / "u.wds"), "--split", "unlabeled", "--channels", "1")
    assert code == 0, text
    got = load_imageset(tmp_path / "u.wds")
    assert got.images.shape == (7, 32, 32) and got.labels.tolist() == [-1] * 7


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["{src}", "{tmp}/x.wds", "--split", "train"], r"Invalid value for '--split'.*'train'"),
        (["{tmp}/nowhere", "{tmp}/x.wds", "--split", "labeled"], r"SRC: \S*nowhere does not exist"),
        (["{src}", "{tmp}/x.wds", "--split", "test"], r"--classes: required with --split test"),
        (["{src}", "{tmp}/x.wds", "--split", "test", "--classes", "{tmp}/none.json"], r"--classes: \S*none\.json"),
        (["{src}", "{tmp}/prepared", "--split", "labeled"], r"OUT: \S*prepared; expected .* ends in \.wds"),
        (["{src}", "{tmp}/x.wds", "--split", "labeled", "--channels", "2"], r"--channels: 2; expected 1"),
    ],
)
def test_shard_errors_name_the_path(tmp_path: Path, args: list[str], expected: str) -> None:
    dirs = make_tree(tmp_path / "images")
    code, text = _shard(*(a.format(src=dirs["labeled"], tmp=tmp_path) for a in args))
    assert code == 2 and "Traceback" not in text
    assert re.search(expected, " ".join(text.replace("│", " ").split())), text
    assert not (tmp_path / "x.wds").exists()


def test_shard_unknown_test_class(tmp_path: Path) -> None:
    dirs = make_tree(tmp_path / "images", test_classes=("cat", "fox"))
    (tmp_path / "classes.json").write_text(json.dumps(["bird", "cat", "dog"]))
    code, text = _shard(
        str(dirs["test"]), str(tmp_path / "t.wds"), "--split", "test", "--classes", str(tmp_path / "classes.json")
    )
    assert code == 2 and re.search(r"SRC: class folder \S*test/fox is not in --classes", text), text


# ---- params --------------------------------------------------------------------------------------------


def test_default_data_storage_params() -> None:
    d = load_params(ROOT / "params.yaml").data
    assert (d.residency, d.wds_shard_size, d.workers) == ("auto", 10240, 0)
    assert "format" not in type(d).model_fields


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("format", "wds", r"key 'data\.format': removed: .*data\.residency \(auto \| memory \| stream\)"),
        ("residency", "disk", r"data\.residency.*'disk'.*'auto', 'memory' or 'stream'"),
        ("wds_shard_size", 0, r"data\.wds_shard_size.*0.*1"),
        ("workers", -1, r"data\.workers.*-1.*0"),
    ],
)
def test_bad_data_format_params_name_the_key(key: str, value: object, expected: str) -> None:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["data"][key] = value
    with pytest.raises(ParamsError) as err:
        parse_params(raw, "params.yaml")
    assert re.search(expected, str(err.value), re.S), str(err.value)


def test_prepare_stage_streams_folders_into_shards(tmp_path: Path) -> None:
    """data.source: folders: each sample of the stage's tars is its files.csv row's file, as decode_image decodes it."""
    dirs = make_tree(tmp_path / "images")
    params = folders_params(tmp_path, {**dirs, "unlabeled": tmp_path / "images"}, max_unlabeled=5, wds_shard_size=4)
    out = tmp_path / "prepared"
    run(
        [
            sys.executable,
            "-m",
            "stages.prepare",
            "--params",
            str(params),
            "--out",
            str(out),
            "--metrics",
            str(tmp_path / "m.json"),
        ],
        ROOT,
        env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"},
    )
    assert sorted(p.name for p in out.iterdir()) == ["classes.json", "labeled.wds", "test.wds", "unlabeled.wds"]
    roots = {"labeled": dirs["labeled"], "unlabeled": tmp_path / "images", "test": dirs["test"]}
    for split, lengths in (("labeled", (4, 4, 4)), ("unlabeled", (4, 1)), ("test", (4,))):
        got = load_imageset(split_path(out, split))
        with open(split_path(out, split) / "files.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert got.ids.tolist() == [int(r["id"]) for r in rows]
        assert got.labels.tolist() == [int(r["label"]) for r in rows]
        assert np.array_equal(got.images, np.stack([decode_image(roots[split] / r["path"], 16, 3) for r in rows]))
        assert set(got.source.tolist()) == {"folders"}
        assert read_info(split_path(out, split)).shard_lengths == lengths
    pool = load_imageset(split_path(out, "unlabeled"))
    assert (pool.ids >= OOD_ID_OFFSET).all() and (pool.labels == -1).all()
    assert load_classes(out) == ["bird", "cat", "dog"]
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert {k: metrics[k] for k in ("labeled", "unlabeled", "test", "classes")} == {
        "labeled": 12,
        "unlabeled": 5,
        "test": 4,
        "classes": 3,
    }
    assert metrics["unlabeled_found"] == 23 and metrics["unlabeled_overlap_excluded"] == 16


def test_id_offsets_keep_small_sets_and_grow_for_large_ones() -> None:
    assert id_offsets(1_000, 10_000) == (TEST_ID_OFFSET, OOD_ID_OFFSET) == (1_000_000, 2_000_000)
    assert id_offsets(999_999, 50_000) == (1_000_000, 2_000_000)
    assert id_offsets(1_281_167, 50_000) == (10_000_000, 20_000_000)  # ImageNet's train split
    lab, tst = 1_281_167, 50_000
    test_offset, ood_offset = id_offsets(lab, tst)
    assert lab <= test_offset and test_offset + tst <= ood_offset
