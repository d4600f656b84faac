"""End to end on streamed tars: a real `dvc repro` with `data.residency: stream` and 2 processes for
teacher, predict and student (torchrun, gloo on CPU), a real MLflow store."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import mlflow
import pyarrow.parquet as pq
import pytest
import yaml

from noisy_student.data.wds import load_imageset, read_info
from tests.conftest import FASHION_MNIST, ROOT, make_project, micro_params, run

DVC = [sys.executable, "-m", "dvc"]


@pytest.mark.slow
def test_repro_on_shards_with_two_processes(tmp_path: Path) -> None:
    if not FASHION_MNIST.is_dir():
        pytest.fail(f"{FASHION_MNIST} missing: the test setup installs dataset-fashion-mnist (make test)")
    p = micro_params(yaml.safe_load((ROOT / "params.yaml").read_text()))
    p["data"].update(residency="stream", wds_shard_size=48, workers=0)  # 100 labeled -> 3 tars: every rank reads one
    p["distributed"] = {"processes": 2, "sync_batchnorm": False}
    repo = make_project(tmp_path, p)
    # the store named explicitly: a test that called mlflow.set_tracking_uri leaves it in the environment
    env = {"NOISY_STUDENT_THREADS": "2", "MLFLOW_TRACKING_URI": f"sqlite:///{repo / 'mlflow.db'}"}
    # the stages that read the tars: eval-A and eval-P read the arrays robustness-data (run for eval-C) writes
    targets = ["eval@teacher", "eval@it1", "eval-C@teacher", "eval-C@it1", "eval-FGSM@it1"]
    proc = run(DVC + ["repro", *targets], repo, env=env)

    prepared = repo / "data" / "prepared"
    for split, n in (("labeled", 100), ("unlabeled", 340), ("test", 200)):
        assert read_info(prepared / f"{split}.wds").num_samples == n
    # the three training-side stages ran as two torchrun ranks
    for module in ("stages.teacher", "stages.predict", "stages.student"):
        assert f"--nproc_per_node=2 -m {module}" in proc.stderr, f"{module} did not start 2 ranks:\n{proc.stderr}"

    # predictions: one Parquet file per unlabeled tar, every row with its image id and its tar
    tars = read_info(prepared / "unlabeled.wds").filenames
    parts = sorted((repo / "data" / "pseudo" / "it1" / "predictions").glob("part-*.parquet"))
    assert len(parts) == len(tars)
    pool = load_imageset(prepared / "unlabeled.wds")
    for j, part in enumerate(parts):
        table = pq.read_table(part)
        assert set(table["shard"].to_pylist()) == {tars[j]}
        assert "key" not in table.column_names  # the join is by id
    assert sum(pq.ParquetFile(f).metadata.num_rows for f in parts) == len(pool)
    selected = pq.read_table(repo / "data" / "pseudo" / "it1" / "selected.parquet")
    assert {"id", "shard", "copies"} <= set(selected.column_names)

    student = json.loads((repo / "metrics" / "student-it1.json").read_text())
    assert student["pseudo_labeled_rows"] == int(sum(selected["copies"].to_pylist())) > 0
    for model in ("teacher", "it1"):
        acc = json.loads((repo / "metrics" / f"eval-{model}.json").read_text())
        assert acc["images"] == 200 and 0.0 <= acc["top1"] <= acc["top5"] <= 1.0
        assert json.loads((repo / "metrics" / "robustness" / f"c-{model}.json").read_text())["mce"] > 0
    assert json.loads((repo / "metrics" / "robustness" / "fgsm-it1.json").read_text())["fgsm_top1_eps0"] >= 0

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    exp = client.get_experiment_by_name("noisy-student")
    assert exp is not None
    names = [r.info.run_name for r in client.search_runs([exp.experiment_id], max_results=1000)]
    for stage in ("teacher", "predict@it1", "student@it1"):
        assert names.count(stage) == 1, names  # rank 0 alone opens the stage's MLflow run

    assert "Stage 'student@it1' didn't change" in run(DVC + ["repro", *targets], repo, env=env).stdout
