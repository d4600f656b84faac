from __future__ import annotations

import numpy as np
import pytest

from noisy_student.pseudo_labels import filter_and_balance, softmax, targets_from_probs


def test_threshold_drops_low_confidence_rows() -> None:
    pred = np.array([0, 0, 1, 1])
    conf = np.array([0.9, 0.2, 0.29, 0.3])
    frame, stats = filter_and_balance(pred, conf, 2, threshold=0.3, per_class=10, balance=False, seed=0)
    assert frame["row"].tolist() == [0, 3]
    assert frame["copies"].tolist() == [1, 1]
    assert stats["dropped_low_confidence"] == 2


def test_cap_keeps_the_most_confident_per_class() -> None:
    pred = np.array([0, 0, 0, 0, 1])
    conf = np.array([0.5, 0.9, 0.7, 0.6, 0.8])
    frame, stats = filter_and_balance(pred, conf, 2, threshold=0.0, per_class=2, balance=False, seed=0)
    assert frame["row"].tolist() == [1, 2, 4]  # class 0 keeps 0.9 and 0.7
    assert stats["per_class"][0]["dropped_over_cap"] == 2


def test_balance_duplicates_short_classes_up_to_k() -> None:
    # class 0: 3 rows, class 1: 1 row, class 2: none; K = 7
    pred = np.array([0, 0, 0, 1])
    conf = np.array([0.9, 0.8, 0.7, 0.6])
    frame, stats = filter_and_balance(pred, conf, 3, threshold=0.0, per_class=7, balance=True, seed=1)
    copies = dict(zip(frame["row"], frame["copies"], strict=True))
    assert copies[0] + copies[1] + copies[2] == 7
    assert sorted(copies[r] for r in (0, 1, 2)) == [2, 2, 3]  # 7 = 3*2 + 1 extra at random
    assert copies[3] == 7
    assert stats["total"] == 14 and stats["unique"] == 4
    assert stats["per_class"][2]["total"] == 0  # nothing to duplicate


def test_balance_is_seeded() -> None:
    pred = np.zeros(5, dtype=int)
    conf = np.linspace(0.5, 0.9, 5)
    a, _ = filter_and_balance(pred, conf, 1, 0.0, 13, True, seed=3)
    b, _ = filter_and_balance(pred, conf, 1, 0.0, 13, True, seed=3)
    assert a.equals(b)
    assert a["copies"].sum() == 13


def test_shape_mismatch_is_rejected() -> None:
    with pytest.raises(ValueError, match="shape"):
        filter_and_balance(np.zeros(3), np.zeros(4), 2, 0.3, 1, True, 0)


def test_softmax_temperature_and_hard_targets() -> None:
    logits = np.array([[0.0, np.log(3.0)]])
    np.testing.assert_allclose(softmax(logits), [[0.25, 0.75]], rtol=1e-6)
    # T = 2 halves the logits: exp(log(3)/2) = sqrt(3)
    s3 = np.sqrt(3.0)
    np.testing.assert_allclose(softmax(logits, 2.0), [[1 / (1 + s3), s3 / (1 + s3)]], rtol=1e-6)
    probs = np.array([[0.2, 0.5, 0.3]], dtype=np.float32)
    assert targets_from_probs(probs, "hard").tolist() == [[0.0, 1.0, 0.0]]
    np.testing.assert_array_equal(targets_from_probs(probs, "soft"), probs)
