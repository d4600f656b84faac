"""Stage `eval-A`: accuracy on natural adversarial images (Fashion-MNIST-A, or the released ImageNet-A)."""

from __future__ import annotations

from pathlib import Path

import typer

from noisy_student import paths
from noisy_student.console import PARAMS_OPTION
from stages._common import ITEMS_OPTION, METRICS_OPTION, MODEL_OPTION, NAME_OPTION
from stages._robustness import run_benchmark


def main(
    model: Path = MODEL_OPTION,
    name: str = NAME_OPTION,
    data: Path = typer.Option(paths.ROBUSTNESS_DATA, help="Folder written by `robustness-data`."),
    metrics: Path = METRICS_OPTION,
    items: Path | None = ITEMS_OPTION,
    params_file: Path = PARAMS_OPTION,
) -> None:
    """Top-1 / top-5 on the test images the fixed reference model misclassifies (or on ImageNet-A when
    `robustness.imagenet_a_dir` is set)."""
    acc = run_benchmark("eval-A", "A", model, name, data, None, metrics, params_file, items)
    typer.echo(f"eval-A {name}: top-1 {100 * acc['top1']:.2f} %  top-5 {100 * acc['top5']:.2f} %")


if __name__ == "__main__":
    typer.run(main)
