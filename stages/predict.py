"""Stage `predict`: the teacher labels every unlabeled image (Parquet shards, :mod:`noisy_student.pseudo_labels`)."""

from __future__ import annotations

from pathlib import Path

import typer

from noisy_student.devices import resolve_device
from noisy_student.paths import UNLABELED
from noisy_student.pseudo_labels.predict import load_predict_inputs, predict_pseudo_labels
from noisy_student.seeds import seed_for
from noisy_student.tracking import log_datasets, stage_run, tag_checkpoints, write_metrics
from stages._common import METRICS_OPTION, PARAMS_OPTION, friendly_errors, params_or_exit, torch_threads


def main(
    iteration: str = typer.Option(..., help="Iteration name (a key of `iterations` in params)."),
    teacher: Path = typer.Option(..., help="Teacher checkpoint."),
    unlabeled: Path = typer.Option(UNLABELED, help="Unlabeled image set."),
    out: Path = typer.Option(..., help="Folder of Parquet shards to write."),
    metrics: Path = METRICS_OPTION,
    params_file: Path = PARAMS_OPTION,
) -> None:
    """Predict soft pseudo labels at the configured temperature in eval mode.

    Stores the full distribution, or its ``pseudo_labels.top_k`` largest entries when set.
    """
    params = params_or_exit(params_file, iteration)
    torch_threads()
    pl = params.pseudo_labels
    with friendly_errors(ValueError):  # every input is read and checked before an MLflow run is opened
        inputs = load_predict_inputs(teacher, unlabeled, pl)
    device = resolve_device(params.device)
    with stage_run("predict", params, ("pseudo_labels",), iteration):
        log_datasets(inference=(unlabeled,))
        tag_checkpoints(teacher=teacher, teacher_name=params.iterations[iteration].teacher)
        results = predict_pseudo_labels(inputs, out, pl, device, seed_for(params.seed, "predict"))
        write_metrics(metrics, results)


if __name__ == "__main__":
    typer.run(main)
