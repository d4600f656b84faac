"""Pseudo labels keyed by image, for pools streamed from WebDataset shards (``data.format: wds``).

The in-memory path joins ``selected.parquet`` to the pool by row position; a streamed pool has no
positions, so the student joins by the sample key (``f"{id:010d}"``, :mod:`noisy_student.data.wds`)
while it reads the unlabeled tars.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from noisy_student.pseudo_labels.shards import KEY_COLUMNS
from noisy_student.pseudo_labels.targets import read_selected, selection_stats, targets_from_probs


@dataclass(frozen=True)
class KeyedTargets:
    """The selected pseudo-labeled images of one student, one row per unique image.

    ``keys`` ``(M,)`` str: WebDataset sample keys; ``shards`` ``(M,)`` str: the tar file (name inside the
    ``unlabeled.wds`` folder) holding each; ``targets`` ``(M, K)`` float32 rows summing to 1 (soft, or
    one-hot in hard mode); ``copies`` ``(M,)`` int64 >= 1: how often the student sees the image per pass
    (filter-balance's duplicates).
    """

    keys: np.ndarray
    shards: np.ndarray
    targets: np.ndarray
    copies: np.ndarray

    def __post_init__(self) -> None:
        m = len(self.keys)
        for name in ("shards", "targets", "copies"):
            if len(getattr(self, name)) != m:
                raise ValueError(f"KeyedTargets.{name} has {len(getattr(self, name))} rows, keys have {m}")

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def rows(self) -> int:
        """Samples per pass: the sum of ``copies``."""
        return int(self.copies.sum())


def keyed_student_targets(
    selected_path: str | Path,
    num_classes: int,
    mode: Literal["soft", "hard"],
    *,
    threshold: float | None = None,
) -> tuple[KeyedTargets, dict[str, Any]]:
    """The student's pseudo-labeled images from ``selected.parquet`` of a tar pool, keyed for the join with the tars.

    One row per selected image, in the file's order (tar by tar, as ``predict`` wrote them), with
    its ``copies``, not repeated: the stream repeats an image as it reads it. Targets are
    :func:`~noisy_student.pseudo_labels.targets.targets_from_probs` in ``mode`` of the stored
    distribution (top-k rows renormalised). Returns ``(targets, stats)``, ``stats`` as
    :func:`~noisy_student.pseudo_labels.targets.student_targets` reports them.

    Raises the errors of :func:`~noisy_student.pseudo_labels.targets.read_selected` (missing or
    unreadable file, nothing selected, no probability columns), and ``ValueError`` naming the file
    when it has no ``key`` / ``shard`` columns (predicted from an in-memory pool) or holds a key twice.
    """
    table, _, copies, probs = read_selected(selected_path, num_classes, threshold=threshold)
    missing = [name for name in KEY_COLUMNS if name not in table.column_names]
    if missing:
        raise ValueError(
            f"{selected_path}: no {' / '.join(missing)} column; these pseudo labels were predicted from an "
            "in-memory pool (unlabeled.npz); with data.format: wds rerun `predict` on unlabeled.wds (dvc repro)"
        )
    keys = np.asarray(table["key"].to_numpy(zero_copy_only=False), dtype=str)
    shards = np.asarray(table["shard"].to_numpy(zero_copy_only=False), dtype=str)
    unique, counts = np.unique(keys, return_counts=True)
    if len(unique) < len(keys):
        twice = unique[counts > 1].tolist()
        raise ValueError(
            f"{selected_path}: {len(twice)} keys selected more than once (e.g. {twice[:3]}); expected one row per "
            "image (copies counts its repeats): rerun `filter-balance`, and check the pool's keys are unique"
        )
    targets = KeyedTargets(keys, shards, targets_from_probs(probs, mode), copies.astype(np.int64))
    return targets, selection_stats(copies, probs)
