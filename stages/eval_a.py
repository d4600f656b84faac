"""Stage `eval-A`: accuracy on natural adversarial images (Fashion-MNIST-A, or the released ImageNet-A)."""

from __future__ import annotations

from pathlib import Path

import typer

from noisy_student.config import Params
from noisy_student.evaluation import topk_accuracy
from noisy_student.robustness import load_imagenet_a, masked_topk
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
from stages._robust import load_npz, logits_of, model_on_device, release_errors, release_logits, release_model


def _release(model: Path, name: str, metrics: Path, params: Params) -> dict[str, float]:
    """ImageNet-A: top-1 / top-5 over the 200-class subset of the logits (method.md, Robustness metrics)."""
    r = params.robustness
    root = str(r.imagenet_a_dir)
    with friendly_errors():
        net, device, spec = release_model(model, params.device, r, class_folders=None)
    with stage_run("eval-A", params, ("robustness",), name), release_errors():
        images, labels, class_indices = load_imagenet_a(root, spec.wnids, **spec.loader_kwargs())
        logits = masked_topk(release_logits(net, images, r.batch_size, device), class_indices)
        acc = topk_accuracy(logits, labels.numpy())
        write_metrics(
            metrics,
            {
                "top1": acc["top1"],
                "top5": acc["top5"],
                "images": int(len(labels)),
                "classes": len(class_indices),
                **spec.describe(root),
            },
        )
    return acc


def main(
    model: Path = MODEL_OPTION,
    name: str = NAME_OPTION,
    data: Path = typer.Option(Path("data/robustness"), help="Folder written by `robustness-data`."),
    metrics: Path = METRICS_OPTION,
    params_file: Path = PARAMS_OPTION,
) -> None:
    """Top-1 / top-5 on the test images the fixed reference model misclassifies (or on ImageNet-A when
    `robustness.imagenet_a_dir` is set)."""
    params = params_or_exit(params_file)
    torch_threads()
    if params.robustness.imagenet_a_dir:
        acc = _release(model, name, metrics, params)
    else:
        with friendly_errors():
            a = load_npz(data / "a.npz")
            net, device = model_on_device(model, params.device)
        with stage_run("eval-A", params, ("robustness",), name):
            acc = topk_accuracy(logits_of(net, a["images"], params.robustness.batch_size, device), a["labels"])
            write_metrics(metrics, {"top1": acc["top1"], "top5": acc["top5"], "images": int(len(a["labels"]))})
    typer.echo(f"eval-A {name}: top-1 {100 * acc['top1']:.2f} %  top-5 {100 * acc['top5']:.2f} %")


if __name__ == "__main__":
    typer.run(main)
