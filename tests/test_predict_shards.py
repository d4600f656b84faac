"""Sharded `predict`: --shard jobs and torchrun ranks write what one plain run writes; reruns skip finished shards."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from noisy_student.config import ModelParams, NoiseParams, PseudoLabelParams
from noisy_student.data import ImageSet, save_imageset
from noisy_student.models import create_classifier, save_checkpoint
from noisy_student.pseudo_labels.predict import (
    PredictInputs,
    ShardJob,
    load_predict_inputs,
    parse_shard,
    predict_pseudo_labels,
)
from noisy_student.pseudo_labels.shards import key_path, load_pool, shard_path
from tests.conftest import ROOT, stage_env
from tests.test_pseudo_label_stages import predict_stage_error

POOL, SHARD_SIZE, BATCH = 200, 50, 16  # 4 tars (input shards); each labelled in batches of 16, 16, 16, 2
CPU = torch.device("cpu")
PL = PseudoLabelParams(batch_size=BATCH)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 200-image pool (20 out of domain) in 4 tars of 50, two tiny teachers (another's weights), params."""
    root = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(0)
    labels = np.concatenate([rng.integers(0, 10, POOL - 20), np.full(20, -1)])
    pool = ImageSet(
        rng.integers(0, 256, (POOL, 28, 28), dtype=np.uint8),
        labels,
        np.arange(7000, 7000 + POOL),
        np.where(labels < 0, "digits", "fashion_mnist"),
    )
    save_imageset(root / "unlabeled.wds", pool, shard_size=SHARD_SIZE)
    noise = NoiseParams(randaugment_num_ops=1, crop_padding=1, dropout=0.3, stochastic_depth=0.1)
    for name, seed in (("teacher", 0), ("other", 1)):
        torch.manual_seed(seed)
        model, spec = create_classifier(ModelParams(arch="test_resnet"), 10, 1, (0.5,), (0.25,))
        save_checkpoint(root / f"{name}.pt", model, spec, {"name": name, "noise": noise.model_dump()})
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params.update(device="cpu", precision="fp32")
    params["data"]["wds_shard_size"] = SHARD_SIZE  # what prepare would have written the pool with
    params["pseudo_labels"]["batch_size"] = BATCH
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def _args(inputs: Path, work: Path, *extra: str) -> list[str]:
    return [
        *("--iteration", "it1", "--params", str(inputs / "params.yaml"), "--teacher", str(inputs / "teacher.pt")),
        *("--unlabeled", str(inputs / "unlabeled.wds"), "--out", str(work / "predictions")),
        *("--metrics", str(work / "predict.json"), *extra),
    ]


def _env(work: Path) -> dict[str, str]:
    # the venv first on PATH: torchrun's workers and `python` are this interpreter
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, **stage_env(work), "PATH": path}


