"""The paper's filter-and-balance rule, applied out of core to ``predict``'s shards, and what it kept and dropped.

:func:`select_rows` is the rule on arrays; :func:`filter_balance_shards` runs
it over a folder of Parquet shards without loading the probabilities, and
:func:`filter_balance` adds the statistics the stage reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from noisy_student.io import atomic_path
from noisy_student.pseudo_labels.shards import shard_files
from noisy_student.pseudo_labels.targets import parquet_errors

if TYPE_CHECKING:  # annotations only: the selection itself needs no pydantic
    from noisy_student.config import FilterParams


# pyarrow's default rows per row group for write_table; writing the same slices
# keeps selected.parquet byte-identical to a single in-memory write_table.
ROW_GROUP_ROWS = 1024 * 1024
SELECTION_COLUMNS = ("pred", "confidence", "label")
CONFIDENCE_BINS = 40  # bins of the confidence histogram over [0, 1] (0.025 wide): the CSV and the PNG share them


def select_rows(
    predicted: np.ndarray,
    confidence: np.ndarray,
    num_classes: int,
    threshold: float,
    per_class: int | None,
    balance: bool,
    seed: int,
    upper: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Select pseudo-labeled rows the way the paper does, from ``(N,)`` predicted classes and top-1 confidences.

    1. drop rows whose ``confidence`` is below ``threshold`` or, when ``upper < 1``, at or above
       ``upper`` (Fig. 5's pools: every image whose confidence lies in one bin ``[threshold, upper)``);
    2. per predicted class keep the ``per_class`` most confident rows (ties:
       the earlier row first; ``per_class=None``: no cap); predictions outside
       ``0..num_classes-1`` match no class;
    3. if ``balance``, a class with fewer than ``per_class`` rows is filled up to
       ``per_class`` by duplicating its rows: every row ``per_class // n`` times
       and ``per_class % n`` rows chosen at random (``seed``, drawn class by
       class in class order) once more.

    Returns ``rows`` ``(M,)`` (int64, sorted), ``copies`` ``(M,)`` (int64, >= 1)
    and a stats dict: ``rows_in``, ``dropped_low_confidence``, ``dropped_above_bin``, ``unique``,
    ``total`` and ``per_class`` (one dict per class). One sort by (class,
    -confidence) with row order as the stable tie-break replaces a scan of all
    rows per class, so 10M rows x 1,000 classes cost one sort instead of 1,000
    passes; ``tests/reference_filter.py`` holds the loop it must equal.
    """
    if predicted.shape != confidence.shape:
        raise ValueError(f"predicted {predicted.shape} and confidence {confidence.shape} differ in shape")
    if balance and per_class is None:
        raise ValueError("balance needs per_class (the number of rows to fill every class up to)")
    rng = np.random.default_rng(seed)
    low = confidence < threshold
    high = confidence >= upper if upper < 1.0 else np.zeros_like(low)
    passed = ~low & ~high
    del low
    cand = np.flatnonzero(passed)
    cls_in = predicted[cand]
    # rows predicting no class in 0..num_classes-1 never match in the reference: leave them out
    valid = (cls_in >= 0) & (cls_in < num_classes)
    if not np.issubdtype(cls_in.dtype, np.integer):
        valid &= cls_in == cls_in.astype(np.int64)
    # int32 class ids and freeing each temporary early keep 10M+ rows at ~30 bytes per row
    cls = cls_in[valid].astype(np.int32)
    cand = cand[valid]
    del cls_in, valid
    passed_per_class = np.bincount(cls, minlength=num_classes)
    order = _class_then_confidence_order(cls, confidence[cand])
    del cls
    cand = cand[order]  # grouped by class, most confident first
    del order
    starts = np.concatenate(([0], np.cumsum(passed_per_class)[:-1]))
    unique = passed_per_class if per_class is None else np.minimum(passed_per_class, per_class)
    kept = np.concatenate([cand[s : s + u] for s, u in zip(starts, unique, strict=True)] + [cand[:0]])
    del cand
    kept_starts = np.concatenate(([0], np.cumsum(unique)[:-1]))
    copies = np.ones(len(kept), dtype=np.int64)
    total_per_class = unique.astype(np.int64)
    for c in range(num_classes):  # the RNG is drawn per class, in class order, like the reference
        n = int(unique[c])
        if balance and per_class is not None and 0 < n < per_class:
            seg = copies[kept_starts[c] : kept_starts[c] + n]  # this class, most confident first
            seg[:] = per_class // n
            seg[rng.choice(n, size=per_class % n, replace=False)] += 1
            total_per_class[c] = per_class
    # back to row order by scattering into a per-row array (O(N)) instead of sorting the kept rows
    per_row = np.zeros(len(predicted), dtype=np.int64)
    per_row[kept] = copies
    rows = np.flatnonzero(per_row).astype(np.int64)
    copies = per_row[rows]
    del per_row
    stats = {
        "rows_in": int(len(predicted)),
        "dropped_low_confidence": int((confidence < threshold).sum()),
        "dropped_above_bin": int(high.sum()),
        "unique": int(len(rows)),
        "total": int(copies.sum()),
        "per_class": [
            {
                "class": c,
                "passed_threshold": int(passed_per_class[c]),
                "unique": int(unique[c]),
                "dropped_over_cap": int(passed_per_class[c] - unique[c]),
                "total": int(total_per_class[c]),
            }
            for c in range(num_classes)
        ],
    }
    return rows, copies, stats


