"""Stage `teacher`: train the first teacher on the labeled images only (with noise)."""

from __future__ import annotations

from pathlib import Path

import typer

from noisy_student import paths, tracking
from noisy_student.console import PARAMS_OPTION, friendly_errors, params_or_exit
from noisy_student.data.wds import WdsDataError, split_path
from noisy_student.report.charts import training_curves
from noisy_student.training.recipe import RunPlan, save_training_outputs, train_model
from noisy_student.training.sources import teacher_inputs
from stages._processes import start_processes
from stages._train import exclusive_run, other_rank_trains


def main(
    params_file: Path = PARAMS_OPTION,
    data: Path = typer.Option(paths.PREPARED, help="Folder written by `prepare`."),
    out: Path = typer.Option(paths.model_file(paths.TEACHER), help="Checkpoint to write."),
    metrics: Path = typer.Option(paths.metrics_file("teacher"), help="Metrics JSON (DVC metric)."),
) -> None:
    """Train the teacher with cross entropy, RandAugment, dropout and stochastic depth."""
    train_on_labeled(params_file, data, out, metrics)


def train_on_labeled(params_file: Path, data: Path, out: Path, metrics: Path, supervised: str | None = None) -> None:
    """The teacher, or with ``supervised`` (an iteration) that iteration's same-network baseline: its student's
    network and noise trained the teacher's way (stage ``supervised``)."""
    params = params_or_exit(params_file)
    start_processes(params)  # distributed.processes > 1: runs this command under torchrun instead
    labeled_file, test_file = split_path(data, "labeled"), split_path(data, "test")
    with friendly_errors(WdsDataError):  # tar folders, decoded into memory or streamed (data.residency)
        inputs = teacher_inputs(data, params.data, params.teacher.optim.label_smoothing)
    plan = RunPlan.supervised(params, supervised) if supervised else RunPlan.teacher(params)
    sections = ("teacher", "student", "noise", "iterations") if supervised else ("teacher",)
    with exclusive_run(plan, inputs) as key:
        if other_rank_trains(plan, inputs, key):
            return
        with tracking.stage_run("supervised" if supervised else "teacher", params, sections, supervised, key):
            tracking.log_datasets(training=(labeled_file,), evaluation=(test_file,))
            result = train_model(plan, inputs, paths.checkpoints_dir(), on_epoch=tracking.log_history, key=key)
            model = paths.supervised_model(supervised) if supervised else paths.TEACHER
            csv, png = (paths.curves_file(model, s, metrics.parent) for s in ("csv", "png"))
            save_training_outputs(result, plan.name, out, csv)
            training_curves(result.history, plan.name, png)
            tracking.tag_checkpoints(out)
            tracking.log_artifacts("plots", png)
            tracking.log_artifacts("curves", csv)
            tracking.write_metrics(metrics, result.metrics)


if __name__ == "__main__":
    typer.run(main)
