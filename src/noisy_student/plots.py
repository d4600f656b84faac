"""PNG plots people look at instead of reading tables (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Sequence
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
    confidence: np.ndarray,
    is_out_of_domain: np.ndarray,
    threshold: float,
    title: str,
    path: Path,
    in_domain_label: str = "in-domain (Fashion-MNIST)",
) -> None:
    """Teacher top-1 confidence, in-domain vs out-of-domain, with the filter threshold.

    Rows with a known true label are in-domain (legend ``in_domain_label``), rows with label < 0
    out-of-domain. When no row has a known label (``data.source: folders``: every unlabeled image has
    label -1 because its class is unknown, not because it lies outside the domain) the pool is drawn
    as one histogram, "unlabeled pool". A group without rows is not drawn: a density histogram of
    nothing divides by zero.
    """
    fig, ax = plt.subplots(figsize=(6, 3.4))
    bins = np.linspace(0, 1, 41)
    in_domain = ~is_out_of_domain
    if in_domain.any():
        ax.hist(confidence[in_domain], bins=bins, alpha=0.7, label=in_domain_label, density=True)
        if is_out_of_domain.any():
            ax.hist(confidence[is_out_of_domain], bins=bins, alpha=0.7, label="out-of-domain", density=True)
    elif len(confidence):
        ax.hist(confidence, bins=bins, alpha=0.7, label="unlabeled pool (classes unknown)", density=True)
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


def fgsm_comparison(folder: Path, path: Path, models: Sequence[str] | None = None) -> list[str]:
    """One accuracy-vs-epsilon PNG with every evaluated model's FGSM curve (``folder/fgsm-<model>.csv``).

    ``models``: the models to draw, in this order (e.g. params ``evaluate``); ones without a CSV are
    skipped, so a partly run pipeline still gets a plot. ``None``: every ``fgsm-*.csv`` in ``folder``,
    sorted by name. Returns the models drawn; raises ``FileNotFoundError`` when there is none, rather
    than writing an empty figure.
    """
    if models is None:
        models = sorted(p.name[len("fgsm-") : -len(".csv")] for p in folder.glob("fgsm-*.csv"))
    curves = {m: pd.read_csv(folder / f"fgsm-{m}.csv") for m in models if (folder / f"fgsm-{m}.csv").is_file()}
    if not curves:
        raise FileNotFoundError(f"{folder}: no fgsm-<model>.csv curves (run the eval-FGSM stages first)")
    attack_curve(curves, "FGSM: top-1 vs epsilon", path)
    return list(curves)
