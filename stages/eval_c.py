"""Stage `eval-C`: corruption robustness (mCE, relative mCE, mean corrupted accuracy), Fashion-MNIST-C or ImageNet-C."""

from __future__ import annotations

from pathlib import Path

import typer

from noisy_student import paths
from noisy_student.data.images import ImageTooSmallError
from noisy_student.robustness.evaluate import evaluate_embedded_c, evaluate_imagenet_c, load_embedded_set, load_release
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
    test: Path = typer.Option(paths.TEST, help="Clean test set (for relative mCE)."),
    metrics: Path = METRICS_OPTION,
    params_file: Path = PARAMS_OPTION,
) -> None:
    """Errors per corruption and severity, CE normalised by the reference model, mCE (x100).

    With `robustness.imagenet_c_dir` set: the released ImageNet-C, CE normalised by AlexNet.
    """
    params = params_or_exit(params_file)
    torch_threads()
    if params.robustness.imagenet_c_dir:
        with friendly_errors():
            release = load_release(model, params, "C")
        with stage_run("eval-C", params, ("robustness",), name), friendly_errors(ImageTooSmallError):
            log_datasets(evaluation=(Path(params.robustness.imagenet_c_dir),))
            summary = evaluate_imagenet_c(release, params.robustness, desc=f"eval-C {name}")
            write_metrics(metrics, summary)
    else:
        with friendly_errors():
            c_set = load_embedded_set(data, "c", model, params)
        with stage_run("eval-C", params, ("robustness",), name):
            log_datasets(evaluation=(paths.robustness_set_file("c", data), test))
            summary = evaluate_embedded_c(c_set, test, desc=f"eval-C {name}")
            write_metrics(metrics, summary)
    nan = float("nan")
    shown = {k: summary.get(k, nan) for k in ("mce", "relative_mce", "corrupted_top1")}
    typer.echo(
        f"eval-C {name}: mCE {shown['mce']:.1f}  relative mCE {shown['relative_mce']:.1f}  "
        f"corrupted top-1 {100 * shown['corrupted_top1']:.2f} %"
    )


if __name__ == "__main__":
    typer.run(main)
