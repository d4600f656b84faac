"""Edge inputs run through the real stages: a 1x1 image, truncated and damaged Parquet files.

Each must stop with exit code 2 and one line naming the file and the fix, writing nothing,
instead of a silently flat image or a pyarrow traceback.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import typer
import yaml
from PIL import Image

from noisy_student.console import friendly_errors
from noisy_student.data.images import ImageTooSmallError
from noisy_student.pseudo_labels.select import filter_balance_shards
from noisy_student.pseudo_labels.shards import prediction_table, shard_path, write_shard
from noisy_student.pseudo_labels.targets import ParquetReadError, student_targets
from noisy_student.robustness.loaders import load_image_folder
from tests.conftest import ROOT
from tests.test_folders import make_tree
from tests.test_prepare_folders import folders_params

NOT_PARQUET = r"not a readable Parquet file, truncated or corrupt .*rerun the `{}` stage .*`dvc checkout`"


def _stage(module: str, args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    """``python -m <module> <args>`` as DVC runs it, MLflow and the project root in ``tmp_path``."""
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "NOISY_STUDENT_ROOT": str(tmp_path),
        "NOISY_STUDENT_THREADS": "1",
    }
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True)


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
    """The stage's message: exit code 2, no traceback, one ``error:`` line (progress bars may precede it)."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), proc.stderr
    return last


def _write_png(path: Path, width: int, height: int, value: int = 200) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((height, width, 3), value, np.uint8)).save(path)


# ---- 8a: images too small to be real inputs -------------------------------------------------------------------


def test_prepare_stage_refuses_a_1x1_image_naming_file_and_size(tmp_path: Path) -> None:
    dirs = make_tree(tmp_path / "images")
    _write_png(dirs["unlabeled"] / "sub" / "pixel.png", 1, 1)  # e.g. a tracking pixel saved with the crawl
    params = folders_params(tmp_path, dirs)
    out, metrics = tmp_path / "prepared", tmp_path / "m.json"
    proc = _stage("stages.prepare", ["--params", str(params), "--out", str(out), "--metrics", str(metrics)], tmp_path)
    line = _one_line_error(proc)
    assert "sub/pixel.png: image is 1x1 px" in line and "at least 8 px" in line, line
    assert not out.exists() and not metrics.exists() and not (tmp_path / "mlflow.db").exists()


def test_release_loader_refuses_a_2x2_image_and_keeps_a_28_px_one(tmp_path: Path) -> None:
    root = tmp_path / "imagenet-a"
    _write_png(root / "n01443537" / "fine.png", 28, 28)
    images, _, _ = load_image_folder(root, size=32, channels=1)
    assert images.shape == (1, 1, 32, 32)
    _write_png(root / "n01443537" / "tiny.png", 2, 2)
    with pytest.raises(ImageTooSmallError, match=r"tiny\.png: image is 2x2 px .*at least 8 px"):
        load_image_folder(root, size=32, channels=1)


# ---- 8b: truncated / damaged Parquet files ----------------------------------------------------------------------


def _shards(folder: Path, rows: int = 60, shard_size: int = 25) -> None:
    """Prediction shards as ``predict`` writes them (its table and writer), 10 classes: one per tar of the pool."""
    rng = np.random.default_rng(0)
    labels, ids, source = rng.integers(0, 10, rows), np.arange(rows), np.full(rows, "fashion_mnist")
    probs = rng.dirichlet(np.ones(10), rows).astype(np.float32)
    folder.mkdir(parents=True)
    for j, start in enumerate(range(0, rows, shard_size)):  # 3 shards: 25, 25 and 10 rows
        sl = slice(start, start + shard_size)
        table = prediction_table(ids[sl], source[sl], labels[sl], probs[sl], f"unlabeled-{j:06d}.tar")
        write_shard(shard_path(folder, j), table, {"shard": j})


