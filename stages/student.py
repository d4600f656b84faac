"""Stage `student`: a noised, equal-or-larger student trained from scratch on labeled + pseudo-labeled images."""

from __future__ import annotations

from pathlib import Path

import typer

from noisy_student import paths, tracking
from noisy_student.console import PARAMS_OPTION, fail, friendly_errors, params_or_exit
from noisy_student.data.wds import split_path
from noisy_student.evaluation import images_tensor
from noisy_student.models import count_parameters, load_classifier
from noisy_student.report.charts import training_curves
from noisy_student.training.recipe import PlanError, RunPlan, save_training_outputs, train_model
from noisy_student.training.sources import student_inputs
from stages._common import METRICS_OPTION
from stages._processes import start_processes
from stages._train import exclusive_run, other_rank_trains


def main(
    iteration: str = typer.Option(..., help="Iteration name."),
    teacher: Path = typer.Option(..., help="This iteration's teacher checkpoint (size check, warm start)."),
    selected: Path = typer.Option(..., help="Selected pseudo labels from `filter-balance`."),
    data: Path = typer.Option(paths.PREPARED, help="Folder written by `prepare`."),
    out: Path = typer.Option(..., help="Student checkpoint to write."),
    metrics: Path = METRICS_OPTION,
    params_file: Path = PARAMS_OPTION,
) -> None:
    """Train the student jointly on labeled and pseudo-labeled images with full noise."""
    params = params_or_exit(params_file, iteration)
    start_processes(params)  # distributed.processes > 1: runs this command under torchrun instead
    with friendly_errors():
        teacher_model, teacher_spec, _ = load_classifier(teacher)
    with friendly_errors(ValueError):  # the selected pool images, by id, repeated as filter-balance says
        inputs, stats = student_inputs(data, params, selected, teacher_spec.num_classes)
    teacher_params = count_parameters(teacher_model)
    plan = RunPlan.student(params, iteration, teacher_params)
    sections = ("student", "noise", "pseudo_labels", "filter")
    warm = teacher_model.state_dict()
    with exclusive_run(plan, inputs) as key:
        if other_rank_trains(plan, inputs, key, warm):
            return
        with tracking.stage_run("student", params, sections, iteration, key):
            labeled, unlabeled, test = (split_path(data, split) for split in ("labeled", "unlabeled", "test"))
            tracking.log_datasets(training=(labeled, selected, unlabeled), evaluation=(test,))
            try:
                result = train_model(plan, inputs, paths.checkpoints_dir(), tracking.log_history, warm, key)
            except PlanError as exc:
                fail(f"{params_file}: {exc} (teacher: {teacher})")
                raise
            csv, png = (paths.curves_file(iteration, s, metrics.parent) for s in ("csv", "png"))
            save_training_outputs(result, plan.name, out, csv)
            training_curves(result.history, plan.name, png)
            tracking.tag_checkpoints(out, teacher, params.iterations[iteration].teacher)  # its teacher, by content
            tracking.log_artifacts("plots", png)
            tracking.log_artifacts("curves", csv)
            extra = {k: stats[k] for k in ("pseudo_labeled_rows", "pseudo_labeled_unique")}
            tracking.write_metrics(metrics, {**result.metrics, **extra, "teacher_parameters": int(teacher_params)})
            input_shape = tuple(images_tensor(inputs.test.images[:1]).shape[1:])
            registered = params.tracking.registered_model
            tracking.log_model(result.model, out, input_shape, registered)  # type: ignore[arg-type]


if __name__ == "__main__":
    typer.run(main)