def _class_then_confidence_order(cls: np.ndarray, conf: np.ndarray) -> np.ndarray:
    """Stable order by class ascending, then confidence descending; equal keys keep input order.

    ``cls``/``conf`` are ``(M,)``. For non-negative float32 confidences (every
    softmax) both keys are packed into one uint64 - class in the high 32 bits,
    the inverted IEEE bits of the confidence below (non-negative floats order
    like their bit patterns) - and sorted once, about twice as fast as
    ``np.lexsort`` on 10M rows with the same result. Anything else uses lexsort.
    """
    if conf.dtype == np.float32 and cls.min(initial=0) >= 0 and (conf >= 0).all():
        bits = (conf + np.float32(0)).view(np.uint32)  # + 0 turns -0.0 into 0.0: they tie, as in lexsort
        key = cls.astype(np.uint64) << np.uint64(32)
        key |= np.uint64(0xFFFFFFFF) - bits.astype(np.uint64)
        return np.argsort(key, kind="stable")
    return np.lexsort((-conf, cls))


@dataclass
class ShardSelection:
    """What :func:`filter_balance_shards` selected, plus the small columns the stage reports on.

    ``rows``/``copies`` ``(M,)`` int64 index the concatenated shards (file name
    order); ``pred``/``confidence``/``label`` are ``(N,)`` over all rows.
    """

    rows: np.ndarray
    copies: np.ndarray
    stats: dict[str, Any]
    pred: np.ndarray
    confidence: np.ndarray
    label: np.ndarray


