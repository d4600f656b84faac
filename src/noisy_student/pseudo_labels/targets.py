"""Pseudo labels as training targets: softmax, top-k storage, and the selected table -> the student's targets.

Pure functions of arrays (and one Parquet read in :func:`student_targets`), so
they are tested without a model. The student joins its targets to the pool by image id, whether it
holds the pool in memory (:meth:`SelectedImages.rows`) or streams the tars.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from noisy_student.data.imageset import check_rows


class ParquetReadError(ValueError):
    """A Parquet input pyarrow cannot read (truncated, corrupt, not Parquet); the message names the file and the fix."""


@contextmanager
def parquet_errors(path: str | Path, producer: str) -> Iterator[None]:
    """Re-raise pyarrow's errors while reading ``path`` as one :class:`ParquetReadError` naming it.

    ``producer``: the stage that writes the file (``predict``, ``filter-balance``), named in the fix.
    pyarrow reports a truncated file (no footer) as ``ArrowInvalid`` and damaged pages as ``OSError``,
    neither naming the file nor the way out; a missing file stays a ``FileNotFoundError``.
    """
    try:
        yield
    except FileNotFoundError:
        raise
    except (pa.ArrowInvalid, OSError) as exc:
        reason = " ".join(str(exc).split())  # one line, whatever pyarrow's message holds
        raise ParquetReadError(
            f"{path}: not a readable Parquet file, truncated or corrupt ({reason}); "
            f"rerun the `{producer}` stage (`dvc repro`) or restore the file with `dvc checkout`"
        ) from exc


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature``; ``(N, K)`` float -> ``(N, K)`` float32."""
    z = logits.astype(np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def targets_from_probs(probs: np.ndarray, mode: Literal["soft", "hard"]) -> np.ndarray:
    """Training targets ``(N, K)``: the distribution itself (soft) or its one-hot argmax (hard)."""
    if mode == "soft":
        return probs.astype(np.float32)
    hard = np.zeros_like(probs, dtype=np.float32)
    hard[np.arange(len(probs)), probs.argmax(axis=1)] = 1.0
    return hard


# ---------------------------------------------------------------------------
# Top-k soft labels: store the k largest probabilities, rebuild dense targets.
# ---------------------------------------------------------------------------

TOPK_PROBS = "topk_probs"
TOPK_CLASSES = "topk_classes"


def top_k(probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest entries of each row of ``probs`` ``(N, K)``, largest first.

    Returns ``(values, classes)``: ``(N, k)`` float32 and ``(N, k)`` int32. Ties
    keep the lower class index first (stable sort), the same tie rule as
    ``argmax``, so ``classes[:, 0]`` is always the predicted class.
    """
    if not 1 <= k <= probs.shape[1]:
        raise ValueError(f"pseudo_labels.top_k: got {k}; expected 1..{probs.shape[1]} (the number of classes)")
    if k == probs.shape[1]:
        classes = np.argsort(-probs, axis=1, kind="stable")
    else:
        # argpartition first so 1,000 classes cost O(K) per row; only the k kept are sorted.
        part = np.argpartition(-probs, k - 1, axis=1)[:, :k]
        # order the kept k by (-prob, class) so ties resolve like a stable full sort
        vals = np.take_along_axis(probs, part, axis=1)
        order = np.lexsort((part, -vals), axis=1)
        classes = np.take_along_axis(part, order, axis=1)
        # argpartition may cut through a tie at the k-th value and keep a higher class index;
        # fall back to the exact stable sort for the (rare) rows where that can happen.
        kth = np.take_along_axis(probs, classes[:, -1:], axis=1)
        tie_rows = np.flatnonzero((probs == kth).sum(axis=1) > (vals == kth).sum(axis=1))
        if len(tie_rows):
            classes[tie_rows] = np.argsort(-probs[tie_rows], axis=1, kind="stable")[:, :k]
    classes = np.ascontiguousarray(classes[:, :k])
    return np.take_along_axis(probs, classes, axis=1).astype(np.float32), classes.astype(np.int32)


def dense_from_top_k(values: np.ndarray, classes: np.ndarray, num_classes: int) -> np.ndarray:
    """Dense targets ``(N, num_classes)`` float32 from top-k ``values`` / ``classes`` ``(N, k)``.

    With ``k < num_classes`` the kept mass is renormalised to 1: the soft-target
    cross entropy's gradient is ``sum(t) * p - t``, so unnormalised targets would
    only rescale each image's loss by its kept mass and no longer be a
    distribution; renormalised, ``k = 1`` is exactly the hard label. With
    ``k == num_classes`` the stored softmax is already a distribution and is
    returned bit for bit (renormalising would only add rounding).
    """
    n, k = values.shape
    if classes.shape != (n, k):
        raise ValueError(f"top-k values {values.shape} and classes {classes.shape} differ in shape")
    dense = np.zeros((n, num_classes), dtype=np.float32)
    np.put_along_axis(dense, classes.astype(np.int64), values.astype(np.float32), axis=1)
    if k < num_classes:
        mass = dense.sum(axis=1, dtype=np.float64, keepdims=True)
        dense = (dense / np.where(mass > 0, mass, 1.0)).astype(np.float32)
    return dense


def _fixed_list(table: pa.Table, name: str) -> np.ndarray:
    """A fixed-size-list column as a ``(N, width)`` array."""
    return np.asarray(table[name].combine_chunks().flatten()).reshape(len(table), -1)


def selected_targets(table: pa.Table, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``selected.parquet`` -> ``(ids (N,), copies (N,), probs (N, num_classes) float32)``.

    Reads either layout of :func:`~noisy_student.pseudo_labels.shards.prediction_table`;
    top-k rows become dense targets through :func:`dense_from_top_k`.
    """
    ids = table["id"].to_numpy()
    copies = table["copies"].to_numpy()
    if "probs" in table.column_names:
        probs = _fixed_list(table, "probs")
    elif TOPK_PROBS in table.column_names:
        probs = dense_from_top_k(_fixed_list(table, TOPK_PROBS), _fixed_list(table, TOPK_CLASSES), num_classes)
    else:
        raise ValueError(f"selected pseudo labels have neither 'probs' nor '{TOPK_PROBS}': {table.column_names}")
    return ids, copies, probs


def read_selected(
    selected_path: str | Path, num_classes: int, *, threshold: float | None = None
) -> tuple[pa.Table, np.ndarray, np.ndarray, np.ndarray]:
    """Read ``filter-balance``'s ``selected.parquet``: ``(table, ids (N,), copies (N,), probs (N, num_classes))``.

    One row per selected image (:func:`selected_targets`), in the file's order. Raises
    ``FileNotFoundError`` when the file is missing, :class:`ParquetReadError` (a ``ValueError``)
    naming it when it is not a readable Parquet file, and ``ValueError`` naming it when nothing was
    selected (``threshold``, the ``filter.confidence_threshold`` used, goes into that message when
    given) or when it has no probability columns.
    """
    selected_path = Path(selected_path)
    if not selected_path.is_file():
        raise FileNotFoundError(f"{selected_path}: selected pseudo labels not found (run `filter-balance` first)")
    with parquet_errors(selected_path, "filter-balance"):
        table = pq.read_table(selected_path)
    if len(table) == 0:
        used = "" if threshold is None else f"={threshold}"
        raise ValueError(
            f"{selected_path}: no pseudo-labeled image passed the filter (filter.confidence_threshold{used}); "
            "lower the threshold or train a better teacher"
        )
    try:
        ids, copies, probs = selected_targets(table, num_classes)
    except ValueError as exc:
        raise ValueError(f"{selected_path}: {exc}") from None
    return table, ids, copies, probs


def selection_stats(copies: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """The student's counts of its selected images, ``copies`` ``(N,)`` and dense ``probs`` ``(N, K)``.

    ``pseudo_labeled_rows`` (the sum of copies: rows per pass), ``pseudo_labeled_unique`` (``N``),
    ``copies_sum`` (int) and ``probs_sum`` (float, before duplication), the last two as the student's
    resume key has always hashed them.
    """
    return {
        "pseudo_labeled_rows": int(copies.sum()),
        "pseudo_labeled_unique": int(len(copies)),
        "copies_sum": int(copies.sum()),
        "probs_sum": float(probs.sum()),
    }


@dataclass(frozen=True)
class SelectedImages:
    """The selected pseudo-labeled images of one student, one row per unique image, joined to the pool by id.

    ``ids`` ``(M,)`` int64: the prepared image ids; ``shards`` ``(M,)`` str: the tar of ``unlabeled.wds``
    holding each (a streaming student reads only those); ``targets`` ``(M, K)`` float32 rows summing to 1
    (soft, or one-hot in hard mode); ``copies`` ``(M,)`` int64 >= 1: how often the student sees the image
    per pass (filter-balance's duplicates).
    """

    ids: np.ndarray
    shards: np.ndarray
    targets: np.ndarray
    copies: np.ndarray

    def __post_init__(self) -> None:
        check_rows(self, "ids", "shards", "targets", "copies")

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, pool_ids: np.ndarray, where: str | Path) -> tuple[np.ndarray, np.ndarray]:
        """The student's rows of a pool held in memory: ``(positions (R,), targets (R, K))``, ``R`` the sum of
        copies, each image repeated ``copies`` times in place. ``ValueError`` naming ``where`` (the selected
        file) when an id is not in ``pool_ids`` ``(P,)``."""
        positions = pool_positions(pool_ids, self.ids)
        if (positions < 0).any():
            missing = self.ids[positions < 0].tolist()
            raise ValueError(
                f"{where}: {len(missing)} ids not in the unlabeled pool (e.g. {missing[:3]}); rerun `dvc repro`"
            )
        return np.repeat(positions, self.copies), np.repeat(self.targets, self.copies, axis=0)


def student_targets(
    selected_path: str | Path,
    num_classes: int,
    mode: Literal["soft", "hard"],
    *,
    threshold: float | None = None,
) -> tuple[SelectedImages, dict[str, Any]]:
    """The student's pseudo-labeled images from ``filter-balance``'s ``selected.parquet``, and their stats.

    One row per selected image, in the file's order, with its ``copies`` (not repeated); targets are
    :func:`targets_from_probs` in ``mode`` of the stored distribution (top-k rows renormalised).
    ``stats``: :func:`selection_stats`. Raises the errors of :func:`read_selected`, and ``ValueError``
    naming the file when it has no ``shard`` column (predicted before every pool was a tar folder) or
    holds an id twice.
    """
    table, ids, copies, probs = read_selected(selected_path, num_classes, threshold=threshold)
    if "shard" not in table.column_names:
        raise ValueError(
            f"{selected_path}: no 'shard' column; these pseudo labels were predicted from an older, in-memory "
            "pool (unlabeled.npz): rerun `predict` and `filter-balance` (dvc repro)"
        )
    unique, counts = np.unique(ids, return_counts=True)
    if len(unique) < len(ids):
        twice = unique[counts > 1].tolist()
        raise ValueError(
            f"{selected_path}: {len(twice)} ids selected more than once (e.g. {twice[:3]}); expected one row per "
            "image (copies counts its repeats): rerun `filter-balance`, and check the pool's ids are unique"
        )
    shards = np.asarray(table["shard"].to_numpy(zero_copy_only=False), dtype=str)
    selected = SelectedImages(ids.astype(np.int64), shards, targets_from_probs(probs, mode), copies.astype(np.int64))
    return selected, selection_stats(copies, probs)


def pool_positions(pool_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Position in ``pool_ids`` ``(P,)`` of each of ``ids`` ``(N,)``: ``(N,)`` int64, -1 where absent.

    An id present more than once in the pool maps to its last position. One
    sort of the pool and a binary search per id, instead of a Python dict of
    the whole pool (10M ids).
    """
    if len(pool_ids) == 0:
        return np.full(len(ids), -1, dtype=np.int64)
    order = np.argsort(pool_ids, kind="stable")
    ordered = pool_ids[order]
    # side="right" - 1: the last of equal ids in stable order, i.e. the last occurrence in the pool
    at = np.searchsorted(ordered, ids, side="right") - 1
    at_or_0 = np.maximum(at, 0)
    found = (at >= 0) & (ordered[at_or_0] == ids)
    return np.where(found, order[at_or_0], -1).astype(np.int64)
