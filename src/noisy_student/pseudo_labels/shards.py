"""The teacher's predictions as a folder of Parquet shards: input tar j -> output file j, its key, the metrics.

The unlabeled pool is a folder of WebDataset tars (``unlabeled.wds``, :mod:`noisy_student.data.wds`);
``predict`` labels each tar (:class:`TarShard`) into its own output file ``part-<j:05d>.parquet``
(:func:`prediction_table`, :func:`write_shard`), so tars are independent jobs; every output row carries
the image ``id`` and its tar's name (``shard``), which is how the student finds a selected image
whether it holds the pool in memory (by id) or streams the tars. Beside each file a hidden content key
``.part-<j:05d>.parquet.key`` records what it was labelled from (the teacher checkpoint's md5, the tar
file's md5, the pseudo-label params) and the file's own md5: :func:`shard_is_current` tells a finished
shard (skip it) from a missing, damaged or stale one (rewrite it). The key is a file of its own rather
than Parquet metadata so that a shard's bytes are exactly its table's, whichever job wrote it; pyarrow
skips dot-files, so ``filter-balance`` (:func:`shard_files`) never reads a key or a temporary file as a
shard. Only NumPy, PyArrow and PIL here: the filter-balance side never needs torch.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from noisy_student.data.wds import INFO_FILE, WdsSample, iter_tar, read_info
from noisy_student.io import atomic_path, write_json
from noisy_student.pseudo_labels.targets import TOPK_CLASSES, TOPK_PROBS, parquet_errors, top_k

# bump when what a shard holds changes for the same inputs: every existing shard is then rewritten
# (2: every pool is a tar folder; rows carry id and shard, no sample key)
KEY_FORMAT = 2
METRIC_COLUMNS = ["label", "pred", "confidence"]


@dataclass(frozen=True, eq=False)
class ShardBatch:
    """One batch of a tar, as the teacher sees it: ``images`` ``(B, H, W)`` or ``(B, H, W, C)`` uint8 and
    the ``(B,)`` ``ids``, ``labels`` and ``source`` of its samples."""

    images: np.ndarray
    ids: np.ndarray
    labels: np.ndarray
    source: np.ndarray


@dataclass(frozen=True)
class TarShard:
    """Input shard ``index`` of the pool: the tar file ``path`` with its ``samples`` samples (from ``_info.json``)."""

    index: int
    path: Path
    samples: int

    @property
    def file(self) -> str:
        """The tar's name inside the pool folder: the output's ``shard`` column."""
        return self.path.name

    def __len__(self) -> int:
        return self.samples

    def digest(self) -> str:
        """md5 of the tar file: its samples' images, labels, ids, sources and keys, and nothing else (fixed mtime)."""
        return file_md5(self.path)

    def content(self) -> dict[str, Any]:
        """Where its rows come from: the input part of the output's content key."""
        return {"shard": self.index, "tar": self.file, "samples": self.samples, "tar_md5": self.digest()}

    def batches(self, batch_size: int) -> Iterator[ShardBatch]:
        """The tar's samples in file order, in batches from its first sample (each tar starts a batch).

        Raises ``ValueError`` naming the tar when its images differ in shape or mode, or when it holds
        another number of samples than ``_info.json`` lists (checked after the last batch, before
        ``predict`` writes anything).
        """
        pending: list[WdsSample] = []
        count, shape = 0, None
        for sample in iter_tar(self.path):
            shape = shape or sample.image.shape
            if sample.image.shape != shape:
                raise ValueError(
                    f"{self.path}: sample {sample.key} is an image {sample.image.shape}, the tar's first {shape}; "
                    "expected every image of the pool at data.image_size, with the same channels"
                )
            pending.append(sample)
            count += 1
            if len(pending) == batch_size:
                yield _tar_batch(pending)
                pending = []
        if pending:
            yield _tar_batch(pending)
        if count != self.samples:
            raise ValueError(
                f"{self.path}: holds {count} samples, {INFO_FILE} lists {self.samples}; rewrite the folder "
                "(the `prepare` stage, or `noisy-student shard`)"
            )


def _tar_batch(samples: list[WdsSample]) -> ShardBatch:
    return ShardBatch(
        np.stack([s.image for s in samples]),
        np.array([s.id for s in samples], dtype=np.int64),
        np.array([s.label for s in samples], dtype=np.int64),
        np.array([s.source for s in samples], dtype=str),
    )


@dataclass(frozen=True)
class TarPool:
    """The unlabeled pool, a folder of WebDataset tars (``unlabeled.wds``): input shard j is ``shards[j]``."""

    folder: Path
    shards: tuple[TarShard, ...]

    def __len__(self) -> int:
        return sum(len(s) for s in self.shards)


def load_pool(folder: Path) -> TarPool:
    """The tar pool in ``folder`` from its ``_info.json``: tar j is the j-th of the split's ``filenames``.

    Raises ``FileNotFoundError`` for a missing folder, ``_info.json`` or listed tar and ``ValueError``
    for an ``_info.json`` that is not timm's wds info of one split (messages name the file).
    """
    folder = Path(folder)
    info = read_info(folder)
    shards = tuple(
        TarShard(j, path, n) for j, (path, n) in enumerate(zip(info.paths(folder), info.shard_lengths, strict=True))
    )
    return TarPool(folder, shards)


# ---------------------------------------------------------------------------
# Output files.
# ---------------------------------------------------------------------------


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
    ids: np.ndarray, source: np.ndarray, labels: np.ndarray, probs: np.ndarray, shard: str, k: int | None = None
) -> pa.Table:
    """One shard of ``predict``'s output for ``N`` images of the tar ``shard``.

    Columns: ``id``, ``source``, ``label`` (ground truth, -1 for out-of-domain;
    reporting only), ``pred`` (int32), ``confidence`` (top-1 probability), then
    either ``probs`` (the full ``(N, K)`` distribution, ``k=None``) or
    ``topk_probs`` / ``topk_classes`` (``(N, k)`` float32 / int32, largest first),
    then ``shard`` (str: the tar's name, where a streaming student reads the image).
    Filter-balance selects on ``pred``/``confidence`` (``label`` for its report) and
    copies the other columns as they are, so every layout goes through it unchanged.
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
    columns["shard"] = pa.array([shard] * len(ids), pa.string())
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
    no shard of an earlier, larger pool or smaller ``data.wds_shard_size``, no temporary file of a killed writer.
    """
    keep = {p.name for j in range(count) for p in (shard_path(out, j), key_path(shard_path(out, j)))}
    removed = sorted(p for p in out.iterdir() if p.name not in keep)
    for path in removed:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    return removed


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
