"""Stage `eval-C`: corruption robustness (mCE, relative mCE, mean corrupted accuracy), Fashion-MNIST-C or ImageNet-C."""

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
    test: Path = typer.Option(paths.TEST, help="Clean test set (for relative mCE)."),
    metrics: Path = METRICS_OPTION,
    items: Path | None = ITEMS_OPTION,
    params_file: Path = PARAMS_OPTION,
) -> None:
    """Errors per corruption and severity, CE normalised by the reference model, mCE (x100).

    With `robustness.imagenet_c_dir` set: the released ImageNet-C, CE normalised by AlexNet.
    """
    summary = run_benchmark("eval-C", "C", model, name, data, test, metrics, params_file, items)
    mce, rel, top1 = (summary.get(k, float("nan")) for k in ("mce", "relative_mce", "corrupted_top1"))
    typer.echo(f"eval-C {name}: mCE {mce:.1f}  relative mCE {rel:.1f}  corrupted top-1 {100 * top1:.2f} %")


if __name__ == "__main__":
    typer.run(main)
