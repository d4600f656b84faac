"""One parent MLflow run per pipeline run, with the experiment's params and its headline metrics.

A pipeline run is one workspace ``dvc repro`` or one ``dvc exp run``: its stages are separate
processes that DVC starts, so they find their parent by a key instead of sharing an active run. DVC
gives stages no invocation id, only the experiment's name (``DVC_EXP_NAME``) and baseline commit
(``DVC_EXP_BASELINE_REV``), so the key is (project, experiment, baseline commit, hash of the whole params file):
a stage rerun alone with the same params joins its pipeline's parent, changed params start a new one.
The parent's headline metrics are recomputed from the workspace's metrics files after every stage, so
a stage DVC skipped (cached, or inherited from the experiment's baseline) still counts, unless
``dvc.lock`` shows that its result no longer matches the workspace (:class:`~.dvclock.Currency`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import yaml
from mlflow.entities import Metric, Param

from noisy_student.config import Params, load_params
from noisy_student.paths import METRICS, TEACHER, metrics_file, project_root, run_name
from noisy_student.tracking.dvclock import PARAMS_FILE, Currency, read_lock
from noisy_student.tracking.store import experiment_name, flatten, store_lock

KIND_TAG = "run_kind"  # "pipeline" on parents, "stage" on stage runs: the report and the REST test filter on it
PIPELINE, STAGE = "pipeline", "stage"
KEY_TAG = "pipeline_key"

# stage -> {key in its metrics file: headline name after "<model>."}; eval-FGSM's keys follow a pattern
HEADLINE_KEYS: dict[str, dict[str, str]] = {
    "eval": {"top1": "top1"},
    "eval-A": {"top1": "a_top1"},
    "eval-C": {"mce": "mce", "corrupted_top1": "c_top1"},
    "eval-P": {"mfr": "mfr"},
    "predict": {"pseudo_label_accuracy": "pseudo_label_accuracy"},
    "filter-balance": {"selected_pseudo_label_accuracy": "selected_pseudo_label_accuracy"},
}
_ATTACK_KEY = re.compile(
    r"^(fgsm|pgd\d+)_top1_eps([\d.]+)$"
)  # fgsm_top1_eps8 -> fgsm_eps8, pgd10_top1_eps8 -> pgd10_eps8


def params_hash(params: Params) -> str:
    """12 hex digits identifying a complete set of params."""
    dumped = params.model_dump(mode="json")
    return hashlib.sha256(json.dumps(dumped, sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Pipeline:
    """The pipeline run a stage process belongs to."""

    name: str  # the DVC experiment (``workspace`` for a plain ``dvc repro``): the parent's run name
    params: Params  # the whole params file, without any iteration's overrides merged in
    baseline: str  # the experiment's baseline commit; empty in the workspace

    @property
    def key(self) -> str:
        """Same experiment, baseline and params in the same project (two clones sharing a store stay apart)."""
        parts = (str(project_root()), self.name, self.baseline, params_hash(self.params))
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def current_pipeline() -> Pipeline | None:
    """The pipeline run of this process; None outside DVC (a stage started by hand has no parent).

    DVC sets ``DVC_STAGE`` for every stage command and runs it from the workspace root, so the
    workspace's ``params.yaml`` is the pipeline's whole params file (the stage itself may hold one
    iteration's view of it).
    """
    if not os.environ.get("DVC_STAGE") or not Path(PARAMS_FILE).is_file():
        return None
    return Pipeline(experiment_name(), load_params(PARAMS_FILE), os.environ.get("DVC_EXP_BASELINE_REV", ""))


def ensure_parent(client: mlflow.MlflowClient, experiment_id: str, pipeline: Pipeline, tags: dict[str, str]) -> str:
    """The id of the pipeline's parent run: found by its key tag, created (with the params) when absent.

    Search and create happen under :func:`~.store.store_lock`, so two stages of the same pipeline run
    never make two parents, and queued experiments starting together each make their own.
    """
    with store_lock():
        found = client.search_runs(
            [experiment_id],
            filter_string=f"tags.{KEY_TAG} = '{pipeline.key}'",
            order_by=["attributes.start_time ASC"],
            max_results=1,
        )
        if found:
            return found[0].info.run_id
        parent_tags = {
            **tags,
            KIND_TAG: PIPELINE,
            KEY_TAG: pipeline.key,
            "dvc_exp": pipeline.name,
            "params_hash": params_hash(pipeline.params),
            **({"baseline_rev": pipeline.baseline} if pipeline.baseline else {}),
        }
        run = client.create_run(experiment_id, run_name=pipeline.name, tags=parent_tags)
        dumped = pipeline.params.model_dump(mode="json")
        params = [Param(k, str(v)) for k, v in sorted(flatten(dumped).items())]
        client.log_batch(run.info.run_id, params=params)  # the client splits it into MLflow's 100-param batches
        return run.info.run_id


def set_status(client: mlflow.MlflowClient, run_id: str, status: str) -> None:
    """RUNNING while one of its stages runs, then FINISHED or FAILED with the last stage's outcome."""
    if status == "RUNNING":
        client.update_run(run_id, status=status)
    else:
        client.set_terminated(run_id, status=status)


def headline_metrics(
    params: Params, metrics: Path, is_current: Callable[[str], bool] = lambda stage: True
) -> dict[str, float]:
    """The comparison a pipeline run is about, from its metrics files, as flat ``<model>.<name>`` values.

    Per model (``teacher``, ``it1``...): ``top1`` (clean test), ``a_top1``, ``mce``, ``c_top1``, ``mfr``,
    ``fgsm_eps<e>``, ``pgd<n>_eps<e>``; per iteration: ``pseudo_label_accuracy`` (the teacher on the
    pool), ``selected_pseudo_label_accuracy`` (after filter-balance) and ``gain`` (its top-1 minus its
    teacher's, a fraction like top-1). Accuracies are fractions 0..1, mCE / mFR on their x100 scale.
    ``is_current(stage)`` drops files whose stage result is stale (see :class:`~.dvclock.Currency`).
    """
    models = [TEACHER, *params.iterations]
    targets = {stage: models for stage in ("eval", "eval-A", "eval-C", "eval-P", "eval-FGSM")}
    targets |= {stage: list(params.iterations) for stage in ("predict", "filter-balance")}
    out: dict[str, float] = {}
    for stage, names in targets.items():
        for target in names:
            path = metrics_file(stage, target, metrics)
            if not path.is_file() or not is_current(run_name(stage, target)):
                continue
            for key, value in json.loads(path.read_text()).items():
                name = HEADLINE_KEYS.get(stage, {}).get(key)
                if stage == "eval-FGSM" and (match := _ATTACK_KEY.match(key)):
                    name = f"{match[1]}_eps{match[2]}"
                if name and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    out[f"{target}.{name}"] = float(value)
    for iteration, spec in params.iterations.items():
        student, teacher = out.get(f"{iteration}.top1"), out.get(f"{spec.teacher}.top1")
        if student is not None and teacher is not None:
            out[f"{iteration}.gain"] = student - teacher
    return out


def refresh_headline(client: mlflow.MlflowClient, parent_id: str, pipeline: Pipeline, running: str) -> dict[str, float]:
    """Log the headline metrics that changed to the parent (after stage ``running`` wrote its results)."""
    raw = yaml.safe_load(Path(PARAMS_FILE).read_text()) or {}
    currency = Currency(read_lock(), running, raw)
    values = headline_metrics(pipeline.params, METRICS, currency.is_current)
    logged = client.get_run(parent_id).data.metrics
    now = int(time.time() * 1000)
    changed = [Metric(k, v, now, 0) for k, v in sorted(values.items()) if logged.get(k) != v]
    if changed:
        client.log_batch(parent_id, metrics=changed)
    return values


def is_parent(tags: dict[str, Any]) -> bool:
    """Whether a run's tags mark it as a pipeline's parent run (not a stage execution)."""
    return tags.get(KIND_TAG) == PIPELINE
