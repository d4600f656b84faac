"""The teacher's predictions as a folder of Parquet shards: input shard j -> output file j, its key, the metrics.

The pool is cut into input shards of ``pseudo_labels.shard_size`` rows (:func:`input_shards`: shard ``j`` is
rows ``[j * shard_size, (j + 1) * shard_size)``), and ``predict`` labels each one into its own output file
``part-<j:05d>.parquet`` (:func:`prediction_table`, :func:`write_shard`), so shards are independent jobs. Beside
each file a hidden content key ``.part-<j:05d>.parquet.key`` records what it was labelled from (the teacher
checkpoint's md5, the shard's rows and their md5, the pseudo-label params) and the file's own md5:
:func:`shard_is_current` tells a finished shard (skip it) from a missing, damaged or stale one (rewrite it).
The key is a file of its own rather than Parquet metadata so that a shard's bytes are exactly its table's,
whichever job wrote it; pyarrow skips dot-files, so ``filter-balance`` (:func:`shard_files`) never reads a key
or a temporary file as a shard. Only NumPy and PyArrow here: the filter-balance side never needs torch.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from noisy_student.data.imageset import ImageSet
from noisy_student.io import atomic_path, write_json
from noisy_student.pseudo_labels.targets import TOPK_CLASSES, TOPK_PROBS, parquet_errors, top_k

KEY_FORMAT = 1  # bump when what a shard holds changes for the same inputs: every existing shard is then rewritten
METRIC_COLUMNS = ["label", "pred", "confidence"]


@dataclass(frozen=True)
class InputShard:
    """Input shard ``index``: the pool rows ``[start, stop)``, labelled into output file ``index``.

    The unit of work of ``predict``. Today a row range of the in-memory pool; when input shards
    become files (WebDataset tars), this class, :func:`input_shards` and :meth:`digest` are what change.
    """

    index: int
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start

    def rows(self, pool: ImageSet) -> ImageSet:
        """The shard's images, labels, ids and sources."""
        sl = slice(self.start, self.stop)
        return ImageSet(pool.images[sl], pool.labels[sl], pool.ids[sl], pool.source[sl])

    def digest(self, pool: ImageSet) -> str:
        """md5 of everything the shard's output file is made from: its images, labels, ids and sources."""
        rows = self.rows(pool)
        h = hashlib.md5()
        for name, values in (("images", rows.images), ("labels", rows.labels), ("ids", rows.ids)):
            h.update(f"{name} {values.dtype.str} {values.shape}\n".encode())
            h.update(np.ascontiguousarray(values).data)
        # sources as text: the pool's string width (its longest source) must not change the digest
        h.update("\0".join(map(str, rows.source.tolist())).encode())
        return h.hexdigest()


def input_shards(pool_size: int, shard_size: int) -> list[InputShard]:
    """The pool's input shards: ``j`` is rows ``[j * shard_size, (j + 1) * shard_size)``, the last one shorter."""
    if shard_size < 1:
        raise ValueError(f"pseudo_labels.shard_size: got {shard_size}; expected >= 1")
    return [
        InputShard(j, start, min(start + shard_size, pool_size))
        for j, start in enumerate(range(0, pool_size, shard_size))
    ]


def shard_path(out: Path, index: int) -> Path:
    """Output file of input shard ``index`` in the predictions folder ``out``."""
    return Path(out) / f"part-{index:05d}.parquet"


def key_path(shard: Path) -> Path:
    """The hidden content key beside the output file ``shard``."""
    return shard.with_name(f".{shard.name}.key")


