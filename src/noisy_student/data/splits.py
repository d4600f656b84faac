"""Deterministic labeled / unlabeled splits and the id ranges of the prepared splits."""

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


# Image ids, unique over the three prepared splits of either source:
# - Fashion-MNIST: train image i -> i, test image i -> TEST_ID_OFFSET + i, out-of-domain image j -> OOD_ID_OFFSET + j;
# - folders: labeled file i -> i, test file i -> test offset + i, unlabeled file j -> unlabeled offset + j (i, j:
#   positions in the sorted file lists, so an id names the same file whatever the cap); folders of a million
#   images or more move both offsets up (id_offsets).
TEST_ID_OFFSET = 1_000_000
OOD_ID_OFFSET = 2_000_000


def id_offsets(labeled: int, test: int) -> tuple[int, int]:
    """The first test id and the first unlabeled id of folders with ``labeled`` / ``test`` images.

    (TEST_ID_OFFSET, OOD_ID_OFFSET) while both splits hold fewer than a million images (every data set
    prepared so far keeps its ids); above, the next power of ten over the larger split and twice it
    (ImageNet's 1.28M labeled images: test ids from 10M, unlabeled from 20M), so ids never collide.
    """
    largest = max(labeled, test)
    if largest < TEST_ID_OFFSET:
        return TEST_ID_OFFSET, OOD_ID_OFFSET
    step = 10 ** len(str(largest))
    return step, 2 * step
