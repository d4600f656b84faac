"""The MLflow edge every stage shares: where the store is, one run per stage execution, metrics, models.

The library's other modules never import MLflow; stages call these helpers
with the results the library returned.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch

from noisy_student.config import Params
from noisy_student.io import write_json
from noisy_student.paths import project_root, run_name


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` when set, else a SQLite store ``mlflow.db`` at the project root."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / 'mlflow.db'}"


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> dotted keys (``noise.randaugment_magnitude``)."""
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: data}


def experiment_name() -> str:
    """The DVC experiment this process runs in (``workspace`` for a plain ``dvc repro``): the ``dvc_exp`` tag."""
    return os.environ.get("DVC_EXP_NAME", "workspace")


def _git_rev() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _settle_unfinished_runs(experiment_id: str, name: str, resume_key: str | None) -> str | None:
    """Runs of this stage that a killed process left RUNNING: the one to continue, the others marked KILLED.

    A run is continued when it carries the same ``resume_key`` (the training resumes from that run's
    state, so its metric history continues where it stopped); a run whose process still lives (on
    this host) is left alone.
    """
    client = mlflow.MlflowClient()
    exp = experiment_name().replace("'", "\\'")
    found = client.search_runs(
        [experiment_id],
        filter_string=f"attributes.run_name = '{name}' and tags.dvc_exp = '{exp}' and attributes.status = 'RUNNING'",
        order_by=["attributes.start_time DESC"],
    )
    resume = None
    for run in found:
        tags = run.data.tags
        pid = int(tags.get("pid", "0") or 0)
        if tags.get("host") == socket.gethostname() and pid and _alive(pid):
            continue
        if resume is None and resume_key is not None and tags.get("resume_key") == resume_key:
            resume = run.info.run_id
        else:
            client.set_terminated(run.info.run_id, status="KILLED")
    return resume


@contextmanager
def stage_run(
    stage: str, params: Params, sections: tuple[str, ...], target: str | None = None, resume_key: str | None = None
) -> Iterator[Any]:
    """One MLflow run per stage execution, with its params, tags and the DVC experiment name.

    ``target``: the iteration or model the stage ran for (part of the run name, :func:`paths.run_name`).
    ``resume_key``: a training run's resume key; a run with the same key that a killed process left
    RUNNING is continued instead of starting a new one, so a resumed training has one continuous
    history. Other runs of this stage left RUNNING by dead processes are marked KILLED.
    """
    mlflow.set_tracking_uri(tracking_uri())
    name = params.tracking.experiment
    if mlflow.get_experiment_by_name(name) is None:
        try:
            artifacts = (project_root() / "mlartifacts").as_uri()
            mlflow.create_experiment(name, artifact_location=artifacts)
        except mlflow.exceptions.MlflowException:
            pass  # created concurrently by another stage
    experiment = mlflow.set_experiment(name)
    dumped = params.model_dump(mode="json")
    logged = {"seed": params.seed, **flatten({k: dumped[k] for k in sections})}
    params_hash = hashlib.sha256(json.dumps(dumped, sort_keys=True).encode()).hexdigest()[:12]
    tags = {
        "stage": stage,
        "iteration": target or "",
        "git_rev": _git_rev(),
        "dvc_exp": experiment_name(),
        "params_hash": params_hash,
        "host": socket.gethostname(),
        "pid": str(os.getpid()),
        **({"resume_key": resume_key} if resume_key else {}),
    }
    resume = _settle_unfinished_runs(experiment.experiment_id, run_name(stage, target), resume_key)
    with mlflow.start_run(run_id=resume, run_name=None if resume else run_name(stage, target), tags=tags) as run:
        mlflow.log_params(logged)
        yield run


def log_history(record: dict[str, float]) -> None:
    """One epoch's record (``epoch`` + scalars) as MLflow metrics at step ``epoch``."""
    mlflow.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=int(record["epoch"]))


def log_artifacts(folder: str, *paths: Path) -> None:
    """Files into one artifact folder of the active run."""
    for path in paths:
        mlflow.log_artifact(str(path), folder)


def write_metrics(path: Path, metrics: dict[str, Any]) -> None:
    """Metrics JSON for DVC (atomic) and the same scalars to the active MLflow run."""
    write_json(path, metrics)
    scalars = {
        k: float(v) for k, v in flatten(metrics).items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    if mlflow.active_run() is not None and scalars:
        mlflow.log_metrics(scalars)


def log_model(
    model: torch.nn.Module, checkpoint: Path, input_shape: tuple[int, int, int], registered_name: str | None = None
) -> None:
    """Log the trained network as an MLflow PyTorch model (and register it when a name is given).

    The DVC-tracked checkpoint (weights + construction spec) goes along as an
    artifact, so the MLflow run alone is enough to rebuild the model.
    """
    import mlflow.pytorch  # slow to import; only the student stage needs it
    import timm

    import noisy_student

    mlflow.log_artifact(str(checkpoint), "checkpoint")
    model = model.cpu().eval()
    mlflow.pytorch.log_model(
        model,
        name="model",
        # pickle + this package as code: MLflow's default 'pt2' export fixes the batch size
        # to the example's; the pickled module serves any batch
        serialization_format="pickle",
        code_paths=[str(Path(noisy_student.__file__).parent)],
        input_example=np.zeros((2, *input_shape), np.float32),  # (B, C, H, W) floats in 0..1
        # explicit requirements: inferring them imports the whole environment (slow, noisy)
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"timm=={timm.__version__}"],
        registered_model_name=registered_name,
    )