def _start(inputs: Path, work: Path, *extra: str, launcher: tuple[str, ...] = (sys.executable,)) -> subprocess.Popen:
    work.mkdir(exist_ok=True)
    cmd = [*launcher, "-m", "stages.predict", *_args(inputs, work, *extra)]
    return subprocess.Popen(cmd, cwd=ROOT, env=_env(work), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait(*procs: subprocess.Popen) -> list[str]:
    """Wait for every process; their stdout (the stage's summary line), failing with their output on an error."""
    outs = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stdout + stderr
        outs.append(stdout)
    return outs


def _metrics(work: Path) -> dict:
    return json.loads((work / "predict.json").read_text())


def _assert_same_folder(folder: Path, reference: Path) -> None:
    """Same files (shards and their keys, nothing else), the same tables, the same bytes."""
    assert sorted(os.listdir(folder)) == sorted(os.listdir(reference))
    for name in sorted(os.listdir(reference)):
        if name.endswith(".parquet"):
            assert pq.read_table(folder / name).equals(pq.read_table(reference / name), check_metadata=True), name
            assert pq.read_table(folder / name).to_pandas().equals(pq.read_table(reference / name).to_pandas())
        assert (folder / name).read_bytes() == (reference / name).read_bytes(), name


@pytest.fixture(scope="module")
def reference(inputs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One plain run (no --shard, no torchrun) of the stage."""
    work = tmp_path_factory.mktemp("plain")
    (out,) = _wait(_start(inputs, work))
    assert "labelled 4 shards (200 images), 0 already written" in out
    parts = [f"part-{j:05d}.parquet" for j in range(4)]
    assert sorted(os.listdir(work / "predictions")) == sorted(parts + [f".{name}.key" for name in parts])
    return work


def test_shard_jobs_then_a_plain_run_equal_one_plain_run(inputs: Path, reference: Path, tmp_path: Path) -> None:
    work = tmp_path / "jobs"
    # both jobs at once into one folder, the second one started first
    outs = _wait(_start(inputs, work, "--shard", "1/2"), _start(inputs, work, "--shard", "0/2"))
    assert all("labelled 2 shards (100 images), 0 already written" in out for out in outs), outs
    predictions = work / "predictions"
    assert sorted(p.name for p in predictions.glob("part-*.parquet")) == [f"part-{j:05d}.parquet" for j in range(4)]
    # a job does nothing else: no metrics, no MLflow run
    assert not (work / "predict.json").exists() and not (work / "mlflow.db").exists()
    (out,) = _wait(_start(inputs, work))
    assert "labelled 0 shards (0 images), 4 already written" in out
    _assert_same_folder(predictions, reference / "predictions")
    merged, plain = _metrics(work), _metrics(reference)
    assert (merged["shards"], merged["shards_written"], merged["shards_skipped"]) == (4, 0, 4)
    assert (plain["shards"], plain["shards_written"], plain["shards_skipped"]) == (4, 4, 0)
    # computed from the files other jobs wrote: the same numbers as the plain run's
    for name in ("images", "pseudo_label_accuracy", "mean_confidence_in_domain", "mean_confidence_out_of_domain"):
        assert merged[name] == plain[name], name
    assert merged["images"] == POOL and merged["images_per_second"] == 0.0  # it labelled nothing itself


def test_two_torchrun_ranks_equal_one_process(inputs: Path, reference: Path, tmp_path: Path) -> None:
    torchrun = (str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", "2", "--standalone")
    (out,) = _wait(_start(inputs, tmp_path, launcher=torchrun))
    assert "labelled 4 shards (200 images), 0 already written" in out  # counted over both ranks, printed once
    assert out.count("predict: labelled") == 1
    _assert_same_folder(tmp_path / "predictions", reference / "predictions")
    metrics = _metrics(tmp_path)
    assert (metrics["shards_written"], metrics["shards_skipped"]) == (4, 0)
    assert metrics["pseudo_label_accuracy"] == _metrics(reference)["pseudo_label_accuracy"]


def _predict(inputs: PredictInputs, out: Path, pl: PseudoLabelParams = PL, job: ShardJob = ShardJob(), seed: int = 30):
    return predict_pseudo_labels(inputs, out, pl, CPU, seed, job)


def test_rerun_skips_finished_shards_and_rewrites_damaged_or_stale_ones(
    inputs: Path, reference: Path, tmp_path: Path, one_thread: None
) -> None:
    ref = reference / "predictions"
    out = tmp_path / "predictions"
    shutil.copytree(ref, out)
    teacher = load_predict_inputs(inputs / "teacher.pt", inputs / "unlabeled.wds", PL)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    done = _predict(teacher, out)
    assert (done.written, done.skipped, done.images) == (0, 4, 0)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # nothing rewritten
    assert (
        done.metrics is not None
        and done.metrics["pseudo_label_accuracy"] == _metrics(reference)["pseudo_label_accuracy"]
    )

    # truncated; damaged inside (footer intact, same size); written without its key (killed between the two)
    data = shard_path(out, 1).read_bytes()
    shard_path(out, 1).write_bytes(data[: len(data) // 2])
    damaged = bytearray(shard_path(out, 2).read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    shard_path(out, 2).write_bytes(bytes(damaged))
    key_path(shard_path(out, 3)).unlink()
    # left over: a shard of an earlier, larger pool with its key, a killed writer's temp file
    shutil.copy(shard_path(out, 0), shard_path(out, 7))
    shutil.copy(key_path(shard_path(out, 0)), key_path(shard_path(out, 7)))
    (out / ".part-00000.parquet.abc123.tmp").write_bytes(b"partial")
    done = _predict(teacher, out)
    assert (done.written, done.skipped) == (3, 1)
    _assert_same_folder(out, ref)

    # another teacher, other params: every shard is stale and rewritten, and back again
    other = load_predict_inputs(inputs / "other.pt", inputs / "unlabeled.wds", PL)
    assert _predict(other, out).written == 4
    assert not pq.read_table(shard_path(out, 0)).equals(pq.read_table(shard_path(ref, 0)))
    assert _predict(teacher, out, PL.model_copy(update={"temperature": 2.0})).written == 4
    assert _predict(teacher, out, PL.model_copy(update={"top_k": 3})).written == 4
    assert _predict(teacher, out).written == 4
    _assert_same_folder(out, ref)


def test_noised_teacher_draws_per_shard_whichever_job_labels_it(inputs: Path, tmp_path: Path, one_thread: None) -> None:
    pl = PL.model_copy(update={"noised_teacher": True})
    noised = load_predict_inputs(inputs / "teacher.pt", inputs / "unlabeled.wds", pl)
    # jobs 1/3 and 0/3 (a shard of them twice: rerun) then the merge, against one plain run
    for job in (ShardJob((1, 3)), ShardJob((0, 3)), ShardJob((0, 3))):
        assert _predict(noised, tmp_path / "jobs", pl, job).metrics is None
    assert _predict(noised, tmp_path / "jobs", pl).written == 1  # shard 2 (j % 3 == 2) was nobody's yet
    _predict(noised, tmp_path / "plain", pl)
    _assert_same_folder(tmp_path / "jobs", tmp_path / "plain")
    # seeded: another seed draws other noise, and rewrites every shard (the seed is in the noised key)
    assert _predict(noised, tmp_path / "plain", pl, seed=31).written == 4
    assert not pq.read_table(shard_path(tmp_path / "plain", 0)).equals(pq.read_table(shard_path(tmp_path / "jobs", 0)))


def test_shard_assignment(tmp_path: Path) -> None:
    # input shard j is the pool's j-th tar, the last one short
    pool = ImageSet(np.zeros((203, 2, 2), np.uint8), np.zeros(203, np.int64), np.arange(203), np.full(203, "x"))
    save_imageset(tmp_path / "unlabeled.wds", pool, shard_size=50)
    tars = load_pool(tmp_path / "unlabeled.wds").shards
    assert [(s.index, s.file, len(s)) for s in tars] == [
        (0, "unlabeled-000000.tar", 50),
        (1, "unlabeled-000001.tar", 50),
        (2, "unlabeled-000002.tar", 50),
        (3, "unlabeled-000003.tar", 50),
        (4, "unlabeled-000004.tar", 3),
    ]
    assert [batch.ids.tolist() for batch in tars[4].batches(2)] == [[200, 201], [202]]
    empty = ImageSet(pool.images[:0], pool.labels[:0], pool.ids[:0], pool.source[:0])
    with pytest.raises(ValueError, match="no sample to write"):  # a pool of no images has no tar to label
        save_imageset(tmp_path / "empty.wds", empty, shard_size=50)
    assert ShardJob().shards(5) == [0, 1, 2, 3, 4]
    assert ShardJob((1, 3)).shards(10) == [1, 4, 7]
    assert [ShardJob(rank=r, world=2).shards(5) for r in (0, 1)] == [[0, 2, 4], [1, 3]]
    assert [ShardJob((1, 3), r, 2).shards(10) for r in (0, 1)] == [[1, 7], [4]]  # a job's shards split over ranks
    assert ShardJob().merges and not ShardJob((0, 1)).merges and not ShardJob(rank=1, world=2).merges
    assert parse_shard("0/1") == (0, 1) and parse_shard(" 3/4") == (3, 4)


@pytest.mark.parametrize("text", ["2/2", "x/2", "0/0", "-1/2", "1", "1/2/3", ""])
def test_bad_shard_option_is_a_clear_error(
    text: str, inputs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValueError, match=rf"--shard: got '{text}'; expected i/N, .*0 <= i < N"):
        parse_shard(text)
    err = predict_stage_error(inputs, tmp_path, inputs / "params.yaml", monkeypatch, capsys, shard=text)
    assert f"error: --shard: got '{text}'; expected i/N" in err
    assert not (tmp_path / "predictions").exists() and not (tmp_path / "mlflow.db").exists()
