"""PNG plots people look at instead of reading tables (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from noisy_student.io import atomic_path  # noqa: E402


def _save(fig: plt.Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def training_curves(history: pd.DataFrame, title: str, path: Path) -> None:
    """Train loss per epoch (left) and test top-1 at the evaluated epochs (right)."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    a.plot(history["epoch"], history["train_loss"])
    a.set(xlabel="epoch", ylabel="train loss", title=f"{title}: loss")
    ev = history.dropna(subset=["test_top1"]) if "test_top1" in history else history.iloc[:0]
    b.plot(ev["epoch"], 100 * ev["test_top1"], marker="o")
    b.set(xlabel="epoch", ylabel="test top-1 (%)", title=f"{title}: accuracy")
    for ax in (a, b):
        ax.grid(alpha=0.3)
    _save(fig, path)


def confidence_histogram(
    confidence: np.ndarray, is_out_of_domain: np.ndarray, threshold: float, title: str, path: Path
) -> None:
    """Teacher top-1 confidence, in-domain vs out-of-domain, with the filter threshold."""
    fig, ax = plt.subplots(figsize=(6, 3.4))
    bins = np.linspace(0, 1, 41)
    ax.hist(confidence[~is_out_of_domain], bins=bins, alpha=0.7, label="in-domain (Fashion-MNIST)", density=True)
    if is_out_of_domain.any():
        ax.hist(confidence[is_out_of_domain], bins=bins, alpha=0.7, label="out-of-domain", density=True)
    ax.axvline(threshold, color="k", ls="--", label=f"threshold {threshold:g}")
    ax.set(xlabel="teacher top-1 confidence", ylabel="density", title=title)
    ax.legend()
    ax.grid(alpha=0.3)
    _save(fig, path)


def attack_curve(curves: dict[str, pd.DataFrame], title: str, path: Path) -> None:
    """Top-1 accuracy (%) vs attack epsilon (0..255 pixel units), one line per model."""
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for name, frame in curves.items():
        ax.plot(frame["epsilon"], 100 * frame["top1"], marker="o", label=name)
    ax.set(xlabel="epsilon (0-255 pixel units)", ylabel="top-1 (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)
