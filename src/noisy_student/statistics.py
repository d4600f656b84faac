"""Bootstrap intervals over test images and paired tests of two classifiers (pure functions, numpy in).

Two models scored on one test set disagree on few images; the seed-to-seed spread of either accuracy is
much wider than the uncertainty of their *difference* on those images. So every gain the report prints
carries a paired bootstrap interval (the test images resampled, both models' answers kept together) and
McNemar's exact test (do the images only one model gets right split 50/50?). Robustness metrics (mCE, mFR,
accuracy under attack) get percentile intervals over their images from :func:`bootstrap_interval`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

DEFAULT_RESAMPLES = 2000
DEFAULT_LEVEL = 0.95


@dataclass(frozen=True)
class PairedComparison:
    """Model B against model A on the same ``images`` (accuracies and gain as fractions 0..1)."""

    images: int
    accuracy_a: float
    accuracy_b: float
    gain: float  # accuracy_b - accuracy_a
    ci_low: float  # paired bootstrap interval of the gain
    ci_high: float
    b_only: int  # images B classifies correctly and A does not
    a_only: int
    p_mcnemar: float  # exact two-sided McNemar p-value


def _correct(values: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1 or not (array.dtype == bool or np.isin(array, (0, 1)).all()):
        raise ValueError(f"{name}: expected a 1-D array of per-image correctness (bool or 0/1)")
    return array.astype(bool)


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Exact two-sided McNemar p-value: ``b_only`` out of the ``a_only + b_only`` discordant images, tested
    against a fair coin (the binomial test). No discordant image: 1.0 (nothing tells the models apart)."""
    if a_only < 0 or b_only < 0:
        raise ValueError(f"discordant counts must be >= 0, got a_only={a_only}, b_only={b_only}")
    n = a_only + b_only
    if n == 0:
        return 1.0
    # imported here: scipy.stats takes ~1.3 s to import, and every robustness stage imports this module
    from scipy.stats import binomtest

    return float(binomtest(b_only, n, 0.5).pvalue)


def paired_bootstrap_ci(
    a_correct: np.ndarray,
    b_correct: np.ndarray,
    resamples: int = DEFAULT_RESAMPLES,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile interval of accuracy(B) - accuracy(A) over ``resamples`` resamplings of the test images.

    The gain is the mean of the per-image difference d = b - a, which is -1, 0 or +1; a resample of N
    images with replacement only changes how many of each it holds, so the counts are drawn from the
    multinomial of the three observed shares: the same distribution as drawing N indices, at the cost of
    ``resamples`` draws instead of ``resamples x N``.
    """
    a, b = _correct(a_correct, "a_correct"), _correct(b_correct, "b_correct")
    if len(a) != len(b) or len(a) == 0:
        raise ValueError(f"both models must be scored on the same, non-empty images (got {len(a)} and {len(b)})")
    if resamples < 1 or not 0 < level < 1:
        raise ValueError(f"resamples must be >= 1 and 0 < level < 1, got {resamples} and {level}")
    n = len(a)
    shares = np.array([np.sum(a & ~b), np.sum(a & b) + np.sum(~a & ~b), np.sum(~a & b)]) / n  # d = -1, 0, +1
    counts = np.random.default_rng(seed).multinomial(n, shares, size=resamples)
    gains = (counts[:, 2] - counts[:, 0]) / n
    low, high = np.quantile(gains, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def compare_paired(
    a_correct: np.ndarray,
    b_correct: np.ndarray,
    resamples: int = DEFAULT_RESAMPLES,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
) -> PairedComparison:
    """Gain of B over A with its paired bootstrap interval and McNemar's exact p-value."""
    a, b = _correct(a_correct, "a_correct"), _correct(b_correct, "b_correct")
    low, high = paired_bootstrap_ci(a, b, resamples, level, seed)
    a_only, b_only = int(np.sum(a & ~b)), int(np.sum(~a & b))
    return PairedComparison(
        images=len(a),
        accuracy_a=float(a.mean()),
        accuracy_b=float(b.mean()),
        gain=float(b.mean() - a.mean()),
        ci_low=low,
        ci_high=high,
        b_only=b_only,
        a_only=a_only,
        p_mcnemar=mcnemar_exact(a_only, b_only),
    )


def paired_mean_difference(
    a: np.ndarray, b: np.ndarray, resamples: int = DEFAULT_RESAMPLES, level: float = DEFAULT_LEVEL, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of ``b - a`` over paired items (the same images or sequences) and its bootstrap interval.

    For metrics that are means over items (accuracy as 0/1 per image, an mCE or mFR share per item):
    the difference of two models' metric is the mean of the per-item differences, resampled item by item.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"expected two non-empty 1-D arrays over the same items, got shapes {a.shape} and {b.shape}")
    d = b - a
    low, high = bootstrap_interval(lambda w: float(d @ w) / len(d), len(d), resamples, level, seed)
    return float(d.mean()), low, high


def bootstrap_interval(
    statistic: Callable[[np.ndarray], float],
    n: int,
    resamples: int = DEFAULT_RESAMPLES,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile interval of ``statistic`` over bootstrap resamples of ``n`` items (images, sequences).

    ``statistic(weights)`` computes the metric from per-item weights: ``weights[i]`` is how often item i
    was drawn (a resample of n with replacement; the weights sum to n; all ones is the observed set), so a
    mean over items becomes ``values @ weights / n``. NaN results (a resample where the metric is
    undefined) are left out.
    """
    if n < 1 or resamples < 1 or not 0 < level < 1:
        raise ValueError(f"need n >= 1, resamples >= 1, 0 < level < 1; got {n}, {resamples}, {level}")
    rng = np.random.default_rng(seed)
    values = np.array([statistic(rng.multinomial(n, np.full(n, 1.0 / n))) for _ in range(resamples)])
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return float("nan"), float("nan")
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)
