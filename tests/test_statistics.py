"""Paired bootstrap interval and McNemar's exact test against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from noisy_student.statistics import compare_paired, mcnemar_exact, paired_bootstrap_ci, paired_mean_difference


def _pair(both: int, a_only: int, b_only: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    a = np.array([1] * both + [1] * a_only + [0] * b_only + [0] * neither, dtype=bool)
    b = np.array([1] * both + [0] * a_only + [1] * b_only + [0] * neither, dtype=bool)
    return a, b


def test_mcnemar_matches_the_binomial_sums_by_hand() -> None:
    # 3 vs 1 discordant: P(X <= 1 | n=4, 1/2) = (1 + 4) / 16, doubled
    assert mcnemar_exact(1, 3) == pytest.approx(2 * 5 / 16)
    assert mcnemar_exact(3, 1) == pytest.approx(2 * 5 / 16)  # two-sided: symmetric
    # 2 vs 8: (C(10,0) + C(10,1) + C(10,2)) / 1024, doubled
    assert mcnemar_exact(2, 8) == pytest.approx(2 * (1 + 10 + 45) / 1024)
    assert mcnemar_exact(5, 5) == pytest.approx(1.0)  # an even split is no evidence at all


def test_all_disagreements_one_way() -> None:
    # B right on 10 images A gets wrong, never the other way: 2 * (1/2)^10
    assert mcnemar_exact(0, 10) == pytest.approx(2 / 1024)
    a, b = _pair(both=80, a_only=0, b_only=10, neither=10)
    result = compare_paired(a, b, resamples=4000, seed=1)
    assert (result.a_only, result.b_only, result.images) == (0, 10, 100)
    assert result.gain == pytest.approx(0.10)
    assert result.p_mcnemar == pytest.approx(2 / 1024)
    # every resample has d >= 0, so the interval cannot reach below 0; the gain's count is then binomial
    # (100, 0.1): its 2.5 % / 97.5 % quantiles are 4 and 16 images
    assert 0.03 <= result.ci_low <= 0.05 and 0.15 <= result.ci_high <= 0.17


def test_no_disagreement_gives_a_zero_width_interval_and_p_one() -> None:
    a, b = _pair(both=70, a_only=0, b_only=0, neither=30)
    result = compare_paired(a, b)
    assert result.gain == 0.0 and (result.ci_low, result.ci_high) == (0.0, 0.0)
    assert result.p_mcnemar == 1.0
    assert result.accuracy_a == result.accuracy_b == pytest.approx(0.7)


def test_the_interval_matches_resampling_the_images() -> None:
    a, b = _pair(both=600, a_only=40, b_only=70, neither=290)
    low, high = paired_bootstrap_ci(a, b, resamples=4000, seed=0)
    # the textbook way: draw N image indices with replacement, resamples times
    rng = np.random.default_rng(123)
    idx = rng.integers(0, len(a), size=(4000, len(a)))
    gains = b[idx].mean(axis=1) - a[idx].mean(axis=1)
    ref_low, ref_high = np.quantile(gains, [0.025, 0.975])
    assert low == pytest.approx(ref_low, abs=0.006) and high == pytest.approx(ref_high, abs=0.006)
    # and the normal approximation of the paired difference: sd of d over sqrt(N)
    d = b.astype(float) - a.astype(float)
    half = 1.96 * d.std() / math.sqrt(len(d))
    assert (high - low) / 2 == pytest.approx(half, rel=0.08)
    assert low < 0.03 < high


def test_seeded_and_deterministic() -> None:
    a, b = _pair(both=50, a_only=7, b_only=12, neither=31)
    assert paired_bootstrap_ci(a, b, seed=5) == paired_bootstrap_ci(a, b, seed=5)
    assert paired_bootstrap_ci(a, b, seed=5) != paired_bootstrap_ci(a, b, seed=6)


@pytest.mark.parametrize(
    ("a", "b", "match"),
    [
        (np.ones(3, bool), np.ones(4, bool), "same, non-empty"),
        (np.array([], bool), np.array([], bool), "same, non-empty"),
        (np.array([0, 2, 1]), np.ones(3, bool), "a_correct: expected a 1-D array"),
    ],
)
def test_bad_inputs_are_named(a: np.ndarray, b: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        paired_bootstrap_ci(a, b)


def test_bootstrap_interval_of_a_mean_matches_the_binomial() -> None:
    from noisy_student.statistics import bootstrap_interval

    correct = np.array([1] * 300 + [0] * 700, dtype=float)  # top-1 0.3 on 1,000 images
    low, high = bootstrap_interval(lambda w: float(correct @ w) / len(correct), len(correct), seed=0)
    half = 1.96 * math.sqrt(0.3 * 0.7 / 1000)  # the normal approximation: +-2.84 points
    assert low == pytest.approx(0.3 - half, abs=0.004) and high == pytest.approx(0.3 + half, abs=0.004)
    # a constant statistic has no spread; an undefined one (NaN) gives NaN bounds
    assert bootstrap_interval(lambda w: 5.0, 10, resamples=50) == (5.0, 5.0)
    assert all(math.isnan(v) for v in bootstrap_interval(lambda w: float("nan"), 10, resamples=20))
    with pytest.raises(ValueError, match="need n >= 1"):
        bootstrap_interval(lambda w: 0.0, 0)


def test_paired_mean_difference_by_hand() -> None:
    # per-item shares of two models on four items: differences 1, 0, -2, 5 -> mean 1
    a, b = np.array([3.0, 2.0, 4.0, 0.0]), np.array([4.0, 2.0, 2.0, 5.0])
    gain, low, high = paired_mean_difference(a, b, resamples=4000)
    assert gain == pytest.approx(1.0)
    # a resample's mean lies between the smallest and largest difference, and the interval holds the middle
    assert -2.0 <= low < gain < high <= 5.0
    assert paired_mean_difference(a, a) == (0.0, 0.0, 0.0)  # no difference anywhere: a zero-width interval
    # 0/1 correctness: the gain is the accuracy difference, as compare_paired computes it
    x, y = _pair(both=50, a_only=5, b_only=15, neither=30)
    assert paired_mean_difference(x, y)[0] == pytest.approx(compare_paired(x, y).gain)
    with pytest.raises(ValueError, match="same items"):
        paired_mean_difference(a, b[:3])
