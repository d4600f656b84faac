"""Stage `eval`: clean top-1 / top-5 of one model on the test set."""

from __future__ import annotations

from pathlib import Path

import typer

from noisy_student import paths, tracking
from noisy_student.console import PARAMS_OPTION, friendly_errors, params_or_exit
from noisy_student.data import load_imageset
from noisy_student.devices import inference_dtype, resolve_device
from noisy_student.evaluation import evaluate_classifier, per_image_predictions
from noisy_student.io import write_csv
from noisy_student.models import load_classifier
from stages._common import METRICS_OPTION, MODEL_OPTION, NAME_OPTION, torch_threads


def main(
    model: Path = MODEL_OPTION,
    name: str = NAME_OPTION,
    test: Path = typer.Option(paths.TEST, help="Test image set."),
    metrics: Path = METRICS_OPTION,
    predictions: Path = typer.Option(None, help="CSV of per-image predictions (id, label, prediction) to write."),
    params_file: Path = PARAMS_OPTION,
) -> None:
    """Clean accuracy (fractions 0..1) of ``model`` on ``test``."""
    params = params_or_exit(params_file)
    torch_threads()
    with friendly_errors():
        data = load_imageset(test)
        net, spec, meta = load_classifier(model)
    with tracking.stage_run("eval", params, ("eval",), name):
        tracking.log_datasets(evaluation=(test,))
        tracking.tag_checkpoints(model)  # the report finds this number by the checkpoint's hash
        device = resolve_device(params.device)
        amp_dtype = inference_dtype(params.precision, device)  # autocast on CUDA, float32 elsewhere
        acc, logits = evaluate_classifier(
            net, data.images, data.labels, params.eval.batch_size, device, desc=f"eval {name}", amp_dtype=amp_dtype
        )
        tracking.write_metrics(
            metrics,
            {"top1": acc["top1"], "top5": acc["top5"], "images": len(data), "parameters": int(meta.get("params", 0))},
        )
        if predictions is not None:
            write_csv(predictions, per_image_predictions(data.ids, data.labels, logits))
        tracking.rate_model(params.tracking.registered_model, model, acc["top1"])  # the champion alias
    typer.echo(f"eval {name}: top-1 {100 * acc['top1']:.2f} %  top-5 {100 * acc['top5']:.2f} %  ({spec.arch})")


if __name__ == "__main__":
    typer.run(main)
