"""Deterministic labeled / unlabeled splits."""

from __future__ import annotations

import numpy as np


def split_labeled_unlabeled(
    labels: np.ndarray, per_class: int, seed: int, unlabeled_size: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Pick ``per_class`` indices of every class as labeled; the rest is the unlabeled pool.

    Returns two disjoint, sorted index arrays into ``labels``. ``unlabeled_size``
    subsamples the pool (uniformly, seeded) when given.
    """
    rng = np.random.default_rng(seed)
    labeled: list[np.ndarray] = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        if len(members) < per_class:
            raise ValueError(f"class {cls} has {len(members)} images, fewer than labeled_per_class={per_class}")
        labeled.append(rng.choice(members, size=per_class, replace=False))
    labeled_idx = np.sort(np.concatenate(labeled))
    rest = np.setdiff1d(np.arange(len(labels)), labeled_idx, assume_unique=True)
    if unlabeled_size is not None and unlabeled_size < len(rest):
        rest = np.sort(rng.choice(rest, size=unlabeled_size, replace=False))
    return labeled_idx, rest
