"""One MLflow run per stage execution, nested under its pipeline's parent run; metrics, artifacts, datasets."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import DatasetInput, InputTag
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT, MLFLOW_PARENT_RUN_ID

from noisy_student.config import Params
from noisy_student.io import write_json
from noisy_student.paths import run_name
from noisy_student.tracking import pipeline as pipelines
from noisy_student.tracking.datasets import dataset_for
from noisy_student.tracking.dvclock import file_md5
from noisy_student.tracking.environment import environment_tags
from noisy_student.tracking.store import ensure_experiment, experiment_name, flatten, tracking_uri

# training stages sample CPU / memory / disk / network (psutil) and, where NVML is installed, GPU use
SYSTEM_METRICS_STAGES = ("teacher", "student")

# Run tags naming checkpoints by content (DVC's md5, as in dvc.lock): a model keeps its hash whichever
# experiment trained it, and DVC restores a cached stage without a run, so the report links an
# experiment to its teacher's evaluation through these instead of through the experiment's own runs.
CHECKPOINT_TAG = "checkpoint_md5"  # the checkpoint the run trained (teacher, student@<it>) or evaluated (eval@<m>)
TEACHER_TAG = "teacher_md5"  # the checkpoint the run labelled with (predict@<it>) or learned from (student@<it>)
TEACHER_NAME_TAG = "teacher_name"  # that teacher's model name (``teacher``, ``it1``...): the iteration's ``teacher``


@dataclass(frozen=True)
class StageContext:
    """The stage execution whose MLflow run is active in this process."""

    stage: str
    target: str | None
    run_id: str
    parent_id: str | None
    params_hash: str


_ACTIVE: StageContext | None = None


def active_stage() -> StageContext | None:
    """The stage run :func:`stage_run` opened in this process, None outside one."""
    return _ACTIVE


@lru_cache(maxsize=1)
def git_rev() -> str:
    """The workspace's git commit (a queued experiment's: its baseline), ``unknown`` outside git."""
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
    this host) is left alone. Pipeline parents are never touched here: they are RUNNING between the
    start and the end of each of their stages, whichever process that is.
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
        if pipelines.is_parent(tags):
            continue
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

    Under DVC the run is nested under its pipeline run's parent (:mod:`.pipeline`), which is RUNNING
    while the stage runs, FAILED if it fails, and gets the updated headline metrics when it succeeds.
    Tags name the machine and torch build (:mod:`.environment`); training stages log system metrics.
    """
    global _ACTIVE
    mlflow.set_tracking_uri(tracking_uri())
    experiment_id = ensure_experiment(params.tracking.experiment)
    mlflow.set_experiment(experiment_id=experiment_id)
    client = mlflow.MlflowClient()
    dumped = params.model_dump(mode="json")
    logged = {"seed": params.seed, **flatten({k: dumped[k] for k in sections})}
    tags = {
        "stage": stage,
        "iteration": target or "",
        "git_rev": git_rev(),
        "dvc_exp": experiment_name(),
        "params_hash": pipelines.params_hash(params),
        "host": socket.gethostname(),
        "pid": str(os.getpid()),
        pipelines.KIND_TAG: pipelines.STAGE,
        **environment_tags(params.device),
        **({"resume_key": resume_key} if resume_key else {}),
    }
    pipeline = pipelines.current_pipeline()
    parent = None
    if pipeline is not None:
        parent = pipelines.ensure_parent(client, experiment_id, pipeline, {k: tags[k] for k in ("git_rev", "host")})
        tags[MLFLOW_PARENT_RUN_ID] = parent  # MLflow's nesting is this tag: the parent is not active in this process
        pipelines.set_status(client, parent, "RUNNING")
    name = run_name(stage, target)
    resume = _settle_unfinished_runs(experiment_id, name, resume_key)
    try:
        with mlflow.start_run(
            run_id=resume,
            run_name=None if resume else name,
            tags=tags,
            log_system_metrics=stage in SYSTEM_METRICS_STAGES,
        ) as run:
            mlflow.log_params(logged)
            _ACTIVE = StageContext(stage, target, run.info.run_id, parent, tags["params_hash"])
            yield run
    except BaseException:
        if parent is not None:
            pipelines.set_status(client, parent, "FAILED")
        raise
    finally:
        _ACTIVE = None
    if parent is not None and pipeline is not None:
        pipelines.refresh_headline(client, parent, pipeline, os.environ.get("DVC_STAGE") or name)
        pipelines.set_status(client, parent, "FINISHED")


def tag_checkpoints(model: Path | None = None, teacher: Path | None = None, teacher_name: str = "") -> None:
    """Tag the active run with the content hashes of its checkpoints (no-op outside a run).

    ``model``: the checkpoint the run wrote or evaluated (:data:`CHECKPOINT_TAG`); ``teacher`` and
    ``teacher_name``: the teacher checkpoint it consumed and that model's name (:data:`TEACHER_TAG`,
    :data:`TEACHER_NAME_TAG`). Hashes are :func:`~.dvclock.file_md5`, the md5 ``dvc.lock`` records.
    """
    if teacher is not None and not teacher_name:
        raise ValueError("tag_checkpoints: a teacher checkpoint needs its model name")
    tags = {CHECKPOINT_TAG: file_md5(model)} if model is not None else {}
    if teacher is not None:
        tags |= {TEACHER_TAG: file_md5(teacher), TEACHER_NAME_TAG: teacher_name}
    if mlflow.active_run() is not None and tags:
        mlflow.set_tags(tags)


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


def log_datasets(
    training: Sequence[Path] = (), evaluation: Sequence[Path] = (), inference: Sequence[Path] = ()
) -> None:
    """The stage's input files as MLflow datasets of the active run and of its pipeline's parent.

    Each gets its DVC content hash as digest and its row count (:mod:`.datasets`); the argument it is
    passed in is its context (``training``, ``evaluation``, ``inference``: the pool a teacher labels).
    """
    client = mlflow.MlflowClient()
    active = active_stage()
    contexts = {"training": training, "evaluation": evaluation, "inference": inference}
    for context, paths in contexts.items():
        for path in paths:
            dataset = dataset_for(Path(path), git_rev())
            mlflow.log_input(dataset, context=context)
            if active is not None and active.parent_id is not None:
                # the parent lists every data version its pipeline run read (MLflow drops repeats)
                tag = InputTag(MLFLOW_DATASET_CONTEXT, context)
                client.log_inputs(active.parent_id, datasets=[DatasetInput(dataset._to_mlflow_entity(), [tag])])
