"""Robustness metrics of ImageNet-A, -C and -P as pure numpy functions.

Definitions follow Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common
Corruptions and Perturbations" (ICLR 2019) and their reference code (github.com/hendrycks/robustness).

Units: errors and accuracies are fractions in 0..1 (like ``evaluation.topk_accuracy``); the
normalised scores (CE, mCE, relative mCE, FR, mFR, T5D ratios, mT5D) are percentages (x100), as
they are published.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

IMAGENET_C_CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)

# AlexNet top-1 error on ImageNet-C, averaged over the 5 severities, per corruption.
# Source: the hendrycks/robustness repository (ImageNet-C evaluation code), the baseline of
# Hendrycks & Dietterich (ICLR 2019). Only these per-corruption means are published there, so
# `corruption_errors` accepts a mean (float) per corruption as the baseline.
ALEXNET_IMAGENET_C_ERRORS: dict[str, float] = {
    "gaussian_noise": 0.886428,
    "shot_noise": 0.894468,
    "impulse_noise": 0.922640,
    "defocus_blur": 0.819880,
    "glass_blur": 0.826268,
    "motion_blur": 0.785948,
    "zoom_blur": 0.798360,
    "snow": 0.866816,
    "frost": 0.826572,
    "fog": 0.819324,
    "brightness": 0.564592,
    "contrast": 0.853204,
    "elastic_transform": 0.646056,
    "pixelate": 0.717840,
    "jpeg_compression": 0.606500,
}

# AlexNet clean top-1 ImageNet error, the baseline of relative mCE. VERIFY before quoting relative
# mCE to 0.1: the ImageNet-C paper prints 43.5 %; torchvision's pretrained AlexNet (the network the
# reference code evaluates) reports acc@1 56.522 %, i.e. 0.43478; some re-implementations use 0.4345.
ALEXNET_CLEAN_ERROR: float = 0.4348

# ImageNet-P has no AlexNet baseline constants here on purpose. The reference evaluation code
# (hendrycks/robustness, ImageNet-P/test.py) only prints a model's raw flip probability and top-5
# distance per perturbation; AlexNet's values are not in that code, and the maintainer points to a
# spreadsheet for them (hendrycks/robustness issue #49) that could not be checked when this was
# written. Rather than guess, the baseline of the released ImageNet-P is given as a JSON file
# (params: robustness.p_baseline_file) and passed to `mfr` / `mt5d`.

# top5_distance ranks the top 5 classes of a frame: undefined for a classifier with fewer classes
TOP5_MIN_CLASSES = 5

Errors = Mapping[str, Mapping[int, float]]
Baseline = Mapping[str, Mapping[int, float] | float]


def _check_fraction(value: float, what: str) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{what} = {value}: errors are fractions in 0..1, not percentages")
    return value


def _per_corruption_means(errors: Errors, baseline: Baseline, corruption: str) -> tuple[float, float, tuple[int, ...]]:
    """Mean error of the model and of the baseline over the severities of ``errors[corruption]``.

    A sum over severities divided by a sum over the same severities equals the ratio of the means,
    so working with means covers both baseline forms.
    """
    if corruption not in baseline:
        raise KeyError(f"baseline has no entry for corruption '{corruption}' (has: {sorted(baseline)})")
    by_severity = errors[corruption]
    if not by_severity:
        raise ValueError(f"errors['{corruption}'] is empty: give one error per severity")
    severities = tuple(sorted(int(s) for s in by_severity))
    model_mean = float(np.mean([_check_fraction(by_severity[s], f"errors['{corruption}'][{s}]") for s in severities]))
    base = baseline[corruption]
    if isinstance(base, Mapping):
        missing = [s for s in severities if s not in base]
        if missing:
            raise KeyError(f"baseline['{corruption}'] lacks severities {missing}")
        base_mean = float(np.mean([_check_fraction(base[s], f"baseline['{corruption}'][{s}]") for s in severities]))
    else:
        # a published mean covers severities 1..5; comparing it to a subset would bias CE
        if severities != (1, 2, 3, 4, 5):
            raise ValueError(
                f"baseline['{corruption}'] is a mean over severities 1..5 but errors['{corruption}'] has "
                f"severities {list(severities)}: evaluate all five, or give the baseline per severity"
            )
        base_mean = _check_fraction(base, f"baseline['{corruption}']")
    return model_mean, base_mean, severities


def corruption_errors(errors: Errors, baseline: Baseline = ALEXNET_IMAGENET_C_ERRORS) -> dict[str, float]:
    """Corruption Error per corruption, CE_c = sum_s E(s, c) / sum_s E_base(s, c), in percent.

    ``errors[c][s]``: top-1 error (0..1) of the model on corruption ``c`` at severity ``s``.
    ``baseline[c]``: either a mapping severity -> error, or one float, the baseline's mean error over
    severities 1..5 (then CE_c = mean_s E(s, c) / baseline[c], which is the same ratio).
    Returns ``{c: CE_c}`` with CE_c x100.
    """
    out = {}
    for corruption in errors:
        model_mean, base_mean, _ = _per_corruption_means(errors, baseline, corruption)
        if base_mean <= 0.0:
            raise ValueError(f"baseline error of '{corruption}' is {base_mean}: cannot normalise by it")
        out[corruption] = 100.0 * model_mean / base_mean
    return out


def relative_corruption_errors(
    errors: Errors,
    clean_error: float,
    baseline: Baseline = ALEXNET_IMAGENET_C_ERRORS,
    baseline_clean_error: float = ALEXNET_CLEAN_ERROR,
) -> dict[str, float]:
    """Relative CE per corruption, in percent.

    rCE_c = sum_s (E(s, c) - E_clean) / sum_s (E_base(s, c) - E_base_clean), i.e. the degradation
    caused by the corruption relative to the baseline's degradation. ``clean_error`` and
    ``baseline_clean_error`` are top-1 errors (0..1) on the uncorrupted images. With a per-corruption
    mean baseline the sums become means over severities 1..5 (same ratio).
    """
    clean_error = _check_fraction(clean_error, "clean_error")
    baseline_clean_error = _check_fraction(baseline_clean_error, "baseline_clean_error")
    out = {}
    for corruption in errors:
        model_mean, base_mean, _ = _per_corruption_means(errors, baseline, corruption)
        denominator = base_mean - baseline_clean_error
        if denominator <= 0.0:
            raise ValueError(
                f"baseline error of '{corruption}' ({base_mean}) is not above the baseline clean error "
                f"({baseline_clean_error}): relative CE is undefined"
            )
        out[corruption] = 100.0 * (model_mean - clean_error) / denominator
    return out


def mce(
    errors: Errors,
    baseline: Baseline = ALEXNET_IMAGENET_C_ERRORS,
    clean_error: float | None = None,
    baseline_clean_error: float = ALEXNET_CLEAN_ERROR,
) -> dict[str, float]:
    """ImageNet-C summary as a flat dict of floats (ready for MLflow ``log_metrics``).

    ``errors[c][s]``: top-1 error (0..1) per corruption and severity; ``baseline`` as in
    :func:`corruption_errors`. Keys:

    - ``mce``: mean over the given corruptions of CE_c (x100); the benchmark number needs all 15;
    - ``ce_<c>``: CE_c (x100);
    - ``corrupted_top1``: mean top-1 accuracy (0..1) over every (corruption, severity) given;
    - ``relative_mce`` and ``relative_ce_<c>`` (x100): only when ``clean_error`` is given.
    """
    if not errors:
        raise ValueError("errors is empty: give errors[corruption][severity]")
    ce = corruption_errors(errors, baseline)
    out = {"mce": float(np.mean(list(ce.values())))}
    out.update({f"ce_{c}": v for c, v in ce.items()})
    all_errors = [float(e) for by_severity in errors.values() for e in by_severity.values()]
    out["corrupted_top1"] = 1.0 - float(np.mean(all_errors))
    if clean_error is not None:
        rce = relative_corruption_errors(errors, clean_error, baseline, baseline_clean_error)
        out["relative_mce"] = float(np.mean(list(rce.values())))
        out.update({f"relative_ce_{c}": v for c, v in rce.items()})
    return out


def _baseline_mean(baseline: Mapping[int, float] | float) -> float:
    """Mean error of a baseline entry: per severity, or already a mean over severities 1..5."""
    return float(np.mean(list(baseline.values()))) if isinstance(baseline, Mapping) else float(baseline)


def mce_summary(
    errors: Errors,
    baseline: Baseline = ALEXNET_IMAGENET_C_ERRORS,
    clean_error: float | None = None,
    baseline_clean_error: float = ALEXNET_CLEAN_ERROR,
) -> dict[str, float]:
    """:func:`mce` over the corruptions where each score is defined, with the counts of those kept.

    CE is undefined where the baseline makes no error at all (possible on small embedded sets):
    such corruptions are left out of ``mce`` and ``ce_<c>``. Relative CE (only with
    ``clean_error``) is also undefined where the baseline is not hurt by a corruption (its mean
    corrupted error <= ``baseline_clean_error``): those are left out of ``relative_mce`` too.
    ``corrupted_top1`` (0..1) always covers every corruption and severity of ``errors``. Keys: those
    of :func:`mce` that are defined, plus ``mce_corruptions`` and ``relative_mce_corruptions`` (counts;
    0 relative ones without ``clean_error``).
    """
    scored = {c: e for c, e in errors.items() if _baseline_mean(baseline[c]) > 0}
    summary = mce(scored, baseline) if scored else {}
    all_errors = [e for by_severity in errors.values() for e in by_severity.values()]
    summary["corrupted_top1"] = 1.0 - float(np.mean(all_errors))
    summary["mce_corruptions"] = len(scored)
    hurt: dict[str, Mapping[int, float]] = {}
    if clean_error is not None:
        hurt = {c: e for c, e in scored.items() if _baseline_mean(baseline[c]) > baseline_clean_error}
    if hurt:
        rel = mce(hurt, baseline, clean_error, baseline_clean_error)
        summary.update({k: v for k, v in rel.items() if k.startswith("relative_")})
    summary["relative_mce_corruptions"] = len(hurt)
    return summary


def mce_shares(wrong: np.ndarray, corruptions: Sequence[str], baseline: Baseline) -> np.ndarray:
    """Each image's share of mCE (x100): its mean over the images is :func:`mce_summary`'s ``mce``.

    ``wrong``: ``(corruptions, severities, N)`` bool, image n misclassified at corruption c, severity
    s + 1. The baseline's errors are constants, so mCE is a mean over images of these shares, and two
    models' mCE on the same images compare image by image (a paired bootstrap over the shares).
    Corruptions where the baseline makes no error are left out, as :func:`mce_summary` does; none
    left: NaN shares.
    """
    wrong = np.asarray(wrong, dtype=float)
    severities = range(1, wrong.shape[1] + 1)
    shares, scored = np.zeros(wrong.shape[2]), 0
    for i, corruption in enumerate(corruptions):
        base = baseline[corruption]
        base_mean = float(np.mean([base[s] for s in severities])) if isinstance(base, Mapping) else float(base)
        if base_mean > 0:
            shares += 100.0 * wrong[i].mean(0) / base_mean
            scored += 1
    return shares / scored if scored else np.full(wrong.shape[2], np.nan)


def mfr_shares(flips: Mapping[str, np.ndarray], baseline_fp: Mapping[str, float]) -> np.ndarray:
    """Each sequence's share of mFR (x100): its mean over the sequences is :func:`mfr_summary`'s ``mfr``.

    ``flips[p]``: ``(N,)`` the flip probability of each sequence under perturbation ``p`` (its mean is
    FP_p). Perturbations the baseline never flips on are left out, as :func:`mfr_summary` does.
    """
    scored = [p for p, v in baseline_fp.items() if v > 0 and p in flips]
    if not scored:
        return np.full(len(next(iter(flips.values()))), np.nan)
    return sum(100.0 * np.asarray(flips[p], float) / baseline_fp[p] for p in scored) / len(scored)


def _frame_pairs(num_frames: int, noise_sequence: bool) -> tuple[np.ndarray, np.ndarray]:
    """Indices (earlier, later) of the frame pairs compared in a sequence of ``num_frames``."""
    if num_frames < 2:
        raise ValueError(f"a perturbation sequence needs at least 2 frames, got {num_frames}")
    later = np.arange(1, num_frames)
    # noise frames are i.i.d. draws, not a trajectory, so each is compared with the first
    earlier = np.zeros_like(later) if noise_sequence else later - 1
    return earlier, later


def flip_probability(predictions: np.ndarray, noise_sequence: bool) -> float:
    """Flip probability FP (0..1) of top-1 predictions along perturbation sequences.

    ``predictions``: int array ``(num_sequences, T)``, the top-1 class of every frame.
    For noise perturbations frames 1..T-1 are compared with frame 0; otherwise every frame with the
    previous one. FP is the fraction of compared pairs whose prediction differs, averaged over pairs
    and then over sequences (all sequences have T frames, so this is the pooled fraction).
    """
    predictions = np.asarray(predictions)
    if predictions.ndim != 2:
        raise ValueError(f"predictions must be (num_sequences, T), got shape {predictions.shape}")
    earlier, later = _frame_pairs(predictions.shape[1], noise_sequence)
    return float(np.mean(predictions[:, earlier] != predictions[:, later]))


def flip_rate(flip_prob: float, baseline_flip_prob: float) -> float:
    """Flip rate FR_p = FP_p / FP_base(p), in percent."""
    if baseline_flip_prob <= 0.0:
        raise ValueError(f"baseline flip probability is {baseline_flip_prob}: cannot normalise by it")
    return 100.0 * float(flip_prob) / float(baseline_flip_prob)


def mfr(flip_probs: Mapping[str, float], baseline: Mapping[str, float]) -> dict[str, float]:
    """ImageNet-P flip-rate summary: ``mfr`` (mean FR over the given perturbations) and ``fr_<p>``, x100.

    ``flip_probs[p]`` and ``baseline[p]``: flip probabilities (0..1) of the model and the baseline.
    """
    if not flip_probs:
        raise ValueError("flip_probs is empty")
    missing = [p for p in flip_probs if p not in baseline]
    if missing:
        raise KeyError(f"baseline has no flip probability for {missing}")
    fr = {p: flip_rate(fp, baseline[p]) for p, fp in flip_probs.items()}
    return {"mfr": float(np.mean(list(fr.values()))), **{f"fr_{p}": v for p, v in fr.items()}}


def mfr_summary(
    flip_probs: Mapping[str, float],
    top5_distances: Mapping[str, float],
    baseline_fp: Mapping[str, float],
    baseline_t5d: Mapping[str, float],
) -> dict[str, float]:
    """:func:`mfr` and :func:`mt5d` over the perturbations where each is defined, with their counts.

    FR / T5D ratio of a perturbation is undefined where the baseline has no positive value for it
    (it never flips on it, or it was not measured): such perturbations are left out and counted.
    Inputs: flip probabilities (0..1) and mean top-5 distances of the model and the baseline, per
    perturbation. Keys: ``mfr``, ``fr_<p>`` (x100, when any is defined), ``mfr_perturbations``,
    ``mt5d``, ``t5d_<p>`` (x100, when any is defined), ``mt5d_perturbations``.
    """
    # in the baseline's order: the mean then sums in the order the embedded sets always used (bit-identical)
    fp_scored = {k: flip_probs[k] for k, v in baseline_fp.items() if v > 0 and k in flip_probs}
    t5_scored = {k: top5_distances[k] for k, v in baseline_t5d.items() if v > 0 and k in top5_distances}
    summary: dict[str, float] = {}
    if fp_scored:
        summary.update(mfr(fp_scored, baseline_fp))
    summary["mfr_perturbations"] = len(fp_scored)
    if t5_scored:
        summary.update(mt5d(t5_scored, baseline_t5d))
    summary["mt5d_perturbations"] = len(t5_scored)
    return summary


def _ranks(logits: np.ndarray) -> np.ndarray:
    """1-based rank of every class (1 = largest logit), ties broken by class index."""
    order = np.argsort(-logits, axis=-1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(1, logits.shape[-1] + 1), axis=-1)
    return ranks


def top5_rank_distance(logits_a: np.ndarray, logits_b: np.ndarray) -> np.ndarray:
    """ImageNet-P top-5 distance between the rankings of two frames, per row.

    ``logits_a``, ``logits_b``: float arrays ``(..., K)`` with K >= 5. Let sigma(i) be the rank in
    ``b`` of the class ranked i-th in ``a``. The paper's definition

        d = sum_{i=1..5} sum_{j=min(i, sigma(i))+1 .. max(i, sigma(i))} 1{1 <= j - 1 <= 5}

    counts, for each of a's top-5 classes, how many rank positions 2..6 it crosses on its way to its
    new rank, which equals sum_{i=1..5} |i - min(sigma(i), 6)|: a class that leaves the top 5 costs
    its distance to position 6 however far it falls. 0 for identical top-5 lists; at most 18.
    Returns an int array ``(...)``.
    """
    if logits_a.shape != logits_b.shape or logits_a.shape[-1] < 5:
        raise ValueError(f"need two logit arrays of one shape (..., K >= 5), got {logits_a.shape}, {logits_b.shape}")
    top5_a = np.argsort(-logits_a, axis=-1, kind="stable")[..., :5]
    sigma = np.take_along_axis(_ranks(logits_b), top5_a, axis=-1)
    return np.abs(np.arange(1, 6) - np.minimum(sigma, 6)).sum(axis=-1)


def top5_distance(logits: np.ndarray, noise_sequence: bool) -> float:
    """Mean top-5 distance T5D along perturbation sequences.

    ``logits``: float array ``(num_sequences, T, K)``. Frame pairs as in :func:`flip_probability`
    (vs frame 0 for noise, consecutive otherwise); each pair scored by :func:`top5_rank_distance`
    (earlier frame's top 5 looked up in the later frame's ranking), averaged over pairs and sequences.
    """
    logits = np.asarray(logits)
    if logits.ndim != 3:
        raise ValueError(f"logits must be (num_sequences, T, K), got shape {logits.shape}")
    earlier, later = _frame_pairs(logits.shape[1], noise_sequence)
    return float(np.mean(top5_rank_distance(logits[:, earlier], logits[:, later])))


def mt5d(top5_distances: Mapping[str, float], baseline: Mapping[str, float]) -> dict[str, float]:
    """ImageNet-P top-5 distance summary: ``mt5d`` = mean of T5D_p / T5D_base(p), and ``t5d_<p>``, x100."""
    if not top5_distances:
        raise ValueError("top5_distances is empty")
    missing = [p for p in top5_distances if p not in baseline]
    if missing:
        raise KeyError(f"baseline has no top-5 distance for {missing}")
    ratio = {}
    for p, d in top5_distances.items():
        if baseline[p] <= 0.0:
            raise ValueError(f"baseline top-5 distance of '{p}' is {baseline[p]}: cannot normalise by it")
        ratio[p] = 100.0 * float(d) / float(baseline[p])
    return {"mt5d": float(np.mean(list(ratio.values()))), **{f"t5d_{p}": v for p, v in ratio.items()}}


def masked_topk(logits: np.ndarray, class_indices: Sequence[int]) -> np.ndarray:
    """Logits restricted to a class subset, for ImageNet-A (200 of the 1000 ImageNet classes).

    ``logits``: ``(N, K)``; ``class_indices``: the model's class index of each subset class, in
    subset order. Returns ``(N, len(class_indices))``; column j is class ``class_indices[j]``, so
    labels given as subset positions (0..199) work with ``evaluation.topk_accuracy``.
    """
    idx = np.asarray(class_indices, dtype=np.int64)
    if idx.ndim != 1 or len(idx) == 0:
        raise ValueError("class_indices must be a non-empty list of class indices")
    if idx.min() < 0 or idx.max() >= logits.shape[1]:
        raise IndexError(f"class_indices out of range for {logits.shape[1]} logits")
    if len(np.unique(idx)) != len(idx):
        raise ValueError("class_indices has duplicates")
    return logits[:, idx]
