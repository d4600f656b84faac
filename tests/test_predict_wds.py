"""`predict` over the pool of WebDataset tars (unlabeled.wds) and the student's join by image id.

Tars whose size is a multiple of ``pseudo_labels.batch_size`` are labelled in the batches of one pass
over the whole pool, so their probabilities equal that pass's (and another such tar size's) bit for
bit; every row carries the image ``id`` and its tar's name (``shard``). Jobs, reruns and changed tars
relabel only what changed; filter-balance carries ``shard`` through; :func:`student_targets` reads the
selected images back, found by id in memory or, streaming, in the tar ``shard`` names.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import webdataset as wds
from PIL import Image

from noisy_student.config import FilterParams, ModelParams, NoiseParams, PseudoLabelParams
from noisy_student.data import ImageSet, save_imageset
from noisy_student.data.wds import iter_tar, sample_key
from noisy_student.models import create_classifier, save_checkpoint
from noisy_student.pseudo_labels.predict import (
    PredictInputs,
    ShardJob,
    load_predict_inputs,
    predict_pseudo_labels,
)
from noisy_student.pseudo_labels.select import filter_balance
from noisy_student.pseudo_labels.shards import TarPool, key_path, load_pool, shard_path
from noisy_student.pseudo_labels.targets import (
    TOPK_CLASSES,
    TOPK_PROBS,
    ParquetReadError,
    SelectedImages,
    selected_targets,
    selection_stats,
    student_targets,
    targets_from_probs,
)

POOL, TAR, BATCH = 100, 32, 16  # tars of 32, 32, 32, 4 samples: two batches each, the last one short
CPU = torch.device("cpu")
PL = PseudoLabelParams(batch_size=BATCH)
# the same pool in other tar sizes that are multiples of BATCH: one tar of the whole pool (one pass), 64 + 36
WHOLE, TARS64 = "whole/unlabeled.wds", "tars64/unlabeled.wds"


def write_wds_folder(folder: Path, pool: ImageSet, shard_size: int, split: str = "unlabeled") -> None:
    """The design's layout: ``<split>-NNNNNN.tar`` of ``shard_size`` samples (png, cls, json) + ``_info.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    names, lengths = [], []
    for j, start in enumerate(range(0, len(pool), shard_size)):
        names.append(f"{split}-{j:06d}.tar")
        stop = min(start + shard_size, len(pool))
        lengths.append(stop - start)
        with wds.TarWriter(str(folder / names[-1]), mtime=0.0) as sink:  # fixed mtime: same samples, same bytes
            for i in range(start, stop):
                png = io.BytesIO()
                Image.fromarray(pool.images[i]).save(png, format="PNG")
                label, image_id, source = int(pool.labels[i]), int(pool.ids[i]), str(pool.source[i])
                sink.write(
                    {
                        "__key__": f"{image_id:010d}",
                        "png": png.getvalue(),
                        "cls": str(label),
                        "json": json.dumps({"id": image_id, "label": label, "source": source}),
                    }
                )
    entry = {"name": split, "num_samples": len(pool), "filenames": names, "shard_lengths": lengths}
    info = {"name": split, "num_samples": len(pool), "splits": {split: entry}}
    (folder / "_info.json").write_text(json.dumps(info))


