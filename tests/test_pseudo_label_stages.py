"""`predict` -> `filter-balance` -> the student's targets, as processes, with and without `pseudo_labels.top_k`.

The pool is ``unlabeled.wds``: 90 images in tars of 32 (32, 32, 26), labelled in batches of 16 from each
tar's first image, which are the batches of one pass over the whole pool.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import typer
import yaml

from noisy_student.config import ModelParams, NoiseParams, PseudoLabelParams
from noisy_student.data import ImageSet, load_imageset, save_imageset
from noisy_student.evaluation import images_tensor, predict_logits
from noisy_student.models import create_classifier, load_classifier, save_checkpoint
from noisy_student.pseudo_labels.predict import load_predict_inputs, predict_pseudo_labels
from noisy_student.pseudo_labels.shards import prediction_table
from noisy_student.pseudo_labels.targets import TOPK_CLASSES, TOPK_PROBS, selected_targets, softmax, student_targets

ROOT = Path(__file__).resolve().parents[1]
POOL, TAR, BATCH = 90, 32, 16  # 3 tars, a multiple of the batch: tar batches are one pass's batches


def _stage(module: str, args: list[str], cwd: Path) -> None:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlflow.db'}", "NOISY_STUDENT_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random teacher and a 90-image unlabeled pool (10 out of domain) in 3 tars, unlabeled.wds."""
    root = tmp_path_factory.mktemp("stages")
    rng = np.random.default_rng(0)
    labels = np.concatenate([rng.integers(0, 10, POOL - 10), np.full(10, -1)])
    pool = ImageSet(
        rng.integers(0, 256, (POOL, 28, 28), dtype=np.uint8),
        labels,
        np.arange(1000, 1000 + POOL),
        np.where(labels < 0, "digits", "fashion_mnist"),
    )
    save_imageset(root / "unlabeled.wds", pool, shard_size=TAR)
    model, spec = create_classifier(ModelParams(arch="test_resnet"), 10, 1, (0.5,), (0.25,))
    save_checkpoint(root / "teacher.pt", model, spec, {"name": "teacher"})
    return root


def _run(root: Path, top_k: int | None) -> Path:
    work = root / f"k{top_k}"
    work.mkdir()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["device"] = "cpu"
    # tars of 32 (the last one 26: a short batch) labelled in batches of 16
    params["data"]["wds_shard_size"] = TAR
    params["pseudo_labels"].update(top_k=top_k, batch_size=BATCH)
    params["filter"].update(confidence_threshold=0.0, images_per_class=12)
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    common = ["--iteration", "it1", "--params", str(work / "params.yaml")]
    _stage(
        "stages.predict",
        [*common, "--teacher", str(root / "teacher.pt"), "--unlabeled", str(root / "unlabeled.wds")]
        + ["--out", str(work / "predictions"), "--metrics", str(work / "predict.json")],
        work,
    )
    _stage(
        "stages.filter_balance",
        [*common, "--predictions", str(work / "predictions"), "--out", str(work / "selected.parquet")]
        + ["--metrics", str(work / "filter.json"), "--plot", str(work / "c.png"), "--classes-csv", str(work / "c.csv")],
        work,
    )
    return work


@pytest.fixture(scope="module")
def runs(inputs: Path) -> dict[int | None, Path]:
    """Both stages run once per top_k setting, shared by the tests below."""
    return {k: _run(inputs, k) for k in (None, 3)}


def predict_stage_error(
    inputs: Path,
    tmp_path: Path,
    params_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    **options: object,
) -> str:
    """Run the predict stage in-process on ``inputs`` (teacher.pt, unlabeled.wds); assert exit 2; its stderr."""
    from stages.predict import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    with pytest.raises(typer.Exit) as exit_info:
        main(
            iteration="it1",
            teacher=inputs / "teacher.pt",
            unlabeled=inputs / "unlabeled.wds",
            out=tmp_path / "predictions",
            metrics=tmp_path / "predict.json",
            params_file=params_file,
            **options,
        )
    assert exit_info.value.exit_code == 2
    return capsys.readouterr().err


