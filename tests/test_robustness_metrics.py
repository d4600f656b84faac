from __future__ import annotations

import itertools

import numpy as np
import pytest

from noisy_student.evaluation import topk_accuracy
from noisy_student.robustness.metrics import (
    ALEXNET_CLEAN_ERROR,
    ALEXNET_IMAGENET_C_ERRORS,
    IMAGENET_C_CORRUPTIONS,
    corruption_errors,
    flip_probability,
    flip_rate,
    masked_topk,
    mce,
    mce_shares,
    mce_summary,
    mfr,
    mfr_shares,
    mfr_summary,
    mt5d,
    relative_corruption_errors,
    top5_distance,
    top5_rank_distance,
)


def test_alexnet_table_matches_method_md() -> None:
    # the order and values of /work/shared/method.md ("Robustness metrics")
    published = [0.886428, 0.894468, 0.922640, 0.819880, 0.826268, 0.785948, 0.798360, 0.866816]
    published += [0.826572, 0.819324, 0.564592, 0.853204, 0.646056, 0.717840, 0.606500]
    assert list(ALEXNET_IMAGENET_C_ERRORS) == list(IMAGENET_C_CORRUPTIONS)
    assert list(ALEXNET_IMAGENET_C_ERRORS.values()) == published
    assert 0.43 < ALEXNET_CLEAN_ERROR < 0.44


def test_corruption_error_per_severity_baseline_hand_computed() -> None:
    errors = {"fog": {1: 0.1, 2: 0.2, 3: 0.3}, "snow": {1: 0.5, 2: 0.5, 3: 0.5}}
    baseline = {"fog": {1: 0.2, 2: 0.4, 3: 0.6, 4: 0.9}, "snow": {1: 1.0, 2: 0.5, 3: 1.0}}
    ce = corruption_errors(errors, baseline)
    assert ce["fog"] == pytest.approx(100 * 0.6 / 1.2)  # severity 4 of the baseline is not used
    assert ce["snow"] == pytest.approx(100 * 1.5 / 2.5)
    out = mce(errors, baseline)
    assert out["mce"] == pytest.approx((50.0 + 60.0) / 2)
    assert out["ce_fog"] == pytest.approx(50.0)
    assert out["corrupted_top1"] == pytest.approx(1 - np.mean([0.1, 0.2, 0.3, 0.5, 0.5, 0.5]))
    assert "relative_mce" not in out


def test_mean_baseline_equals_per_severity_baseline_with_that_mean() -> None:
    errors = {"fog": {s: 0.1 * s for s in range(1, 6)}}
    per_severity = {"fog": {1: 0.5, 2: 0.6, 3: 0.7, 4: 0.8, 5: 0.9}}
    assert corruption_errors(errors, {"fog": 0.7})["fog"] == pytest.approx(
        corruption_errors(errors, per_severity)["fog"]
    )
    assert corruption_errors(errors, {"fog": 0.7})["fog"] == pytest.approx(100 * 0.3 / 0.7)


def test_alexnet_scores_100_against_itself() -> None:
    errors = {c: dict.fromkeys(range(1, 6), e) for c, e in ALEXNET_IMAGENET_C_ERRORS.items()}
    out = mce(errors, clean_error=ALEXNET_CLEAN_ERROR)
    assert out["mce"] == pytest.approx(100.0)
    assert out["relative_mce"] == pytest.approx(100.0)
    assert all(out[f"ce_{c}"] == pytest.approx(100.0) for c in IMAGENET_C_CORRUPTIONS)


def test_relative_corruption_error_hand_computed() -> None:
    errors = {"fog": {1: 0.3, 2: 0.5}}
    baseline = {"fog": {1: 0.6, 2: 0.8}}
    # sum_s (E - 0.2) = 0.4; sum_s (E_base - 0.4) = 0.6
    rce = relative_corruption_errors(errors, clean_error=0.2, baseline=baseline, baseline_clean_error=0.4)
    assert rce["fog"] == pytest.approx(100 * 0.4 / 0.6)
    out = mce(errors, baseline, clean_error=0.2, baseline_clean_error=0.4)
    assert out["relative_mce"] == pytest.approx(100 * 0.4 / 0.6)