def _pool(seed: int = 0) -> ImageSet:
    rng = np.random.default_rng(seed)
    labels = np.concatenate([rng.integers(0, 10, POOL - 10), np.full(10, -1)])
    return ImageSet(
        rng.integers(0, 256, (POOL, 28, 28), dtype=np.uint8),
        labels,
        np.arange(3000, 3000 + POOL),
        np.where(labels < 0, "digits", "fashion_mnist"),
    )


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same 100-image pool as unlabeled.wds (4 tars of the design's layout, written by hand) and as
    save_imageset writes it in one tar and in tars of 64; a tiny teacher saved with its noise."""
    root = tmp_path_factory.mktemp("wds")
    pool = _pool()
    write_wds_folder(root / "unlabeled.wds", pool, TAR)
    save_imageset(root / WHOLE, pool, shard_size=POOL)
    save_imageset(root / TARS64, pool, shard_size=64)
    noise = NoiseParams(randaugment_num_ops=1, crop_padding=1, dropout=0.3, stochastic_depth=0.1)
    torch.manual_seed(0)
    model, spec = create_classifier(ModelParams(arch="test_resnet"), 10, 1, (0.5,), (0.25,))
    save_checkpoint(root / "teacher.pt", model, spec, {"name": "teacher", "noise": noise.model_dump()})
    return root


def _load(inputs: Path, pool: str, pl: PseudoLabelParams = PL) -> PredictInputs:
    return load_predict_inputs(inputs / "teacher.pt", inputs / pool, pl)


def _predict(teacher: PredictInputs, out: Path, pl: PseudoLabelParams = PL, job: ShardJob = ShardJob()):
    return predict_pseudo_labels(teacher, out, pl, CPU, 30, job)


def _tables(folder: Path) -> list[pa.Table]:
    return [pq.read_table(shard_path(folder, j)) for j in range(len(list(folder.glob("part-*.parquet"))))]


def _assert_same_folder(folder: Path, reference: Path) -> None:
    assert sorted(os.listdir(folder)) == sorted(os.listdir(reference))
    for name in os.listdir(reference):
        assert (folder / name).read_bytes() == (reference / name).read_bytes(), name


@pytest.fixture(scope="module")
def one_pass(inputs: Path, tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> Path:
    """One plain run over the pool as one tar: one pass over the whole pool in batches of 16."""
    out = tmp_path_factory.mktemp("one-pass") / "predictions"
    assert _predict(_load(inputs, WHOLE), out).written == 1
    return out


@pytest.fixture(scope="module")
def wds_run(inputs: Path, tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> Path:
    """One plain run over unlabeled.wds."""
    out = tmp_path_factory.mktemp("wds-run") / "predictions"
    done = _predict(_load(inputs, "unlabeled.wds"), out)
    assert (done.written, done.skipped, done.images) == (4, 0, POOL)
    assert done.metrics is not None and done.metrics["shards"] == 4 and done.metrics["images"] == POOL
    return out


def test_load_predict_inputs_reads_a_wds_folder_as_its_tars(inputs: Path) -> None:
    loaded = _load(inputs, "unlabeled.wds")
    assert isinstance(loaded.pool, TarPool) and len(loaded.pool) == POOL
    assert [(s.index, s.file, len(s)) for s in loaded.pool.shards] == [
        (j, f"unlabeled-{j:06d}.tar", n) for j, n in enumerate((32, 32, 32, 4))
    ]


def test_batches_start_at_each_tars_first_sample(inputs: Path) -> None:
    pool, shards = _pool(), load_pool(inputs / "unlabeled.wds").shards
    # batches of 10 do not straddle tars: 10, 10, 10, 2 of every tar of 32, then the last tar's 4
    sizes = [[len(batch.ids) for batch in shard.batches(10)] for shard in shards]
    assert sizes == [[10, 10, 10, 2]] * 3 + [[4]]
    batches = [batch for shard in shards for batch in shard.batches(10)]
    np.testing.assert_array_equal(np.concatenate([b.ids for b in batches]), pool.ids)
    np.testing.assert_array_equal(np.concatenate([b.labels for b in batches]), pool.labels)
    np.testing.assert_array_equal(np.concatenate([b.source for b in batches]), pool.source)
    np.testing.assert_array_equal(np.concatenate([b.images for b in batches]), pool.images)
    assert batches[0].images.dtype == np.uint8 and batches[0].images.shape == (10, 28, 28)


@pytest.mark.parametrize("top_k", [None, 3])
def test_tar_pool_labels_as_one_pass_over_the_pool_plus_shard(
    inputs: Path, one_pass: Path, wds_run: Path, top_k: int | None, tmp_path: Path, one_thread: None
) -> None:
    pl = PL.model_copy(update={"top_k": top_k})
    if top_k is None:
        one_dir, wds_dir = one_pass, wds_run
    else:
        one_dir, wds_dir = tmp_path / "one", tmp_path / "wds"
        _predict(_load(inputs, WHOLE, pl), one_dir, pl)
        _predict(_load(inputs, "unlabeled.wds", pl), wds_dir, pl)
    _predict(_load(inputs, TARS64, pl), tmp_path / "tars64", pl)
    pool = _pool()
    (whole,), wds_tables, tars64 = _tables(one_dir), _tables(wds_dir), _tables(tmp_path / "tars64")
    assert len(wds_tables) == 4 and len(tars64) == 2
    stored = ["probs"] if top_k is None else [TOPK_PROBS, TOPK_CLASSES]
    assert whole.column_names == ["id", "source", "label", "pred", "confidence", *stored, "shard"]
    assert whole["shard"].to_pylist() == ["unlabeled-000000.tar"] * POOL
    for j, table in enumerate(wds_tables):
        assert table.column_names == whole.column_names and "key" not in table.column_names
        # the same images in the same batches as one pass: the same probabilities, bit for bit
        expected = whole.slice(j * TAR, TAR).drop_columns(["shard"])
        assert table.drop_columns(["shard"]).equals(expected), j
        assert table["shard"].to_pylist() == [f"unlabeled-{j:06d}.tar"] * table.num_rows
        assert table.schema.field("shard").type == pa.string() and table.schema.field("id").type == pa.int64()
        # each row's image is the tar's sample of that id, in the tar's order
        tar = inputs / "unlabeled.wds" / f"unlabeled-{j:06d}.tar"
        assert table["id"].to_pylist() == [s.id for s in iter_tar(tar)]
    # another tar size that is a multiple of the batch: the same rows and numbers, other tar names
    for tables in (wds_tables, tars64):
        assert pa.concat_tables(tables).drop_columns(["shard"]).equals(whole.drop_columns(["shard"]))
    assert [t["shard"].to_pylist() for t in tars64] == [["unlabeled-000000.tar"] * 64, ["unlabeled-000001.tar"] * 36]
    assert pa.concat_tables(wds_tables)["id"].to_pylist() == pool.ids.tolist()
    assert sorted(os.listdir(wds_dir)) == sorted(
        name for j in range(4) for name in (f"part-{j:05d}.parquet", f".part-{j:05d}.parquet.key")
    )
    key = json.loads(key_path(shard_path(wds_dir, 1)).read_text())["content"]
    assert (key["tar"], key["samples"], key["shard"]) == ("unlabeled-000001.tar", 32, 1) and len(key["tar_md5"]) == 32


@pytest.mark.parametrize("noised", [False, True])
def test_shard_jobs_then_the_merge_equal_one_run(
    inputs: Path, wds_run: Path, noised: bool, tmp_path: Path, one_thread: None
) -> None:
    pl = PL.model_copy(update={"noised_teacher": noised})
    teacher = _load(inputs, "unlabeled.wds", pl)
    assert (teacher.noise is not None) == noised
    jobs = tmp_path / "jobs"
    for part in ((1, 2), (0, 2)):
        done = _predict(teacher, jobs, pl, ShardJob(part))
        assert (done.written, done.images, done.metrics) == (2, 32 + (4 if part == (1, 2) else 32), None)
    done = _predict(teacher, jobs, pl)
    assert (done.written, done.skipped) == (0, 4)
    reference = wds_run
    if noised:
        reference = tmp_path / "plain"
        _predict(teacher, reference, pl)
        assert not _tables(reference)[0].equals(_tables(wds_run)[0])  # the noise acted
    _assert_same_folder(jobs, reference)


def test_rerun_skips_and_a_changed_tar_is_relabelled(
    inputs: Path, wds_run: Path, tmp_path: Path, one_thread: None
) -> None:
    folder = tmp_path / "unlabeled.wds"
    shutil.copytree(inputs / "unlabeled.wds", folder)
    out = tmp_path / "predictions"
    shutil.copytree(wds_run, out)
    teacher = load_predict_inputs(inputs / "teacher.pt", folder, PL)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    done = _predict(teacher, out)
    assert (done.written, done.skipped, done.images) == (0, 4, 0)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before

    # one image of tar 1 changed (row 40 of the pool): only that tar's bytes change
    pool = _pool()
    images = pool.images.copy()
    images[40] = 255 - images[40]
    tars = {p.name: p.read_bytes() for p in folder.glob("*.tar")}
    write_wds_folder(folder, ImageSet(images, pool.labels, pool.ids, pool.source), TAR)
    assert [name for name in sorted(tars) if (folder / name).read_bytes() != tars[name]] == ["unlabeled-000001.tar"]
    (out / "part-00009.parquet").write_bytes(b"a stray shard of an earlier, larger pool")
    done = _predict(load_predict_inputs(inputs / "teacher.pt", folder, PL), out)
    assert (done.written, done.skipped, done.images) == (1, 3, 32)
    assert not (out / "part-00009.parquet").exists()
    for j in (0, 2, 3):
        assert shard_path(out, j).read_bytes() == shard_path(wds_run, j).read_bytes()
    new, old = pq.read_table(shard_path(out, 1)), pq.read_table(shard_path(wds_run, 1))
    changed = [i for i in range(len(new)) if new["probs"][i].as_py() != old["probs"][i].as_py()]
    assert changed == [40 - TAR]
    assert new.drop_columns(["probs", "pred", "confidence"]).equals(old.drop_columns(["probs", "pred", "confidence"]))


def test_a_tar_that_disagrees_with_its_listing_stops_before_writing(inputs: Path, tmp_path: Path) -> None:
    folder = tmp_path / "unlabeled.wds"
    shutil.copytree(inputs / "unlabeled.wds", folder)
    info = json.loads((folder / "_info.json").read_text())
    info["splits"]["unlabeled"]["shard_lengths"][3] = 5  # the last tar holds 4
    info["num_samples"] = info["splits"]["unlabeled"]["num_samples"] = 101  # the listing adds up: only the tar differs
    (folder / "_info.json").write_text(json.dumps(info))
    teacher = load_predict_inputs(inputs / "teacher.pt", folder, PL)
    with pytest.raises(ValueError, match=r"unlabeled-000003\.tar: holds 4 samples, _info\.json lists 5"):
        _predict(teacher, tmp_path / "predictions", job=ShardJob((3, 4)))
    assert not shard_path(tmp_path / "predictions", 3).exists()


def test_a_missing_or_unreadable_wds_folder_is_named(inputs: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing\.wds does not exist: expected a \.wds split folder"):
        load_predict_inputs(inputs / "teacher.pt", tmp_path / "missing.wds", PL)
    folder = tmp_path / "broken.wds"
    shutil.copytree(inputs / "unlabeled.wds", folder)
    (folder / "unlabeled-000002.tar").unlink()
    with pytest.raises(FileNotFoundError, match=r"unlabeled-000002\.tar: listed in .*_info\.json but missing"):
        load_predict_inputs(inputs / "teacher.pt", folder, PL)
    (folder / "_info.json").write_text('{"splits": []}')
    with pytest.raises(ValueError, match=r"_info\.json: 0 splits \[\]; expected one"):
        load_predict_inputs(inputs / "teacher.pt", folder, PL)
    # a damaged member names the tar and the sample
    shutil.copy(inputs / "unlabeled.wds" / "_info.json", folder)
    shutil.copy(inputs / "unlabeled.wds" / "unlabeled-000002.tar", folder)
    tar = folder / "unlabeled-000003.tar"
    data = bytearray((inputs / "unlabeled.wds" / tar.name).read_bytes())
    at = data.index(b"\x89PNG")
    data[at : at + 4] = b"JUNK"
    tar.write_bytes(bytes(data))
    teacher = load_predict_inputs(inputs / "teacher.pt", folder, PL)
    with pytest.raises(ValueError, match=r"unlabeled-000003\.tar: sample 0000003096: cannot decode the png"):
        _predict(teacher, tmp_path / "predictions", job=ShardJob((3, 4)))


# ---------------------------------------------------------------------------
# filter-balance carries shard; the student's targets, joined by id
# ---------------------------------------------------------------------------

FILTER = FilterParams(confidence_threshold=0.0, images_per_class=150)  # > pool: balancing duplicates every image


@pytest.fixture(scope="module")
def selections(
    inputs: Path, one_pass: Path, wds_run: Path, tmp_path_factory: pytest.TempPathFactory, one_thread: None
) -> dict[str, Path]:
    """selected.parquet of the one-tar and the 4-tar predictions (full distribution), and of top-3 4-tar ones."""
    root = tmp_path_factory.mktemp("selected")
    pl = PL.model_copy(update={"top_k": 3})
    _predict(_load(inputs, "unlabeled.wds", pl), root / "top3", pl)
    paths = {}
    for name, predictions in (("one", one_pass), ("wds", wds_run), ("top3", root / "top3")):
        paths[name] = root / f"{name}.parquet"
        filter_balance(predictions, paths[name], FILTER, seed=5)
    return paths


def test_filter_balance_carries_the_shard(selections: dict[str, Path]) -> None:
    one, tar = pq.read_table(selections["one"]), pq.read_table(selections["wds"])
    assert tar.column_names == ["id", "source", "label", "pred", "confidence", "probs", "shard", "copies"]
    assert tar.drop_columns(["shard"]).equals(one.drop_columns(["shard"]))  # the same selection
    assert int(np.asarray(tar["copies"]).max()) > 1  # some images duplicated by balancing
    ids = tar["id"].to_pylist()
    assert tar["shard"].to_pylist() == [f"unlabeled-{(i - 3000) // TAR:06d}.tar" for i in ids]
    assert one["shard"].to_pylist() == ["unlabeled-000000.tar"] * len(ids)


@pytest.mark.parametrize("mode", ["soft", "hard"])
@pytest.mark.parametrize("selection", ["wds", "top3"])
def test_student_targets_find_each_image_by_id_in_memory_and_in_its_tar(
    selections: dict[str, Path], selection: str, mode: str, inputs: Path
) -> None:
    path = selections[selection]
    selected, stats = student_targets(path, 10, mode)
    assert isinstance(selected, SelectedImages)
    table = pq.read_table(path)
    assert selected.ids.tolist() == table["id"].to_pylist() and len(set(selected.ids.tolist())) == len(selected)
    assert selected.ids.dtype == np.int64
    assert selected.shards.tolist() == table["shard"].to_pylist()
    assert selected.copies.dtype == np.int64 and selected.copies.tolist() == table["copies"].to_pylist()
    assert selected.targets.dtype == np.float32 and selected.targets.shape == (len(selected), 10)
    np.testing.assert_allclose(selected.targets.sum(1), 1.0, rtol=1e-5)
    _, copies, probs = selected_targets(table, 10)
    np.testing.assert_array_equal(selected.targets, targets_from_probs(probs, mode))
    assert stats == selection_stats(copies, probs)
    assert stats["pseudo_labeled_rows"] == int(selected.copies.sum()) and stats["pseudo_labeled_unique"] == len(table)
    # streaming: each selected image is the sample whose key is its id in the tar its shard names
    folder = inputs / "unlabeled.wds"
    samples = {(tar, s.key): s.id for tar in set(selected.shards.tolist()) for s in iter_tar(folder / tar)}
    assert all(samples.get((tar, sample_key(i))) == i for i, tar in zip(selected.ids, selected.shards, strict=True))
    # in memory: the pool's rows of those ids, repeated by their copies
    pool = _pool()
    rows, targets = selected.rows(pool.ids, path)
    assert len(rows) == stats["pseudo_labeled_rows"]
    np.testing.assert_array_equal(targets, np.repeat(selected.targets, selected.copies, axis=0))
    np.testing.assert_array_equal(pool.ids[rows], np.repeat(selected.ids, selected.copies))
    if mode == "hard":
        assert set(np.unique(selected.targets)) == {0.0, 1.0}


def test_student_targets_errors_name_the_file(selections: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nothing\.parquet: selected pseudo labels not found"):
        student_targets(tmp_path / "nothing.parquet", 10, "soft")
    table = pq.read_table(selections["wds"])
    pq.write_table(table.drop_columns(["shard"]), tmp_path / "noshard.parquet")  # predicted from an npz pool
    with pytest.raises(ValueError, match=r"noshard\.parquet: no 'shard' column; .*in-memory pool"):
        student_targets(tmp_path / "noshard.parquet", 10, "soft")
    pq.write_table(table.slice(0, 0), tmp_path / "empty.parquet")
    with pytest.raises(ValueError, match=r"empty\.parquet: no pseudo-labeled image .*confidence_threshold=0\.7"):
        student_targets(tmp_path / "empty.parquet", 10, "soft", threshold=0.7)
    pq.write_table(pa.concat_tables([table, table.slice(0, 2)]), tmp_path / "twice.parquet")
    with pytest.raises(ValueError, match=r"twice\.parquet: 2 ids selected more than once"):
        student_targets(tmp_path / "twice.parquet", 10, "soft")
    pq.write_table(table.drop_columns(["probs"]), tmp_path / "noprobs.parquet")
    with pytest.raises(ValueError, match=r"noprobs\.parquet: selected pseudo labels have neither 'probs'"):
        student_targets(tmp_path / "noprobs.parquet", 10, "soft")
    data = selections["wds"].read_bytes()
    (tmp_path / "cut.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(ParquetReadError, match=r"cut\.parquet: not a readable Parquet file"):
        student_targets(tmp_path / "cut.parquet", 10, "soft")
