"""The teacher's predictions as a folder of Parquet shards: input shard j -> output file j, its key, the metrics.

The pool is cut into input shards, and ``predict`` labels each one into its own output file
``part-<j:05d>.parquet`` (:func:`prediction_table`, :func:`write_shard`), so shards are independent jobs.
An input shard (:class:`PoolShard`) is either a row range of the in-memory pool ``unlabeled.npz``
(:class:`PoolRows`: shard ``j`` is rows ``[j * shard_size, (j + 1) * shard_size)``, :func:`input_shards`) or
the j-th tar file of the WebDataset folder ``unlabeled.wds`` (:class:`TarShard`, listed by its ``_info.json``);
a tar shard's output rows also carry the sample ``key`` and the tar's name (``shard``), so the student can
find the selected images in the tars. Beside each file a hidden content key ``.part-<j:05d>.parquet.key``
records what it was labelled from (the teacher checkpoint's md5, the shard's rows and their md5 or the tar
file's md5, the pseudo-label params) and the file's own md5: :func:`shard_is_current` tells a finished shard
(skip it) from a missing, damaged or stale one (rewrite it). The key is a file of its own rather than Parquet
metadata so that a shard's bytes are exactly its table's, whichever job wrote it; pyarrow skips dot-files, so
``filter-balance`` (:func:`shard_files`) never reads a key or a temporary file as a shard. Only NumPy, PyArrow
and PIL here: the filter-balance side never needs torch.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from noisy_student.data.imageset import ImageSet, load_imageset
from noisy_student.data.wds import INFO_FILE, WDS_SUFFIX, WdsSample, iter_tar, read_info
from noisy_student.io import atomic_path, write_json
from noisy_student.pseudo_labels.targets import TOPK_CLASSES, TOPK_PROBS, parquet_errors, top_k

KEY_FORMAT = 1  # bump when what a shard holds changes for the same inputs: every existing shard is then rewritten
METRIC_COLUMNS = ["label", "pred", "confidence"]
KEY_COLUMNS = ["key", "shard"]  # a tar pool's rows: the sample key and the tar file's name


@dataclass(frozen=True)
class InputShard:
    """Input shard ``index`` of an in-memory pool: its rows ``[start, stop)``, labelled into output file ``index``.

    ``predict`` reads it bound to its pool (:class:`PoolRows`); :func:`write_prediction_shards` cuts
    a pool's probabilities at the same boundaries.
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


# ---------------------------------------------------------------------------
# Input shards as predict reads them, from either pool: rows of unlabeled.npz or tars of unlabeled.wds.
# ---------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ShardBatch:
    """One batch of an input shard, as the teacher sees it, and which of its rows belong to the shard.

    ``images``: ``(B, H, W)`` or ``(B, H, W, C)`` uint8. ``keep``: the slice of those ``B`` rows that
    belong to the shard (a row-range shard's first and last batch may also hold rows of its
    neighbours: :meth:`PoolRows.batches`). ``ids`` / ``labels`` / ``source`` ``(n,)`` describe the kept
    ``n`` rows; ``keys`` ``(n,)`` str: their sample keys, tar shards only.
    """

    images: np.ndarray
    keep: slice
    ids: np.ndarray
    labels: np.ndarray
    source: np.ndarray
    keys: np.ndarray | None = None


class PoolShard(Protocol):
    """An input shard of ``predict``, whichever the pool: labelled into output file ``index``."""

    @property
    def index(self) -> int:
        """Its position in the pool's shards: the output file ``part-<index:05d>.parquet``."""
        ...

    @property
    def file(self) -> str | None:
        """The tar file's name (the output's ``shard`` column); None for rows of an in-memory pool."""
        ...

    def __len__(self) -> int: ...

    def digest(self) -> str:
        """md5 of what the shard's output is made from (its images, labels, ids, sources, keys)."""
        ...

    def content(self) -> dict[str, Any]:
        """Where its rows come from and :meth:`digest`: the input part of the output's content key."""
        ...

    def batches(self, batch_size: int) -> Iterator[ShardBatch]:
        """Its images in batches of ``batch_size`` (the last may be shorter), in order, with their rows."""
        ...


