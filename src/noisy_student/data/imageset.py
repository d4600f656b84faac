"""The in-memory image set every stage exchanges (uint8 images + labels + ids), and a prepared folder's classes.

On disk a split is a folder of WebDataset tars: :mod:`noisy_student.data.wds` writes and reads it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from noisy_student.io import write_json
from noisy_student.paths import CLASSES_FILE


@dataclass(frozen=True)
class ImageSet:
    """Images ``(N, H, W)`` or ``(N, H, W, C)`` uint8 in 0..255.

    ``labels`` are class indices, -1 where unknown (out-of-domain images);
    ``ids`` are stable integer ids unique across all splits of one prepare run;
    ``source`` names where each image came from (e.g. ``fashion_mnist``, ``digits``).
    """

    images: np.ndarray
    labels: np.ndarray
    ids: np.ndarray
    source: np.ndarray

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8:
            raise ValueError(f"images must be uint8, got {self.images.dtype}")
        check_rows(self, "images", "labels", "ids", "source")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def channels(self) -> int:
        return 1 if self.images.ndim == 3 else int(self.images.shape[-1])


def check_rows(record: object, first: str, *others: str) -> None:
    """ValueError unless the array fields ``others`` of ``record`` have as many rows as its field ``first``."""
    n = len(getattr(record, first))
    for name in others:
        if len(getattr(record, name)) != n:
            raise ValueError(f"{type(record).__name__}.{name} has {len(getattr(record, name))} rows, {first} have {n}")


def save_classes(folder: str | Path, names: list[str] | tuple[str, ...]) -> None:
    """Write the class names of a prepared data folder (JSON list; index = label = logit index)."""
    write_json(Path(folder) / CLASSES_FILE, list(names))


def load_classes(folder: str | Path) -> list[str] | None:
    """The class names written by ``prepare``, or None for a folder prepared before they were stored."""
    path = Path(folder) / CLASSES_FILE
    if not path.is_file():
        return None
    names = json.loads(path.read_text())
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{path}: expected a JSON list of class names")
    return names


def class_count(folder: str | Path, *labels: np.ndarray) -> int:
    """Number of classes of a prepared data ``folder``: the names ``prepare`` stored there, else the largest label + 1.

    ``labels`` are ``(N,)`` class-index arrays (e.g. the labeled and test sets'); -1 (unknown) is ignored.
    The fallback serves folders prepared before ``classes.json`` was written; it undercounts classes no
    given set holds, which is why ``prepare`` stores the names.
    """
    names = load_classes(folder)
    if names:
        return len(names)
    known = [int(y.max()) for y in labels if len(y) and y.max() >= 0]
    if not known:
        raise ValueError(
            f"{Path(folder) / CLASSES_FILE}: no class names stored, and no known label (>= 0) to count classes from"
        )
    return max(known) + 1