def test_top_k_flows_from_predict_to_the_student_targets(runs: dict[int | None, Path]) -> None:
    full, top3 = runs[None], runs[3]
    assert len(list((full / "predictions").glob("part-*.parquet"))) == 3  # one per tar: 90 images / 32
    full_table, top_table = pq.read_table(full / "selected.parquet"), pq.read_table(top3 / "selected.parquet")
    assert "probs" in full_table.column_names and TOPK_PROBS not in full_table.column_names
    assert {TOPK_PROBS, TOPK_CLASSES} <= set(top_table.column_names) and "probs" not in top_table.column_names
    # the selection reads only pred/confidence, which top_k does not change: same rows, same copies
    assert full_table.select(["id", "pred", "confidence", "copies", "shard"]).equals(
        top_table.select(["id", "pred", "confidence", "copies", "shard"])
    )
    # every selected row names the tar it came from
    tars = [f"unlabeled-{(i - 1000) // TAR:06d}.tar" for i in full_table["id"].to_pylist()]
    assert full_table["shard"].to_pylist() == tars
    ids, copies, probs = selected_targets(full_table, 10)
    ids3, copies3, probs3 = selected_targets(top_table, 10)
    np.testing.assert_array_equal(ids, ids3)
    np.testing.assert_array_equal(copies, copies3)
    np.testing.assert_array_equal(probs3.argmax(1), probs.argmax(1))
    assert ((probs3 > 0).sum(1) <= 3).all()
    np.testing.assert_allclose(probs3.sum(1), 1.0, rtol=1e-6)
    # the student's targets: the same images in the same tars, the renormalised top-3 as its soft targets
    chosen, chosen3 = (student_targets(work / "selected.parquet", 10, "soft")[0] for work in (full, top3))
    np.testing.assert_array_equal(chosen.ids, chosen3.ids)
    np.testing.assert_array_equal(chosen.shards, chosen3.shards)
    np.testing.assert_array_equal(chosen3.targets, probs3)
    # the 3 kept entries keep the teacher's proportions
    top = np.sort(probs, axis=1)[:, ::-1][:, :3]
    np.testing.assert_allclose(np.sort(probs3, axis=1)[:, ::-1][:, :3], top / top.sum(1, keepdims=True), rtol=1e-5)


def test_streamed_predict_writes_what_one_pass_over_the_pool_writes(
    inputs: Path, runs: dict[int | None, Path], one_thread: None
) -> None:
    work = runs[None]
    model, _, _ = load_classifier(inputs / "teacher.pt")
    pool = load_imageset(inputs / "unlabeled.wds")
    assert len(pool) == POOL
    # the stage before streaming: all logits at once in batches of 16, then one table per tar's rows
    probs = softmax(predict_logits(model, images_tensor(pool.images), BATCH, torch.device("cpu"), progress=False))
    for shard, start in enumerate(range(0, len(pool), TAR)):
        sl = slice(start, start + TAR)
        tar = f"unlabeled-{shard:06d}.tar"
        expected = prediction_table(pool.ids[sl], pool.source[sl], pool.labels[sl], probs[sl], tar)
        assert pq.read_table(work / "predictions" / f"part-{shard:05d}.parquet").equals(expected)


def _teacher(path: Path, meta: dict) -> Path:
    model, spec = create_classifier(ModelParams(arch="test_resnet"), 10, 1, (0.5,), (0.25,))
    save_checkpoint(path, model, spec, meta)
    return path


def test_noised_teacher_labels_with_the_noise_saved_in_its_checkpoint(
    inputs: Path, tmp_path: Path, one_thread: None
) -> None:
    noise = NoiseParams(randaugment_num_ops=1, crop_padding=1, dropout=0.3, stochastic_depth=0.1)
    checkpoint = _teacher(tmp_path / "noised.pt", {"name": "teacher", "noise": noise.model_dump()})
    pl = PseudoLabelParams(noised_teacher=True, batch_size=BATCH)
    loaded = load_predict_inputs(checkpoint, inputs / "unlabeled.wds", pl)
    # the checkpoint's noise, not whatever teacher.noise / noise say now
    assert loaded.noise == noise
    assert loaded.teacher.net.drop_rate == 0.3
    drop_paths = [m.drop_prob for m in loaded.teacher.modules() if type(m).__name__ == "DropPath"]
    assert drop_paths and max(drop_paths) == pytest.approx(0.1)
    # seeded: the same seed draws the same augmentation and dropout, another seed other ones
    tables = []
    for seed, name in ((30, "a"), (30, "b"), (31, "c")):
        predict_pseudo_labels(loaded, tmp_path / name, pl, torch.device("cpu"), seed)
        tables.append(pq.read_table(tmp_path / name))
    assert tables[0].equals(tables[1]) and not tables[0].equals(tables[2])
    # the un-noised teacher ignores the checkpoint's noise
    plain = load_predict_inputs(checkpoint, inputs / "unlabeled.wds", PseudoLabelParams())
    assert plain.noise is None and plain.teacher.net.drop_rate == 0.0


def test_noised_teacher_without_saved_noise_stops_naming_the_checkpoint(
    inputs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pl = PseudoLabelParams(noised_teacher=True)
    with pytest.raises(ValueError, match=r"teacher\.pt: the teacher was saved without its training noise; retrain it"):
        load_predict_inputs(inputs / "teacher.pt", inputs / "unlabeled.wds", pl)
    assert load_predict_inputs(inputs / "teacher.pt", inputs / "unlabeled.wds", PseudoLabelParams()).noise is None
    # the stage: one line, exit code 2, before an MLflow run or any output
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["pseudo_labels"]["noised_teacher"] = True
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    err = predict_stage_error(inputs, tmp_path, tmp_path / "params.yaml", monkeypatch, capsys)
    assert "saved without its training noise; retrain it" in err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "predictions").exists()
