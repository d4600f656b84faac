"""Where the MLflow store is, the experiment every run goes to, and one lock for read-then-write sequences."""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow

from noisy_student.paths import project_root

# MLflow 3's experiment type: "custom_model_development" is the UI's "Machine learning" kind (runs, metrics,
# models), as opposed to "genai_development" (traces); MLflow's own experiment-kind selector writes this tag
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_KIND = "custom_model_development"


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


def ensure_experiment(name: str) -> str:
    """The id of MLflow experiment ``name``, created if absent, tagged as a training (not GenAI) experiment.

    Experiments made before the tag existed get it too, unless someone chose a kind explicitly (MLflow's
    own guesses end in ``_inferred`` and are replaced).
    """
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            artifacts = (project_root() / "mlartifacts").as_uri()
            client.create_experiment(name, artifact_location=artifacts, tags={EXPERIMENT_KIND_TAG: TRAINING_KIND})
        except mlflow.exceptions.MlflowException:
            pass  # created concurrently by another stage
        experiment = client.get_experiment_by_name(name)
        assert experiment is not None, f"MLflow experiment {name!r} could not be created"
    kind = experiment.tags.get(EXPERIMENT_KIND_TAG)
    if kind is None or kind.endswith("_inferred"):
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)
    return experiment.experiment_id


def training_runs_url(base_url: str, experiment: str) -> str:
    """The UI address of ``experiment``'s runs table on the model-training side.

    MLflow 3's UI follows a per-browser GenAI / Model training switch (GenAI at first) over the
    experiment's kind tag; ``workflowType=machine_learning`` in the address selects the training side
    and the browser remembers it.
    """
    mlflow.set_tracking_uri(tracking_uri())
    return f"{base_url.rstrip('/')}/#/experiments/{ensure_experiment(experiment)}/runs?workflowType=machine_learning"


@contextmanager
def store_lock() -> Iterator[None]:
    """Hold an exclusive lock shared by every process of this machine that writes to the same store.

    Search-then-create (a pipeline's parent run) and read-compare-write (the champion alias) are not
    atomic in MLflow; queued experiments (``dvc queue start -j 2``) run their stages at the same time.
    The lock file lives in the temp folder, keyed by the store's URI, so the project gets no new file.
    """
    key = hashlib.sha256(tracking_uri().encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / f"noisy-student-mlflow-{key}.lock"
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
