"""Stage `eval-A`: accuracy on natural adversarial images (Fashion-MNIST-A, or the released ImageNet-A)."""

from __future__ import annotations

from pathlib import Path

import typer

from noisy_student import paths
from noisy_student.data.images import ImageTooSmallError
from noisy_student.robustness.evaluate import evaluate_embedded_a, evaluate_imagenet_a, load_embedded_set, load_release
from noisy_student.tracking import log_datasets, stage_run, write_metrics
from stages._common import (
    METRICS_OPTION,
    MODEL_OPTION,
    NAME_OPTION,
    PARAMS_OPTION,
    friendly_errors,
    params_or_exit,
    torch_threads,
)


def main(
    model: Path = MODEL_OPTION,
    name: str = NAME_OPTION,
    data: Path = typer.Option(paths.ROBUSTNESS_DATA, help="Folder written by `robustness-data`."),
    metrics: Path = METRICS_OPTION,
    params_file: Path = PARAMS_OPTION,
) -> None:
    """Top-1 / top-5 on the test images the fixed reference model misclassifies (or on ImageNet-A when
    `robustness.imagenet_a_dir` is set)."""
    params = params_or_exit(params_file)
    torch_threads()
    if params.robustness.imagenet_a_dir:
        with friendly_errors():
            release = load_release(model, params, "A")
        with stage_run("eval-A", params, ("robustness",), name), friendly_errors(ImageTooSmallError):
            log_datasets(evaluation=(Path(params.robustness.imagenet_a_dir),))
            acc = evaluate_imagenet_a(release)
            write_metrics(metrics, acc)
    else:
        with friendly_errors():
            a_set = load_embedded_set(data, "a", model, params)
        with stage_run("eval-A", params, ("robustness",), name):
            log_datasets(evaluation=(paths.robustness_set_file("a", data),))
            acc = evaluate_embedded_a(a_set)
            write_metrics(metrics, acc)
    typer.echo(f"eval-A {name}: top-1 {100 * acc['top1']:.2f} %  top-5 {100 * acc['top5']:.2f} %")


if __name__ == "__main__":
    typer.run(main)
