"""Stage `predict`: the un-noised teacher labels every unlabeled image (Parquet shards)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import typer
from tqdm.auto import tqdm

from noisy_student.data import load_imageset
from noisy_student.evaluation import predict_logits
from noisy_student.models import load_classifier
from noisy_student.noise import BatchAugment
from noisy_student.pseudo_labels import prediction_table, softmax
from noisy_student.training import resolve_device
from stages._common import (
    METRICS_OPTION,
    PARAMS_OPTION,
    Timer,
    fail,
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
    """Predict soft pseudo labels at the configured temperature in eval mode.

    Stores the full distribution, or its ``pseudo_labels.top_k`` largest entries when set.
    """
    params = params_or_exit(params_file, iteration)
    torch_threads()
    pl = params.pseudo_labels
    with friendly_errors():
        # the first teacher was trained with teacher.noise, later ones (students) with noise
        first = params.iterations[iteration].teacher == "teacher"
        teacher_noise = params.teacher.noise if first else params.noise
        model, spec, _ = load_classifier(
            teacher, drop_rate=teacher_noise.dropout, drop_path_rate=teacher_noise.stochastic_depth
        )
        pool = load_imageset(unlabeled)
    if pl.top_k is not None and pl.top_k > spec.num_classes:  # checked before the (long) prediction
        fail(f"pseudo_labels.top_k: got {pl.top_k}; the teacher has {spec.num_classes} classes (1..{spec.num_classes})")
    device = resolve_device(params.device)
    timer = Timer()
    with stage_run("predict", params, ("pseudo_labels",), iteration):
        # Paper: the teacher is NOT noised when it labels (eval mode, clean images).
        # (pseudo_labels.noised_teacher is the Table 6 ablation: the teacher's own training noise on)
        noised = pl.noised_teacher
        augment = BatchAugment(teacher_noise) if noised else None
        model = model.to(device)
        images = images_tensor(pool.images)
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        # Streamed: logits -> softmax -> shards one chunk at a time, so only (N,) pred/conf stay in
        # memory, not (N, K) logits and probs. Chunks are whole batches at the same offsets as one
        # call over the pool (same batches, same RNG draws when noised): identical output.
        chunk = pl.batch_size * max(1, pl.shard_size // pl.batch_size)
        pred = np.empty(len(pool), dtype=np.int64)
        conf = np.empty(len(pool), dtype=np.float32)
        pending: list[np.ndarray] = []  # probs of predicted rows not yet in a shard, in order
        written = shard = 0
        for start in tqdm(range(0, len(pool), chunk), desc="predict", unit="chunk", mininterval=5.0):
            batch = images[start : start + chunk]
            logits = predict_logits(
                model, batch, pl.batch_size, device, progress=False, augment=augment, model_noise=noised
            )
            probs = softmax(logits, pl.temperature)
            pred[start : start + len(probs)] = probs.argmax(1)
            conf[start : start + len(probs)] = probs.max(1)
            pending.append(probs)
            done = start + len(probs) == len(pool)
            while pending and (done or sum(map(len, pending)) >= pl.shard_size):
                buffer = np.concatenate(pending)
                rows = buffer[: pl.shard_size]
                pending = [buffer[pl.shard_size :]] if len(buffer) > pl.shard_size else []
                sl = slice(written, written + len(rows))
                # label: ground truth for reporting only; top_k=None keeps the full distribution
                table = prediction_table(pool.ids[sl], pool.source[sl], pool.labels[sl], rows, pl.top_k)
                pq.write_table(table, tmp / f"part-{shard:05d}.parquet")
                written, shard = written + len(rows), shard + 1
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
        in_domain = pool.labels >= 0
        ood = ~in_domain
        write_metrics(
            metrics,
            {
                "images": len(pool),
                # no row has a known label with data.source folders (all -1): null, not a warning + NaN
                "pseudo_label_accuracy": float((pred[in_domain] == pool.labels[in_domain]).mean())
                if in_domain.any()
                else float("nan"),
                "mean_confidence_in_domain": float(conf[in_domain].mean()) if in_domain.any() else float("nan"),
                "mean_confidence_out_of_domain": float(conf[ood].mean()) if ood.any() else float("nan"),
                "seconds": timer.seconds,
                "images_per_second": round(len(pool) / max(timer.seconds, 1e-9), 1),
            },
        )


if __name__ == "__main__":
    typer.run(main)
