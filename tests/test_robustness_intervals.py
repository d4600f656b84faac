"""The robustness metrics' 95 % bootstrap intervals over their images, on hand-made sets and a fixed model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from noisy_student.data import ImageSet, save_imageset
from noisy_student.robustness.evaluate import (
    EmbeddedSet,
    ModelUnderTest,
    evaluate_embedded_a,
    evaluate_embedded_c,
    evaluate_embedded_p,
)


class Brightness(nn.Module):
    """Class = mean brightness in tenths (0..9): a fixed classifier whose answers are known by construction."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        level = (x.mean(dim=(1, 2, 3)) * 9.999).floor().long()
        return nn.functional.one_hot(level, 10).float()


MODEL = ModelUnderTest(Brightness(), torch.device("cpu"), batch_size=64)  # type: ignore[arg-type]


def _images(levels: np.ndarray) -> np.ndarray:
    """Flat 8x8 images whose brightness puts them in class ``levels``."""
    return np.repeat(((levels + 0.5) * 25.5).astype(np.uint8)[:, None, None], 8, 1).repeat(8, 2)


def test_c_interval_brackets_the_mce(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 400)
    # two corruptions x two severities: each image kept (right) or moved one class up (wrong) at random
    shifted = [[(labels + (rng.random(400) < p)) % 10 for p in (0.2, 0.4)] for _ in range(2)]
    images = np.stack([np.stack([_images(s) for s in by_sev]) for by_sev in shifted])
    test = tmp_path / "test.wds"
    save_imageset(test, ImageSet(_images(labels), labels, np.arange(400), np.full(400, "fashion_mnist")))
    baseline = {"clean_error": 0.1, "c_errors": {c: {"1": 0.5, "2": 0.6} for c in ("blur", "noise")}}
    arrays = {"images": images, "labels": labels, "corruptions": np.array(["blur", "noise"])}
    out, items = evaluate_embedded_c(EmbeddedSet(arrays, baseline, MODEL, seed=3), test)
    assert out["clean_error"] == 0.0
    # each image's share of mCE: its errors over both corruptions' severities, against 1.1 summed per corruption
    wrong = np.array([[s != labels for s in by_sev] for by_sev in shifted])  # (corruption, severity, image)
    assert list(items["item"]) == list(range(400))
    assert np.allclose(items["mce_share"], 100 * wrong.sum(axis=(0, 1)) / 1.1 / 2)
    assert items["mce_share"].mean() == pytest.approx(out["mce"])
    assert out["mce_ci_low"] < out["mce"] < out["mce_ci_high"]
    # CE = (e1 + e2) / 1.1 x 100 with e ~ 0.2 and 0.4 on 400 images: the interval is a few points wide
    assert 45 < out["mce"] < 65 and 3 < out["mce_ci_high"] - out["mce_ci_low"] < 20


def test_p_interval_is_over_sequences_and_a_interval_over_images() -> None:
    rng = np.random.default_rng(1)
    n, t = 100, 4
    # each sequence flips class at one random frame with probability 0.3, else stays
    levels = np.repeat(rng.integers(0, 9, n)[:, None], t, 1)
    flips = rng.random(n) < 0.3
    levels[flips, 2:] += 1
    seqs = np.stack([_images(levels.reshape(-1)).reshape(n, t, 8, 8)])
    baseline = {"p_flip_probability": {"translate": 0.5}, "p_top5_distance": {}}
    arrays = {"images": seqs, "perturbations": np.array(["translate"])}
    out, items = evaluate_embedded_p(EmbeddedSet(arrays, baseline, MODEL, seed=0))
    assert np.allclose(items["mfr_share"], 100 * flips / 3 / 0.5)  # per sequence: 1 of 3 pairs flips, or none
    # frame-to-frame pairs: a flipping sequence flips on 1 of its 3 pairs
    assert out["fp_translate"] == flips.mean() / 3
    assert out["mfr"] == 100 * out["fp_translate"] / 0.5
    assert out["mfr_ci_low"] < out["mfr"] < out["mfr_ci_high"]

    labels = rng.integers(0, 10, 200)
    right = rng.random(200) < 0.6
    arrays = {"images": _images(np.where(right, labels, (labels + 1) % 10)), "labels": labels}
    out, items = evaluate_embedded_a(EmbeddedSet(arrays, {}, MODEL, seed=0))
    assert out["top1"] == right.mean() and (items["correct"] == right).all()
    half = 1.96 * np.sqrt(right.mean() * (1 - right.mean()) / 200)
    assert abs((out["top1_ci_high"] - out["top1_ci_low"]) / 2 - half) < 0.015
