"""What every stage does at its edges: params, metrics files, MLflow runs."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pytorch
import numpy as np
import timm
import torch
import typer

import noisy_student
from noisy_student.config import Params, ParamsError, load_params
from noisy_student.data.fashion_mnist import DatasetMissingError
from noisy_student.evaluation import images_tensor  # noqa: F401  (re-exported for the stages)
from noisy_student.io import write_json

PARAMS_OPTION = typer.Option("params.yaml", "--params", help="Validated parameters file.")
MODEL_OPTION = typer.Option(..., help="Checkpoint to evaluate.")
NAME_OPTION = typer.Option(..., help="Model name for the run and metrics (teacher, it1, ...).")
METRICS_OPTION = typer.Option(..., help="Metrics JSON (DVC metric).")


def fail(message: str) -> None:
    """Print one clear message and exit non-zero (no traceback: the message says what to fix)."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def params_or_exit(path: Path, iteration: str | None = None) -> Params:
    """Validated params; with ``iteration``, that iteration's overrides merged in."""
    try:
        params = load_params(path)
        if iteration is None:
            return params
        if iteration not in params.iterations:
            raise ParamsError(f"{path}: iterations: no iteration '{iteration}' (have {list(params.iterations)})")
        return params.for_iteration(iteration)
    except ParamsError as exc:
        fail(str(exc))
        raise  # unreachable; keeps type checkers calm


@contextmanager
def friendly_errors() -> Iterator[None]:
    """Turn expected input errors into one-line messages; real bugs keep their traceback."""
    try:
        yield
    except (ParamsError, DatasetMissingError, FileNotFoundError) as exc:
        fail(str(exc))


def project_root() -> Path:
    """The project's real root, also from inside a DVC experiment's temporary workspace."""
    for var in ("NOISY_STUDENT_ROOT", "DVC_ROOT"):
        if os.environ.get(var):
            return Path(os.environ[var]).resolve()
    return Path.cwd().resolve()


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


def _git_rev() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@contextmanager
def stage_run(stage: str, params: Params, sections: tuple[str, ...], iteration: str | None = None) -> Iterator[Any]:
    """One MLflow run per stage execution, with its params, tags and the DVC experiment name."""
    mlflow.set_tracking_uri(tracking_uri())
    name = params.tracking.experiment
    if mlflow.get_experiment_by_name(name) is None:
        try:
            artifacts = (project_root() / "mlartifacts").as_uri()
            mlflow.create_experiment(name, artifact_location=artifacts)
        except mlflow.exceptions.MlflowException:
            pass  # created concurrently by another stage
    mlflow.set_experiment(name)
    dumped = params.model_dump(mode="json")
    logged = {"seed": params.seed, **flatten({k: dumped[k] for k in sections})}
    params_hash = hashlib.sha256(json.dumps(dumped, sort_keys=True).encode()).hexdigest()[:12]
    tags = {
        "stage": stage,
        "iteration": iteration or "",
        "git_rev": _git_rev(),
        "dvc_exp": os.environ.get("DVC_EXP_NAME", "workspace"),
        "params_hash": params_hash,
    }
    run_name = f"{stage}@{iteration}" if iteration else stage
    with mlflow.start_run(run_name=run_name, tags=tags) as run:
        mlflow.log_params(logged)
        yield run


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


class Timer:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return round(time.perf_counter() - self.start, 2)


def torch_threads() -> None:
    """Respect an explicit thread count; otherwise torch's default (all cores)."""
    if os.environ.get("NOISY_STUDENT_THREADS"):
        torch.set_num_threads(int(os.environ["NOISY_STUDENT_THREADS"]))
