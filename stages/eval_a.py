"""Stage `eval-A`: accuracy on natural adversarial images (Fashion-MNIST-A, ImageNet-A style)."""

from __future__ import annotations

from pathlib import Path

import typer

from noisy_student.evaluation import topk_accuracy
from stages._common import (
    METRICS_OPTION,
    MODEL_OPTION,
    NAME_OPTION,
    PARAMS_OPTION,
    friendly_errors,
    params_or_exit,
    stage_run,
    torch_threads,
    write_metrics,
)
from stages._robust import load_npz, logits_of, model_on_device


def main(
    model: Path = MODEL_OPTION,
    name: str = NAME_OPTION,
    data: Path = typer.Option(Path("data/robustness"), help="Folder written by `robustness-data`."),
    metrics: Path = METRICS_OPTION,
    params_file: Path = PARAMS_OPTION,
) -> None:
    """Top-1 / top-5 on the test images the fixed reference model misclassifies."""
    params = params_or_exit(params_file)
    torch_threads()
    with friendly_errors():
        a = load_npz(data / "a.npz")
        net, device = model_on_device(model, params.device)
    with stage_run("eval-A", params, ("robustness",), name):
        acc = topk_accuracy(logits_of(net, a["images"], params.robustness.batch_size, device), a["labels"])
        write_metrics(metrics, {"top1": acc["top1"], "top5": acc["top5"], "images": int(len(a["labels"]))})
    typer.echo(f"eval-A {name}: top-1 {100 * acc['top1']:.2f} %  top-5 {100 * acc['top5']:.2f} %")


if __name__ == "__main__":
    typer.run(main)
