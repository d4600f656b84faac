"""Stage `predict`: the un-noised teacher labels every unlabeled image (Parquet shards)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import typer

from noisy_student.data import load_imageset
from noisy_student.evaluation import predict_logits
from noisy_student.models import load_classifier
from noisy_student.pseudo_labels import softmax
from noisy_student.training import resolve_device
from stages._common import (
    METRICS_OPTION,
    PARAMS_OPTION,
    Timer,
    friendly_errors,
    images_tensor,
    params_or_exit,
    stage_run,
    torch_threads,
    write_metrics,
)


def main(
    iteration: str = typer.Option(..., help="Iteration name (a key of `iterations` in params)."),
    teacher: Path = typer.Option(..., help="Teacher checkpoint."),
    unlabeled: Path = typer.Option(Path("data/prepared/unlabeled.npz"), help="Unlabeled image set."),
    out: Path = typer.Option(..., help="Folder of Parquet shards to write."),
    metrics: Path = METRICS_OPTION,
    params_file: Path = PARAMS_OPTION,
) -> None:
    """Predict soft pseudo labels (full distribution at the configured temperature) in eval mode."""
    params = params_or_exit(params_file)
    torch_threads()
    pl = params.pseudo_labels
    with friendly_errors():
        model, _, _ = load_classifier(teacher)
        pool = load_imageset(unlabeled)
    device = resolve_device(params.device)
    timer = Timer()
    with stage_run("predict", params, ("pseudo_labels",), iteration):
        # Paper: the teacher is NOT noised when it labels (eval mode, clean images).
        logits = predict_logits(model.to(device), images_tensor(pool.images), pl.batch_size, device, desc="predict")
        probs = softmax(logits, pl.temperature)
        pred = probs.argmax(1)
        conf = probs.max(1)
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for shard, start in enumerate(range(0, len(pool), pl.shard_size)):
            sl = slice(start, start + pl.shard_size)
            table = pa.table(
                {
                    "id": pa.array(pool.ids[sl]),
                    "source": pa.array(pool.source[sl].astype(str)),
                    "label": pa.array(pool.labels[sl]),  # ground truth for reporting only
                    "pred": pa.array(pred[sl].astype(np.int32)),
                    "confidence": pa.array(conf[sl]),
                    "probs": pa.FixedSizeListArray.from_arrays(pa.array(probs[sl].reshape(-1)), probs.shape[1]),
                }
            )
            pq.write_table(table, tmp / f"part-{shard:05d}.parquet")
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
        in_domain = pool.labels >= 0
        ood = ~in_domain
        write_metrics(
            metrics,
            {
                "images": len(pool),
                "pseudo_label_accuracy": float((pred[in_domain] == pool.labels[in_domain]).mean()),
                "mean_confidence_in_domain": float(conf[in_domain].mean()),
                "mean_confidence_out_of_domain": float(conf[ood].mean()) if ood.any() else float("nan"),
                "seconds": timer.seconds,
                "images_per_second": round(len(pool) / max(timer.seconds, 1e-9), 1),
            },
        )


if __name__ == "__main__":
    typer.run(main)