def test_mce_input_errors() -> None:
    with pytest.raises(ValueError, match="severities 1..5"):
        corruption_errors({"fog": {1: 0.5, 2: 0.6}})  # AlexNet's table is a mean over all five
    with pytest.raises(ValueError, match="fractions"):
        corruption_errors({"fog": dict.fromkeys(range(1, 6), 45.0)})  # percentages by mistake
    with pytest.raises(KeyError, match="speckle_noise"):
        corruption_errors({"speckle_noise": dict.fromkeys(range(1, 6), 0.5)})
    with pytest.raises(KeyError, match="lacks severities"):
        corruption_errors({"fog": {1: 0.5, 2: 0.6}}, {"fog": {1: 0.7}})


def test_flip_probability_noise_vs_consecutive() -> None:
    preds = np.array([[0, 1, 0, 0], [3, 3, 3, 3]])
    # consecutive pairs: (0,1) (1,0) (0,0) -> 2 flips of 3; second sequence never flips
    assert flip_probability(preds, noise_sequence=False) == pytest.approx(2 / 6)
    # against frame 0: 1 != 0, 0 == 0, 0 == 0 -> 1 flip of 3
    assert flip_probability(preds, noise_sequence=True) == pytest.approx(1 / 6)
    with pytest.raises(ValueError, match="at least 2 frames"):
        flip_probability(np.zeros((3, 1), dtype=int), noise_sequence=False)


def test_flip_rates_in_percent() -> None:
    assert flip_rate(0.02, 0.08) == pytest.approx(25.0)
    out = mfr({"rotate": 0.02, "gaussian_noise": 0.05}, {"rotate": 0.08, "gaussian_noise": 0.1, "tilt": 1.0})
    assert out["mfr"] == pytest.approx((25.0 + 50.0) / 2)
    assert out["fr_rotate"] == pytest.approx(25.0)
    with pytest.raises(KeyError):
        mfr({"scale": 0.1}, {"rotate": 0.1})


def _logits_for_ranking(order: list[int], num_classes: int) -> np.ndarray:
    """Logits whose descending order is ``order`` followed by the remaining classes by index."""
    logits = np.zeros(num_classes)
    rest = [c for c in range(num_classes) if c not in order]
    for rank, cls in enumerate(order + rest):
        logits[cls] = num_classes - rank
    return logits


def test_top5_distance_hand_checked() -> None:
    k = 10
    a = _logits_for_ranking([0, 1, 2, 3, 4], k)
    assert top5_rank_distance(a, a) == 0
    # classes 0 and 1 swap: sigma = (2, 1, 3, 4, 5) -> |1-2| + |2-1| = 2
    assert top5_rank_distance(a, _logits_for_ranking([1, 0, 2, 3, 4], k)) == 2
    # class 0 falls to rank 8, classes 1..4 move up one: |1-6| (capped at 6) + 4 * 1 = 9
    assert top5_rank_distance(a, _logits_for_ranking([1, 2, 3, 4, 5, 6, 7, 0], k)) == 9
    # a disjoint top 5: every class goes past position 6: 5 + 4 + 3 + 2 + 1 = 15
    assert top5_rank_distance(a, _logits_for_ranking([5, 6, 7, 8, 9], k)) == 15
    # order within the lower ranks does not matter, only a's top 5 are followed
    assert top5_rank_distance(a, _logits_for_ranking([0, 1, 2, 3, 4, 9, 8], k)) == 0


def _paper_distance(a: np.ndarray, b: np.ndarray) -> int:
    """The ImageNet-P paper's double sum, written literally."""
    top_a = list(np.argsort(-a, kind="stable"))
    order_b = list(np.argsort(-b, kind="stable"))
    total = 0
    for i in range(1, 6):
        sigma_i = order_b.index(top_a[i - 1]) + 1
        for j in range(min(i, sigma_i) + 1, max(i, sigma_i) + 1):
            total += int(1 <= j - 1 <= 5)
    return total


