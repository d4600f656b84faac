"""The report's view of the MLflow store: every run of the experiment, and the training curves.

MLflow is imported inside the functions: it is slow to import, and a report without a store (a fresh
clone) never needs it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from noisy_student.report.tables import BASELINE, latest_training_runs

RUN_COLUMNS = [
    "run_id",
    "run_name",
    "dvc_exp",
    "start_time",
    "status",
    "params_hash",
    "top1",
    "params",
    "checkpoint_md5",
    "teacher_md5",
    "teacher_name",
    "pipeline_params",
    "env",
]
HISTORY_COLUMNS = ["dvc_exp", "run_name", "epoch", "top1"]


def mlflow_runs(uri: str, experiment: str) -> pd.DataFrame:
    """Every stage run of the MLflow experiment as one row; empty (same columns) when there is no store.

    Pipeline parents (tag ``run_kind: pipeline``, :mod:`noisy_student.tracking.pipeline`) are not rows: they
    hold a whole experiment's params and headline metrics, not one stage's result. Their params come
    along on their stage runs' rows instead.

    Columns :data:`RUN_COLUMNS`: ``run_name`` (``eval@it1``, ``student@it1``, ``teacher``...), ``dvc_exp`` (the
    run's DVC experiment tag, :data:`BASELINE` when untagged), ``start_time`` (ms since the epoch),
    ``params_hash``, ``top1`` (fraction 0..1, NaN when the run logged none), ``params`` (dict of the params
    the stage logged: its own sections), ``checkpoint_md5`` / ``teacher_md5`` / ``teacher_name`` (the run's
    checkpoint tags, :func:`noisy_student.tracking.tag_checkpoints`; None on runs logged without them) and
    ``pipeline_params`` (dict: the whole params file of the run's pipeline parent; None outside DVC) and
    ``env`` (dict: the run's ``env.*`` tags, :mod:`noisy_student.tracking.environment`).
    A missing SQLite file is not created: inside a queued DVC experiment that would leave a stray store.
    """
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return pd.DataFrame(columns=RUN_COLUMNS)
    import mlflow
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    from noisy_student.tracking.runs import CHECKPOINT_TAG, TEACHER_NAME_TAG, TEACHER_TAG

    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return pd.DataFrame(columns=RUN_COLUMNS)
    rows: list[dict[str, Any]] = []
    parents: dict[str, dict[str, str]] = {}  # pipeline parent run id -> its params (the whole params file)
    parent_of: dict[str, str | None] = {}  # stage run id -> its parent's run id
    page_token = None
    while True:
        page = client.search_runs([exp.experiment_id], max_results=1000, page_token=page_token)
        for r in page:
            if r.data.tags.get("run_kind") == "pipeline":
                parents[r.info.run_id] = dict(r.data.params)
                continue
            rows.append(
                {
                    "run_id": r.info.run_id,
                    "run_name": r.info.run_name,
                    "dvc_exp": r.data.tags.get("dvc_exp", BASELINE),
                    "start_time": r.info.start_time,
                    "status": r.info.status,
                    "params_hash": r.data.tags.get("params_hash"),
                    # eval runs log top1; training runs their last epoch's test_top1 (the fallback)
                    "top1": r.data.metrics.get("top1", r.data.metrics.get("test_top1", float("nan"))),
                    "params": dict(r.data.params),
                    "checkpoint_md5": r.data.tags.get(CHECKPOINT_TAG),
                    "teacher_md5": r.data.tags.get(TEACHER_TAG),
                    "teacher_name": r.data.tags.get(TEACHER_NAME_TAG),
                    "env": {k: v for k, v in r.data.tags.items() if k.startswith("env.")},
                }
            )
            parent_of[r.info.run_id] = r.data.tags.get(MLFLOW_PARENT_RUN_ID)
        page_token = page.token
        if not page_token:
            break
    for row in rows:  # after the last page: a parent may come after its stage runs
        row["pipeline_params"] = parents.get(parent_of[row["run_id"]] or "")
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


def training_histories(uri: str, runs: pd.DataFrame) -> pd.DataFrame:
    """Test top-1 per epoch of the latest teacher / student run of every experiment.

    ``runs``: as :func:`mlflow_runs` returns them. Columns :data:`HISTORY_COLUMNS` (``epoch`` from 1,
    ``top1`` in %), sorted by run name, experiment, epoch. An experiment that did not retrain a model has no
    run for it, so every curve belongs to the experiment that produced it.
    """
    latest = latest_training_runs(runs)
    if latest.empty:
        return pd.DataFrame(columns=HISTORY_COLUMNS)
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    rows = [
        (run.dvc_exp, run.run_name, int(m.step), 100.0 * m.value)
        for run in latest.itertuples()
        for m in client.get_metric_history(run.run_id, "test_top1")
        if m.step > 0  # epochs count from 1; step 0 would be a summary value
    ]
    frame = pd.DataFrame(rows, columns=HISTORY_COLUMNS)
    # a resumed run logs again the epochs between its last saved state and the kill (same values: exact resume)
    frame = frame.drop_duplicates(["dvc_exp", "run_name", "epoch"], keep="last")
    return frame.sort_values(["run_name", "dvc_exp", "epoch"], ignore_index=True)
