"""Stage `eval-P`: stability under perturbation (FP, mFR, T5D, mT5D): Fashion-MNIST-P or ImageNet-P."""

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
    """Flip probability per perturbation (noise sequences vs the first frame), FR and mFR (x100).

    With `robustness.imagenet_p_dir` set: the released ImageNet-P (mFR needs `robustness.p_baseline_file`).
    """
    summary = run_benchmark("eval-P", "P", model, name, data, None, metrics, params_file, items)
    nan = float("nan")
    typer.echo(f"eval-P {name}: mFR {summary.get('mfr', nan):.1f}  mT5D {summary.get('mt5d', nan):.1f}")


if __name__ == "__main__":
    typer.run(main)