def test_top5_distance_equals_paper_double_sum() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 12))
    # mostly small rank changes, some large, like consecutive video frames
    b = a + rng.normal(size=a.shape) * rng.choice([0.05, 0.5, 5.0], size=(200, 1))
    ours = top5_rank_distance(a, b)
    assert ours.shape == (200,)
    assert list(ours) == [_paper_distance(x, y) for x, y in zip(a, b, strict=True)]
    assert ours.min() == 0 and ours.max() > 5


def test_top5_distance_maximum_is_18() -> None:
    # 18 = a's top 3 leave the top 5 (5 + 4 + 3) and its 4th and 5th become 1st and 2nd (3 + 3)
    k = 8
    orders = np.array(list(itertools.permutations(range(k))))
    b = np.empty(orders.shape)
    np.put_along_axis(b, orders, np.arange(k, 0, -1, dtype=float)[None], axis=1)
    a = np.broadcast_to(_logits_for_ranking([0, 1, 2, 3, 4], k), b.shape)
    distances = top5_rank_distance(a, b)
    assert distances.max() == 18
    assert distances.min() == 0


def test_top5_distance_over_sequences() -> None:
    k = 8
    f0 = _logits_for_ranking([0, 1, 2, 3, 4], k)
    f1 = _logits_for_ranking([1, 0, 2, 3, 4], k)  # distance 2 from f0
    seq = np.stack([f0, f1, f1])[None]
    # consecutive: d(f0, f1) = 2, d(f1, f1) = 0 -> mean 1; against frame 0: 2 and 2 -> 2
    assert top5_distance(seq, noise_sequence=False) == pytest.approx(1.0)
    assert top5_distance(seq, noise_sequence=True) == pytest.approx(2.0)
    out = mt5d({"rotate": 1.0}, {"rotate": 4.0})
    assert out == {"mt5d": pytest.approx(25.0), "t5d_rotate": pytest.approx(25.0)}


def test_masked_topk_imagenet_a_subset() -> None:
    logits = np.array([[0.0, 5.0, 1.0, 2.0], [3.0, 0.0, 1.0, 9.0]])
    subset = [2, 0]  # subset class 0 is model class 2, subset class 1 is model class 0
    masked = masked_topk(logits, subset)
    np.testing.assert_array_equal(masked, [[1.0, 0.0], [1.0, 3.0]])
    # model class 1 (the overall winner of row 0) is outside the subset and cannot be predicted
    assert topk_accuracy(masked, np.array([0, 1]), ks=(1,))["top1"] == 1.0
    with pytest.raises(IndexError):
        masked_topk(logits, [4])
    with pytest.raises(ValueError, match="duplicates"):
        masked_topk(logits, [1, 1])


def test_per_item_shares_average_to_mce_and_mfr() -> None:
    rng = np.random.default_rng(0)
    corruptions = ["a", "b", "c"]
    wrong = rng.random((3, 5, 40)) < 0.3  # (corruption, severity, image)
    # c: the baseline makes no error at all, so mce_summary leaves it out and so must the shares
    baseline = {"a": {s: 0.2 * s / 5 + 0.1 for s in range(1, 6)}, "b": 0.5, "c": {s: 0.0 for s in range(1, 6)}}
    errors = {c: {s + 1: float(wrong[i, s].mean()) for s in range(5)} for i, c in enumerate(corruptions)}
    shares = mce_shares(wrong, corruptions, baseline)
    assert shares.shape == (40,)
    assert shares.mean() == pytest.approx(mce_summary(errors, baseline)["mce"])
    # one image by hand: its errors over a's severities against a's mean baseline, and b's against 0.5, halved
    a_mean = np.mean([0.2 * s / 5 + 0.1 for s in range(1, 6)])
    assert shares[0] == pytest.approx(100 * (wrong[0, :, 0].mean() / a_mean + wrong[1, :, 0].mean() / 0.5) / 2)

    flips = {"x": rng.random(30) * 0.2, "y": rng.random(30) * 0.1, "z": rng.random(30)}
    base_fp = {"x": 0.05, "y": 0.02, "z": 0.0}  # z: never flips for the baseline, left out
    fps = {p: float(f.mean()) for p, f in flips.items()}
    assert mfr_shares(flips, base_fp).mean() == pytest.approx(mfr_summary(fps, {}, base_fp, {})["mfr"])
    assert np.isnan(mfr_shares(flips, {"z": 0.0})).all()
