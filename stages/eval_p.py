"""Stage `eval-P`: stability under perturbation (FP, mFR, T5D, mT5D): Fashion-MNIST-P or ImageNet-P."""

from __future__ import annotations

from pathlib import Path

import typer

from noisy_student import paths
from noisy_student.data.images import ImageTooSmallError
from noisy_student.robustness import VideoDecodingError
from noisy_student.robustness.evaluate import evaluate_embedded_p, evaluate_imagenet_p, load_embedded_set, load_release
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
    """Flip probability per perturbation (noise sequences vs the first frame), FR and mFR (x100).

    With `robustness.imagenet_p_dir` set: the released ImageNet-P (mFR needs `robustness.p_baseline_file`).
    """
    params = params_or_exit(params_file)
    torch_threads()
    if params.robustness.imagenet_p_dir:
        with friendly_errors():
            release = load_release(model, params, "P")
        # these errors name the file and how to make it readable
        user_errors = (VideoDecodingError, ImageTooSmallError)
        with stage_run("eval-P", params, ("robustness",), name), friendly_errors(*user_errors):
            log_datasets(evaluation=(Path(params.robustness.imagenet_p_dir),))
            summary = evaluate_imagenet_p(release, params.robustness, desc=f"eval-P {name}")
            write_metrics(metrics, summary)
    else:
        with friendly_errors():
            p_set = load_embedded_set(data, "p", model, params)
        with stage_run("eval-P", params, ("robustness",), name):
            log_datasets(evaluation=(paths.robustness_set_file("p", data),))
            summary = evaluate_embedded_p(p_set, desc=f"eval-P {name}")
            write_metrics(metrics, summary)
    nan = float("nan")
    typer.echo(f"eval-P {name}: mFR {summary.get('mfr', nan):.1f}  mT5D {summary.get('mt5d', nan):.1f}")


if __name__ == "__main__":
    typer.run(main)