def filter_balance_shards(
    predictions: Path,
    out: Path,
    num_classes: int | None,
    threshold: float,
    per_class: int | None,
    balance: bool,
    seed: int,
    upper: float = 1.0,
) -> ShardSelection:
    """Filter-and-balance a folder of prediction shards out of core and write the selected rows to ``out``.

    Pass 1 reads only ``pred``/``confidence``/``label`` (16 bytes per row,
    whatever the width of the probability columns) and selects with
    :func:`select_rows`. Pass 2 reads one shard at a time, takes its selected
    rows (all columns) and appends ``copies``; rows are written in row groups of
    :data:`ROW_GROUP_ROWS`. The file is byte-identical to
    ``pq.write_table(pq.read_table(predictions).take(rows) + copies)``, with peak
    memory of one shard plus one row group instead of the whole table.
    ``num_classes=None`` reads it from the shards (the width of ``probs``). A shard pyarrow cannot
    read raises :class:`~noisy_student.pseudo_labels.targets.ParquetReadError` naming it; ``out``
    is then left as it was (written atomically).
    """
    files = shard_files(predictions)
    sizes: list[int] = []
    for path in files:
        with parquet_errors(path, "predict"):
            sizes.append(pq.ParquetFile(path).metadata.num_rows)
    offsets = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
    with parquet_errors(files[0], "predict"):
        schema = pq.read_schema(files[0])
    # filled shard by shard into preallocated arrays: no second copy from a final concatenate
    small = {name: np.empty(offsets[-1], dtype=schema.field(name).type.to_pandas_dtype()) for name in SELECTION_COLUMNS}
    for i, path in enumerate(files):
        with parquet_errors(path, "predict"):  # damaged pages surface only when the columns are decoded
            shard = pq.read_table(path, columns=list(SELECTION_COLUMNS))
        for name in SELECTION_COLUMNS:
            small[name][offsets[i] : offsets[i + 1]] = shard[name].to_numpy()
    del shard
    pred, conf, label = (small[name] for name in SELECTION_COLUMNS)
    if num_classes is None:
        # the full distribution's width when stored; with top-k only, the classes the teacher predicted
        probs = schema.field("probs") if "probs" in schema.names else None
        num_classes = probs.type.list_size if probs is not None else int(pred.max(initial=-1)) + 1
    rows, copies, stats = select_rows(pred, conf, num_classes, threshold, per_class, balance, seed, upper)
    bounds = np.searchsorted(rows, offsets)  # rows[bounds[i]:bounds[i+1]] fall in shard i
    with atomic_path(out) as tmp:
        writer: pq.ParquetWriter | None = None
        pending: list[pa.Table] = []
        pending_rows = 0

        def flush(limit: int) -> None:
            """Write full row groups while at least ``limit`` rows wait (``limit=1``: write the rest)."""
            nonlocal writer, pending, pending_rows
            if not pending:
                return
            # one contiguous chunk per column, as Table.take returns it: same pages as the reference write
            buffer = pa.concat_tables(pending).combine_chunks()
            pending = []  # drop the per-shard pieces before encoding: peak = one copy of the buffer
            start = 0
            while pending_rows - start >= limit and pending_rows - start > 0:
                piece = buffer.slice(start, min(ROW_GROUP_ROWS, pending_rows - start))
                if writer is None:
                    writer = pq.ParquetWriter(tmp, piece.schema)
                writer.write_table(piece)
                start += piece.num_rows
            pending = [buffer.slice(start)] if start < pending_rows else []
            pending_rows -= start

        for i, path in enumerate(files):
            lo, hi = int(bounds[i]), int(bounds[i + 1])
            if lo == hi:
                continue
            with parquet_errors(path, "predict"):
                shard = pq.read_table(path).take(rows[lo:hi] - offsets[i])
            pending.append(shard.append_column("copies", [copies[lo:hi]]))
            pending_rows += hi - lo
            del shard
            if pending_rows >= ROW_GROUP_ROWS:
                flush(ROW_GROUP_ROWS)
        flush(1)
        if writer is None:  # nothing selected: an empty table with the full schema, as the reference writes
            with parquet_errors(files[0], "predict"):
                empty = pq.read_table(files[0]).slice(0, 0)
            pq.write_table(empty.append_column("copies", [np.zeros(0, dtype=np.int64)]), tmp)
        else:
            writer.close()
    return ShardSelection(rows, copies, stats, pred, conf, label)


@dataclass
class FilterResult:
    """What :func:`filter_balance` kept and dropped.

    ``stats`` is the stage's metrics JSON: the counts of :func:`select_rows`
    plus out-of-domain images in / kept / dropped and the accuracy of the
    selected in-domain pseudo labels (NaN where not measurable). ``per_class``
    has one row per class (``class``, ``passed_threshold``, ``unique``,
    ``dropped_over_cap``, ``total``); ``confidence`` ``(N,)`` float32 and
    ``out_of_domain`` ``(N,)`` bool cover every predicted row, for the
    confidence histogram.
    """

    stats: dict[str, Any]
    per_class: pd.DataFrame
    confidence: np.ndarray
    out_of_domain: np.ndarray

    @property
    def summary(self) -> str:
        """The line the stage prints."""
        s = self.stats
        return (
            f"filter-balance: {s['unique']} unique / {s['total']} total rows kept of {s['rows_in']}; "
            f"out-of-domain dropped {s['out_of_domain_dropped']}/{s['out_of_domain_in']}"
        )


