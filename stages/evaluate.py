"""Stage `eval`: clean top-1 / top-5 of one model on the test set."""

from __future__ import annotations

from pathlib import Path

import typer

from noisy_student.data import load_imageset
from noisy_student.evaluation import predict_logits, topk_accuracy
from noisy_student.models import load_classifier
from noisy_student.training import resolve_device
from stages._common import (
    METRICS_OPTION,
    MODEL_OPTION,
    NAME_OPTION,
    PARAMS_OPTION,
    friendly_errors,
    images_tensor,
    params_or_exit,
    stage_run,
    torch_threads,
    write_metrics,
)


def main(
    model: Path = MODEL_OPTION,
    name: str = NAME_OPTION,
    test: Path = typer.Option(Path("data/prepared/test.npz"), help="Test image set."),
    metrics: Path = METRICS_OPTION,
    params_file: Path = PARAMS_OPTION,
) -> None:
    """Clean accuracy (fractions 0..1) of ``model`` on ``test``."""
    params = params_or_exit(params_file)
    torch_threads()
    with friendly_errors():
        net, spec, meta = load_classifier(model)
        data = load_imageset(test)
    device = resolve_device(params.device)
    with stage_run("eval", params, ("eval",), name):
        logits = predict_logits(
            net.to(device), images_tensor(data.images), params.eval.batch_size, device, desc=f"eval {name}"
        )
        acc = topk_accuracy(logits, data.labels)
        write_metrics(
            metrics,
            {"top1": acc["top1"], "top5": acc["top5"], "images": len(data), "parameters": int(meta.get("params", 0))},
        )
    typer.echo(f"eval {name}: top-1 {100 * acc['top1']:.2f} %  top-5 {100 * acc['top5']:.2f} %  ({spec.arch})")


if __name__ == "__main__":
    typer.run(main)