@dataclass(frozen=True, eq=False)
class PoolRows:
    """The rows ``rows`` of the in-memory ``pool`` (``unlabeled.npz``) as an input shard."""

    rows: InputShard
    pool: ImageSet = field(repr=False)

    @property
    def index(self) -> int:
        return self.rows.index

    @property
    def file(self) -> None:
        return None

    def __len__(self) -> int:
        return len(self.rows)

    def digest(self) -> str:
        return self.rows.digest(self.pool)

    def content(self) -> dict[str, Any]:
        rows = self.rows
        return {"shard": rows.index, "start": rows.start, "stop": rows.stop, "inputs_md5": self.digest()}

    def batches(self, batch_size: int) -> Iterator[ShardBatch]:
        """Batches at multiples of ``batch_size`` from the start of the pool, as one pass over the whole pool runs.

        A shard whose ends fall inside a batch also runs that batch's rows of its neighbour (``keep``
        drops them; at most one batch per end, none when ``shard_size`` is a multiple of
        ``batch_size``), so every row is computed in the same batch however the pool is sharded.
        """
        pool, start, stop = self.pool, self.rows.start, self.rows.stop
        lo, hi = start - start % batch_size, min(len(pool), -(-stop // batch_size) * batch_size)
        for s in range(lo, hi, batch_size):
            e = min(s + batch_size, hi)
            a, b = max(s, start), min(e, stop)
            yield ShardBatch(pool.images[s:e], slice(a - s, b - s), pool.ids[a:b], pool.labels[a:b], pool.source[a:b])


@dataclass(frozen=True)
class TarShard:
    """Input shard ``index`` of a tar pool: the tar file ``path`` with its ``samples`` samples (from ``_info.json``)."""

    index: int
    path: Path
    samples: int

    @property
    def file(self) -> str:
        return self.path.name

    def __len__(self) -> int:
        return self.samples

    def digest(self) -> str:
        """md5 of the tar file: its samples' images, labels, ids, sources and keys, and nothing else (fixed mtime)."""
        return file_md5(self.path)

    def content(self) -> dict[str, Any]:
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
                "(`prepare` with data.format: wds, or `noisy-student shard`)"
            )


def _tar_batch(samples: list[WdsSample]) -> ShardBatch:
    return ShardBatch(
        np.stack([s.image for s in samples]),
        slice(0, len(samples)),
        np.array([s.id for s in samples], dtype=np.int64),
        np.array([s.label for s in samples], dtype=np.int64),
        np.array([s.source for s in samples], dtype=str),
        np.array([s.key for s in samples], dtype=str),
    )


@dataclass(frozen=True)
class TarPool:
    """An unlabeled pool as a folder of WebDataset tars (``unlabeled.wds``): input shard j is ``shards[j]``."""

    folder: Path
    shards: tuple[TarShard, ...]

    def __len__(self) -> int:
        return sum(len(s) for s in self.shards)


def load_tar_pool(folder: Path) -> TarPool:
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


def load_pool(path: Path) -> ImageSet | TarPool:
    """The unlabeled pool at ``path``: a folder of tars when its name ends in ``.wds``, else an ``.npz`` ImageSet."""
    path = Path(path)
    return load_tar_pool(path) if path.name.endswith(WDS_SUFFIX) else load_imageset(path)


def pool_shards(pool: ImageSet | TarPool, shard_size: int) -> list[PoolShard]:
    """The input shards of ``pool``, in order: its tars, or row ranges of ``shard_size`` (:func:`input_shards`)."""
    if isinstance(pool, TarPool):
        return list(pool.shards)
    return [PoolRows(rows, pool) for rows in input_shards(len(pool), shard_size)]


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
    ids: np.ndarray,
    source: np.ndarray,
    labels: np.ndarray,
    probs: np.ndarray,
    k: int | None = None,
    keys: np.ndarray | None = None,
    shard: str | None = None,
) -> pa.Table:
    """One shard of ``predict``'s output for ``N`` images.

    Columns: ``id``, ``source``, ``label`` (ground truth, -1 for out-of-domain;
    reporting only), ``pred`` (int32), ``confidence`` (top-1 probability), then
    either ``probs`` (the full ``(N, K)`` distribution, ``k=None``) or
    ``topk_probs`` / ``topk_classes`` (``(N, k)`` float32 / int32, largest first),
    then, for a tar pool (``keys`` ``(N,)`` str given, with the tar's name ``shard``),
    ``key`` and ``shard`` (str). Filter-balance selects on ``pred``/``confidence``
    (``label`` for its report) and copies the other columns as they are, so every
    layout goes through it unchanged.
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
    if keys is not None:
        if shard is None:
            raise ValueError("prediction_table: sample keys need the name of their tar (shard)")
        columns["key"] = pa.array(keys.astype(str))
        columns["shard"] = pa.array([shard] * len(keys), pa.string())
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