def filter_balance(predictions: Path, out: Path, params: FilterParams, seed: int) -> FilterResult:
    """Select rows of the ``predictions`` shards by ``params`` (see :func:`select_rows`), write them to ``out``.

    The number of classes is read from the shards. Raises ``FileNotFoundError``
    when the folder or its shards are missing, ``ParquetReadError`` (a ``ValueError``) naming a
    shard pyarrow cannot read.
    """
    # out of core: only pred/confidence/label are loaded; selected rows are streamed shard by shard
    sel = filter_balance_shards(
        predictions,
        out,
        None,
        params.confidence_threshold,
        params.images_per_class,
        params.balance,
        seed,
        params.confidence_max,
    )
    rows, stats, pred, label = sel.rows, sel.stats, sel.pred, sel.label
    is_ood = label < 0
    kept_ood = int(is_ood[rows].sum())
    in_dom_rows = rows[~is_ood[rows]]
    # label -1 marks an out-of-domain image only next to in-domain ones (Fashion-MNIST + digits/photos);
    # with data.source folders every label is -1 (class unknown), so there is no in/out split to count
    nan = float("nan")
    split = bool((~is_ood).any())
    stats.update(
        {
            "out_of_domain_in": int(is_ood.sum()) if split else nan,
            "out_of_domain_kept": kept_ood if split else nan,
            "out_of_domain_dropped": int(is_ood.sum()) - kept_ood if split else nan,
            "selected_pseudo_label_accuracy": float((pred[in_dom_rows] == label[in_dom_rows]).mean())
            if len(in_dom_rows)
            else nan,
        }
    )
    per_class = pd.DataFrame(stats.pop("per_class"))
    return FilterResult(stats, per_class, sel.confidence, is_ood)


def confidence_bins(confidence: np.ndarray, out_of_domain: np.ndarray, bins: int = CONFIDENCE_BINS) -> pd.DataFrame:
    """The histogram of the teacher's top-1 confidence as a table: one row per bin of equal width over [0, 1].

    ``confidence`` ``(N,)`` in 0..1, ``out_of_domain`` ``(N,)`` bool (label < 0). Columns: ``bin_start``,
    ``bin_end``, ``confidence`` (the bin centre); ``pool``, ``in_domain``, ``out_of_domain``: densities (1/unit
    of confidence: each group's bars integrate to 1, so pools of different sizes compare), and their
    ``*_count`` (images). ``pool`` is every row; the in/out split exists only when some row has a known label:
    with ``data.source: folders`` every label is -1 because the class is unknown, not because the image lies
    outside the domain, so both split columns are then empty (NA). A group without rows has zero counts and
    no density (NaN: a density of nothing divides by zero).
    """
    edges = np.linspace(0.0, 1.0, bins + 1)
    split = bool((~out_of_domain).any())
    groups = {
        "pool": np.ones(len(confidence), dtype=bool),
        "in_domain": ~out_of_domain if split else None,
        "out_of_domain": out_of_domain if split else None,
    }
    densities: dict[str, np.ndarray] = {}
    counts: dict[str, Any] = {}  # nullable Int64 arrays: an absent group's counts are NA, written as empty cells
    for name, rows in groups.items():
        if rows is None:
            densities[name], counts[f"{name}_count"] = np.full(bins, np.nan), pd.array([pd.NA] * bins, dtype="Int64")
            continue
        # np.histogram's last bin is closed: a confidence of exactly 1.0 counts, as in a matplotlib histogram
        hist = np.histogram(confidence[rows], bins=edges)[0]
        n = int(rows.sum())
        densities[name] = hist / (n * np.diff(edges)) if n else np.full(bins, np.nan)
        counts[f"{name}_count"] = pd.array(hist, dtype="Int64")
    centres = (edges[:-1] + edges[1:]) / 2
    return pd.DataFrame({"bin_start": edges[:-1], "bin_end": edges[1:], "confidence": centres, **densities, **counts})


def write_table(path: Path, table: pd.DataFrame) -> None:
    """A table as CSV without its index (a DVC plot), atomically; NaN / NA are written as empty cells."""
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