def file_md5(path: str | Path) -> str:
    """md5 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.md5()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


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
    written; ``FileNotFoundError`` when the folder or its shards are missing. Dot-files (content keys,
    temporary files of a writer) are not shards.
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


def write_shard(path: Path, table: pa.Table, key: dict[str, Any]) -> None:
    """Write ``table`` to the output file ``path`` atomically, then its content ``key`` (+ the file's md5) beside it.

    The old key is removed first, so a kill between the two writes leaves a file without a key
    (rewritten by the next run), never a key vouching for another file. The Parquet bytes are
    ``pq.write_table(table)``'s, the same whichever job writes the shard.
    """
    key_file = key_path(path)
    key_file.unlink(missing_ok=True)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
        md5 = file_md5(tmp)
    write_json(key_file, {"content": key, "rows": table.num_rows, "md5": md5})


def shard_is_current(path: Path, key: dict[str, Any], rows: int) -> bool:
    """Whether the output file ``path`` holds what a run with content ``key`` writes (``rows`` rows): skip it then.

    True only when its key file records ``key`` (same teacher, input rows, params) and the file's md5,
    and the file's footer reads ``rows`` rows. A missing file or key, a truncated or otherwise damaged
    file (footer, md5) and a file labelled by another teacher or with other params (key) are all False.
    """
    try:
        stored = json.loads(key_path(path).read_text())
        return (
            isinstance(stored, dict)
            and stored.get("content") == json.loads(json.dumps(key))  # as the JSON round trip stores it
            and stored.get("rows") == rows == pq.read_metadata(path).num_rows
            and stored.get("md5") == file_md5(path)
        )
    except (OSError, ValueError):  # missing or unreadable key or file (pyarrow's ArrowInvalid is a ValueError)
        return False


def remove_other_files(out: Path, count: int) -> list[Path]:
    """Delete everything in ``out`` but the output files of shards ``0..count-1`` and their keys; return it.

    What the run that completes the folder does last, so the folder holds exactly one pool's shards:
    no shard of an earlier, larger pool or smaller ``shard_size``, no temporary file of a killed writer.
    """
    keep = {p.name for j in range(count) for p in (shard_path(out, j), key_path(shard_path(out, j)))}
    removed = sorted(p for p in out.iterdir() if p.name not in keep)
    for path in removed:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    return removed


def write_prediction_shards(
    pool: ImageSet, probs_chunks: Iterable[np.ndarray], out: Path, shard_size: int, k: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Stream a whole pool's probabilities into a fresh folder ``out`` of shards of ``shard_size`` rows, at once.

    The files are those ``predict`` writes for the same probabilities (same boundaries, names and
    bytes), without content keys, so ``predict`` would rewrite them; ``predict`` itself labels shard by
    shard (:func:`write_shard`). ``probs_chunks`` yields ``(n_i, K)`` float32 probabilities of
    consecutive pool rows, in pool order, covering the pool; shard boundaries do not depend on the
    chunk sizes, and only the rows of one shard (plus one chunk) are held at a time. Rows are written
    to ``out.tmp``, renamed to ``out`` once complete. ``k`` stores the top-k columns instead of the
    full distribution.

    Returns ``(pred, confidence)``: ``(N,)`` int64 predicted class and ``(N,)`` float32 top-1
    probability of every pool row.
    """
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    pred = np.empty(len(pool), dtype=np.int64)
    conf = np.empty(len(pool), dtype=np.float32)
    shards = iter(input_shards(len(pool), shard_size))
    pending: list[np.ndarray] = []  # probs of predicted rows not yet in a shard, in order
    seen = 0
    for probs in probs_chunks:
        pred[seen : seen + len(probs)] = probs.argmax(1)
        conf[seen : seen + len(probs)] = probs.max(1)
        seen += len(probs)
        pending.append(probs)
        done = seen == len(pool)
        while pending and (done or sum(map(len, pending)) >= shard_size):
            buffer = np.concatenate(pending)
            shard = next(shards)
            rows = buffer[: len(shard)]
            pending = [buffer[len(shard) :]] if len(buffer) > len(shard) else []
            data = shard.rows(pool)
            # label: ground truth for reporting only; k=None keeps the full distribution
            pq.write_table(prediction_table(data.ids, data.source, data.labels, rows, k), shard_path(tmp, shard.index))
    if seen != len(pool):
        raise ValueError(f"predictions cover {seen} rows of a pool of {len(pool)}")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return pred, conf


def predict_metrics(
    labels: np.ndarray, pred: np.ndarray, conf: np.ndarray, seconds: float, predicted: int | None = None
) -> dict[str, Any]:
    """``predict``'s metrics JSON from the pool's ``(N,)`` labels (-1: unknown), predictions and confidences.

    ``seconds``: the wall time of the run; ``images_per_second`` is ``predicted`` (the images it
    labelled; default all ``N``) over it, so a run that found shards already written reports the
    rate at which it labelled the rest.

    Pseudo-label accuracy and in-domain confidence are over rows with a known
    label, out-of-domain confidence over label -1; NaN (null in the JSON) where
    there is no such row (with ``data.source: folders`` every label is -1).
    """
    in_domain = labels >= 0
    ood = ~in_domain
    predicted = len(labels) if predicted is None else predicted
    return {
        "images": len(labels),
        "pseudo_label_accuracy": float((pred[in_domain] == labels[in_domain]).mean())
        if in_domain.any()
        else float("nan"),
        "mean_confidence_in_domain": float(conf[in_domain].mean()) if in_domain.any() else float("nan"),
        "mean_confidence_out_of_domain": float(conf[ood].mean()) if ood.any() else float("nan"),
        "seconds": seconds,
        "images_per_second": round(predicted / max(seconds, 1e-9), 1),
    }


def shard_metrics(files: Sequence[Path], seconds: float, predicted: int) -> dict[str, Any]:
    """:func:`predict_metrics` of the written output ``files`` (in pool order), whichever jobs wrote them.

    Reads only their ``label``, ``pred`` and ``confidence`` columns.
    """
    columns: dict[str, list[np.ndarray]] = {name: [] for name in METRIC_COLUMNS}
    for path in files:
        with parquet_errors(path, "predict"):
            table = pq.read_table(path, columns=METRIC_COLUMNS)
        for name in METRIC_COLUMNS:
            columns[name].append(table[name].to_numpy())
    empty = {"label": np.int64, "pred": np.int32, "confidence": np.float32}
    labels, pred, conf = (np.concatenate(columns[n]) if files else np.zeros(0, empty[n]) for n in METRIC_COLUMNS)
    return predict_metrics(labels, pred, conf, seconds, predicted)