def _truncate(path: Path) -> None:
    """Cut a file to half its length, as an interrupted copy or a full disk leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _filter_stage(tmp_path: Path, predictions: Path) -> tuple[subprocess.CompletedProcess, dict[str, Path]]:
    raw: dict[str, Any] = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["device"] = "cpu"
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    outs = {name: tmp_path / name for name in ("selected.parquet", "filter.json", "c.png", "c.csv")}
    args = ["--iteration", "it1", "--params", str(params), "--predictions", str(predictions)]
    args += ["--out", str(outs["selected.parquet"]), "--metrics", str(outs["filter.json"])]
    args += ["--plot", str(outs["c.png"]), "--classes-csv", str(outs["c.csv"])]
    return _stage("stages.filter_balance", args, tmp_path), outs


def test_filter_balance_stage_on_a_truncated_shard_names_it(tmp_path: Path) -> None:
    predictions = tmp_path / "predictions"
    _shards(predictions)
    _truncate(predictions / "part-00001.parquet")
    proc, outs = _filter_stage(tmp_path, predictions)
    line = _one_line_error(proc)
    assert "part-00001.parquet: not a readable Parquet file" in line, line
    assert re.search(NOT_PARQUET.format("predict"), line), line
    assert not any(path.exists() for path in outs.values())
    assert not (tmp_path / "mlflow.db").exists()  # stopped before an MLflow run was opened


def test_filter_balance_on_a_shard_damaged_inside_names_it(tmp_path: Path) -> None:
    """Pages overwritten behind an intact footer: the listing passes, reading the columns fails."""
    predictions = tmp_path / "predictions"
    _shards(predictions)
    shard = predictions / "part-00002.parquet"
    data = bytearray(shard.read_bytes())
    data[4:400] = b"\xff" * 396  # the first column chunks, right after the leading magic bytes
    shard.write_bytes(bytes(data))
    pq.read_metadata(shard)  # the footer still reads
    out = tmp_path / "selected.parquet"
    with pytest.raises(ParquetReadError, match=r"part-00002\.parquet: " + NOT_PARQUET.format("predict")):
        filter_balance_shards(predictions, out, None, 0.0, 10, True, seed=0)
    assert not out.exists() and not list(tmp_path.glob(".selected.parquet.*"))


def test_student_targets_on_a_truncated_selection_names_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    predictions = tmp_path / "predictions"
    _shards(predictions)
    selected = tmp_path / "selected.parquet"
    filter_balance_shards(predictions, selected, 10, 0.0, 10, True, seed=0)
    _truncate(selected)
    with pytest.raises(ParquetReadError, match=r"selected\.parquet: " + NOT_PARQUET.format("filter-balance")):
        student_targets(selected, 10, "soft")
    # the student stage wraps this call in friendly_errors(ValueError): exit 2 and one line
    with pytest.raises(typer.Exit) as exit_info, friendly_errors(ValueError):
        student_targets(selected, 10, "soft")
    assert exit_info.value.exit_code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "selected.parquet: not a readable Parquet" in err[0]


# ---- streamed tars: a truncated tar in the unlabeled pool ---------------------------------------------------------


def test_predict_stage_on_a_truncated_tar_names_it_and_keeps_the_other_tars(tmp_path: Path) -> None:
    import torch

    from noisy_student.config import ModelParams
    from noisy_student.models import create_classifier, save_checkpoint
    from tests.test_predict_wds import _pool, write_wds_folder

    pool = tmp_path / "unlabeled.wds"
    write_wds_folder(pool, _pool(), 32)  # 4 tars: 32, 32, 32, 4 samples
    _truncate(pool / "unlabeled-000002.tar")  # an interrupted copy
    torch.manual_seed(0)
    model, spec = create_classifier(ModelParams(arch="test_resnet"), 10, 1, (0.5,), (0.25,))
    save_checkpoint(tmp_path / "teacher.pt", model, spec, {"name": "teacher"})
    raw: dict[str, Any] = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["device"], raw["pseudo_labels"]["batch_size"] = "cpu", 16
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    out = tmp_path / "predictions"
    args = ["--iteration", "it1", "--teacher", str(tmp_path / "teacher.pt"), "--unlabeled", str(pool)]
    args += ["--out", str(out), "--metrics", str(tmp_path / "predict.json"), "--params", str(params)]
    line = _one_line_error(_stage("stages.predict", args, tmp_path))
    assert "unlabeled-000002.tar" in line, line
    # nothing of the damaged tar and no metrics are accepted; the tars labelled before it stay, so a rerun
    # after `dvc checkout` (or a new copy) labels only what is missing
    assert not shard_path(out, 2).exists() and not (tmp_path / "predict.json").exists()
    assert {p.name for p in out.glob("part-*.parquet")} <= {shard_path(out, j).name for j in (0, 1, 3)}
