"""The in-memory filter-and-balance loop the pipeline once ran: a slow, obvious oracle.

:func:`noisy_student.pseudo_labels.select.select_rows` (vectorised) and
:func:`~noisy_student.pseudo_labels.select.filter_balance_shards` (out of core)
must reproduce it exactly; the tests and ``bench/filter_balance.py`` compare
against it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


def filter_and_balance(
    predicted: np.ndarray,
    confidence: np.ndarray,
    num_classes: int,
    threshold: float,
    per_class: int | None,
    balance: bool,
    seed: int,
    upper: float = 1.0,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Select pseudo-labeled rows the way the paper does.

    1. drop rows whose top-1 ``confidence`` is below ``threshold`` (or, with ``upper < 1``, not below ``upper``);
    2. per predicted class keep the ``per_class`` most confident rows (None: all);
    3. if ``balance``, a class with fewer than ``per_class`` rows is filled up to
       ``per_class`` by duplicating its rows: every row ``per_class // n`` times
       and ``per_class % n`` rows chosen at random once more.

    Returns a frame with ``row`` (index into the inputs, sorted) and ``copies``
    (>= 1), plus a stats dict with per-class counts.
    """
    if predicted.shape != confidence.shape:
        raise ValueError(f"predicted {predicted.shape} and confidence {confidence.shape} differ in shape")
    rng = np.random.default_rng(seed)
    passed = (confidence >= threshold) & ((confidence < upper) | (upper >= 1.0))
    rows: list[np.ndarray] = []
    copies: list[np.ndarray] = []
    per_class_stats: list[dict[str, int]] = []
    for cls in range(num_classes):
        members = np.flatnonzero(passed & (predicted == cls))
        # most confident first; stable sort so ties keep input order
        members = members[np.argsort(-confidence[members], kind="stable")]
        kept = members if per_class is None else members[:per_class]
        n = len(kept)
        count = np.ones(n, dtype=np.int64)
        if balance and per_class is not None and 0 < n < per_class:
            count[:] = per_class // n
            extra = rng.choice(n, size=per_class % n, replace=False)
            count[extra] += 1
        rows.append(kept)
        copies.append(count)
        per_class_stats.append(
            {
                "class": cls,
                "passed_threshold": int(len(members)),
                "unique": int(n),
                "dropped_over_cap": int(len(members) - n),
                "total": int(count.sum()),
            }
        )
    frame = pd.DataFrame({"row": np.concatenate(rows), "copies": np.concatenate(copies)})
    frame = frame.sort_values("row", kind="stable").reset_index(drop=True)
    stats = {
        "rows_in": int(len(predicted)),
        "dropped_low_confidence": int((confidence < threshold).sum()),
        "dropped_above_bin": int(((confidence >= upper) & (upper < 1.0)).sum()),
        "unique": int(len(frame)),
        "total": int(frame["copies"].sum()),
        "per_class": per_class_stats,
    }
    return frame, stats
