"""The teacher's predictions as a folder of Parquet shards: their layout, the streaming writer, its metrics.

``predict`` writes ``part-00000.parquet``, ``part-00001.parquet``, ... of
``pseudo_labels.shard_size`` rows each (:func:`prediction_table`);
``filter-balance`` lists them with :func:`shard_files`. Only NumPy and
PyArrow here: the filter-balance side never needs torch.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from noisy_student.data.imageset import ImageSet
from noisy_student.pseudo_labels.targets import TOPK_CLASSES, TOPK_PROBS, parquet_errors, top_k


def prediction_table(
    ids: np.ndarray, source: np.ndarray, labels: np.ndarray, probs: np.ndarray, k: int | None = None
) -> pa.Table:
    """One shard of ``predict``'s output for ``N`` images.

    Columns: ``id``, ``source``, ``label`` (ground truth, -1 for out-of-domain;
    reporting only), ``pred`` (int32), ``confidence`` (top-1 probability), then
    either ``probs`` (the full ``(N, K)`` distribution, ``k=None``) or
    ``topk_probs`` / ``topk_classes`` (``(N, k)`` float32 / int32, largest first).
    Filter-balance selects on ``pred``/``confidence`` (``label`` for its
    report) and copies the other columns as they are, so both layouts go
    through it unchanged.
    """
    columns: dict[str, pa.Array] = {
        "id": pa.array(ids),
        "source": pa.array(source.astype(str)),
        "label": pa.array(labels),
        "pred": pa.array(probs.argmax(1).astype(np.int32)),
        "confidence": pa.array(probs.max(1)),
    }
    if k is None:
        columns["probs"] = pa.FixedSizeListArray.from_arrays(pa.array(probs.reshape(-1)), probs.shape[1])
    else:
        values, classes = top_k(probs, k)
        columns[TOPK_PROBS] = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), k)
        columns[TOPK_CLASSES] = pa.FixedSizeListArray.from_arrays(pa.array(classes.reshape(-1)), k)
    return pa.table(columns)


def shard_files(predictions: Path) -> list[str]:
    """The Parquet shards of a predictions folder, in the order ``pq.read_table(folder)`` reads them.

    Every shard's footer is read, so a truncated shard (e.g. a copy cut short) stops here with a
    :class:`~noisy_student.pseudo_labels.targets.ParquetReadError` naming it, before anything is
    written; ``FileNotFoundError`` when the folder or its shards are missing.
    """
    if not predictions.is_dir():
        raise FileNotFoundError(f"{predictions}: predictions folder not found (run `predict` first)")
    files = list(pq.ParquetDataset(str(predictions)).files)
    if not files:
        raise FileNotFoundError(f"{predictions}: no Parquet shards in the predictions folder")
    for path in files:
        with parquet_errors(path, "predict"):
            pq.read_metadata(path)
    return files


def write_prediction_shards(
    pool: ImageSet, probs_chunks: Iterable[np.ndarray], out: Path, shard_size: int, k: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Stream the pool's probabilities into shards of ``shard_size`` rows under ``out``, replacing it at the end.

    ``probs_chunks`` yields ``(n_i, K)`` float32 probabilities of consecutive
    pool rows, in pool order, covering the pool; shard boundaries do not depend
    on the chunk sizes, and only the rows of one shard (plus one chunk) are
    held at a time. Rows are written to ``out.tmp`` and renamed to ``out`` once
    complete, so a killed run never leaves a partial folder under ``out``.
    ``k`` stores the top-k columns instead of the full distribution.

    Returns ``(pred, confidence)``: ``(N,)`` int64 predicted class and ``(N,)``
    float32 top-1 probability of every pool row.
    """
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    pred = np.empty(len(pool), dtype=np.int64)
    conf = np.empty(len(pool), dtype=np.float32)
    pending: list[np.ndarray] = []  # probs of predicted rows not yet in a shard, in order
    seen = written = shard = 0
    for probs in probs_chunks:
        pred[seen : seen + len(probs)] = probs.argmax(1)
        conf[seen : seen + len(probs)] = probs.max(1)
        seen += len(probs)
        pending.append(probs)
        done = seen == len(pool)
        while pending and (done or sum(map(len, pending)) >= shard_size):
            buffer = np.concatenate(pending)
            rows = buffer[:shard_size]
            pending = [buffer[shard_size:]] if len(buffer) > shard_size else []
            sl = slice(written, written + len(rows))
            # label: ground truth for reporting only; k=None keeps the full distribution
            table = prediction_table(pool.ids[sl], pool.source[sl], pool.labels[sl], rows, k)
            pq.write_table(table, tmp / f"part-{shard:05d}.parquet")
            written, shard = written + len(rows), shard + 1
    if seen != len(pool):
        raise ValueError(f"predictions cover {seen} rows of a pool of {len(pool)}")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return pred, conf


def predict_metrics(labels: np.ndarray, pred: np.ndarray, conf: np.ndarray, seconds: float) -> dict[str, Any]:
    """``predict``'s metrics JSON from the pool's ``(N,)`` labels (-1: unknown), predictions and confidences.

    ``seconds``: the wall time of the prediction, also turned into ``images_per_second``.

    Pseudo-label accuracy and in-domain confidence are over rows with a known
    label, out-of-domain confidence over label -1; NaN (null in the JSON) where
    there is no such row (with ``data.source: folders`` every label is -1).
    """
    in_domain = labels >= 0
    ood = ~in_domain
    return {
        "images": len(labels),
        "pseudo_label_accuracy": float((pred[in_domain] == labels[in_domain]).mean())
        if in_domain.any()
        else float("nan"),
        "mean_confidence_in_domain": float(conf[in_domain].mean()) if in_domain.any() else float("nan"),
        "mean_confidence_out_of_domain": float(conf[ood].mean()) if ood.any() else float("nan"),
        "seconds": seconds,
        "images_per_second": round(len(labels) / max(seconds, 1e-9), 1),
    }
