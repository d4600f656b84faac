"""The MLflow edge every stage shares; the library's other modules never import MLflow.

Stages call these helpers with the results the library returned:

- :mod:`.store` where the store is, the experiment (a training experiment), a lock for read-then-write steps;
- :mod:`.runs` one run per stage execution, metrics, artifacts, input datasets, checkpoint hashes as tags;
- :mod:`.pipeline` one parent run per pipeline run (``dvc repro`` / ``dvc exp run``) with its headline metrics;
- :mod:`.dvclock` content hashes and up-to-date results from ``dvc.lock``;
- :mod:`.datasets` input files as MLflow datasets (DVC hash as digest, row count);
- :mod:`.environment` the machine, torch build and device as run tags;
- :mod:`.registry` students in the model registry, the ``champion`` alias.
"""

from noisy_student.tracking.registry import CHAMPION, log_model, rate_model
from noisy_student.tracking.runs import (
    log_artifacts,
    log_datasets,
    log_history,
    stage_run,
    tag_checkpoints,
    write_metrics,
)
from noisy_student.tracking.store import experiment_name, flatten, tracking_uri, training_runs_url

__all__ = [
    "CHAMPION",
    "experiment_name",
    "flatten",
    "log_artifacts",
    "log_datasets",
    "log_history",
    "log_model",
    "rate_model",
    "stage_run",
    "tag_checkpoints",
    "tracking_uri",
    "training_runs_url",
    "write_metrics",
]
