"""Stage `supervised@<it>`: the same-network baseline, iteration <it>'s student network trained as the teacher."""

from __future__ import annotations

from pathlib import Path

import typer

from noisy_student import paths
from noisy_student.console import PARAMS_OPTION
from stages.teacher import train_on_labeled


def main(
    iteration: str = typer.Option(..., help="The iteration whose student network to train without Noisy Student."),
    params_file: Path = PARAMS_OPTION,
) -> None:
    """Write models/supervised-<iteration>.pt, its curves and metrics/supervised-<iteration>.json."""
    out, metrics = paths.model_file(paths.supervised_model(iteration)), paths.metrics_file("supervised", iteration)
    train_on_labeled(params_file, paths.PREPARED, out, metrics, iteration)


if __name__ == "__main__":
    typer.run(main)
