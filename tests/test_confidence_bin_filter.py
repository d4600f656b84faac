"""Fig. 5's pools: every pseudo-labeled image whose teacher confidence lies in one bin, no cap, no balancing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from noisy_student.config import ParamsError, parse_params
from noisy_student.pseudo_labels.select import filter_balance_shards, select_rows
from tests.reference_filter import filter_and_balance
from tests.test_pseudo_labels import _write_shards

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("low", "high", "per_class"), [(0.3, 0.4, None), (0.9, 1.0, None), (0.2, 0.5, 30)])
def test_bin_selection_equals_the_reference(low: float, high: float, per_class: int | None) -> None:
    rng = np.random.default_rng(3)
    pred = rng.integers(0, 10, 4000)
    conf = np.round(rng.random(4000).astype(np.float32), 2)  # exact bin edges occur
    frame, stats = filter_and_balance(pred, conf, 10, low, per_class, False, 0, upper=high)
    rows, copies, stats2 = select_rows(pred, conf, 10, low, per_class, False, 0, upper=high)
    np.testing.assert_array_equal(rows, frame["row"].to_numpy())
    np.testing.assert_array_equal(copies, frame["copies"].to_numpy())
    assert stats2 == stats
    kept = conf[rows]
    assert kept.min() >= np.float32(low)
    assert (kept < np.float32(high)).all() if high < 1.0 else kept.max() <= 1.0
    assert (copies == 1).all()
    in_bin = (conf >= np.float32(low)) & ((conf < np.float32(high)) | (high >= 1.0))
    if per_class is None:
        assert len(rows) == in_bin.sum()
    else:
        assert np.bincount(pred[rows], minlength=10).max() <= per_class
    assert stats2["dropped_low_confidence"] + stats2["dropped_above_bin"] == (~in_bin).sum()


def test_bin_on_shards_keeps_every_image_of_the_bin(tmp_path: Path) -> None:
    folder = tmp_path / "predictions"
    _write_shards(folder, 1000, 128, None)
    sel = filter_balance_shards(folder, tmp_path / "selected.parquet", 10, 0.4, None, False, seed=0, upper=0.6)
    conf = pq.read_table(folder)["confidence"].to_numpy()
    expected = np.flatnonzero((conf >= 0.4) & (conf < 0.6))
    np.testing.assert_array_equal(sel.rows, expected)
    assert pq.read_table(tmp_path / "selected.parquet").num_rows == len(expected)


def _params(**filter_params: object) -> dict:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["filter"].update(filter_params)
    return raw


def test_bin_params_are_checked() -> None:
    parse_params(_params(confidence_threshold=0.3, confidence_max=0.4, images_per_class=None, balance=False))
    with pytest.raises(ParamsError, match=r"confidence_max.*above confidence_threshold"):
        parse_params(_params(confidence_threshold=0.5, confidence_max=0.4))
    with pytest.raises(ParamsError, match=r"balance: true needs images_per_class"):
        parse_params(_params(images_per_class=None, balance=True))
    with pytest.raises(ParamsError, match=r"images_per_class"):
        parse_params(_params(images_per_class=0))
