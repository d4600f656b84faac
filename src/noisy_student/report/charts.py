"""Every PNG figure (110 dpi): the stages' (training curves, teacher confidence, attack curves) and the report's
(accuracy per model, ablations, learning curves of every experiment).

Matplotlib is imported when a figure is drawn, with the Agg backend: a stage has no display.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from noisy_student.io import atomic_path
from noisy_student.paths import fgsm_curve, natural_key


def _pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path, tight: bool = False) -> None:
    """Write the figure atomically (a killed stage leaves no half PNG) and free it.

    ``tight``: crop to the drawn content (the stages' single figures); the report's multi-panel
    figures keep their full canvas.
    """
    plt = _pyplot()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, **({"bbox_inches": "tight"} if tight else {}))
    plt.close(fig)


def curves_plot(histories: pd.DataFrame, path: Path) -> None:
    """One panel per trained model (teacher, student@itN), one test top-1 curve per experiment.

    ``histories``: columns ``dvc_exp, run_name, epoch, top1`` (top1 in %), as
    :func:`noisy_student.report.history.training_histories` returns them; empty: one panel saying so.
    """
    plt = _pyplot()
    names = sorted(histories["run_name"].unique(), key=natural_key) if len(histories) else []
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(5.5 * max(1, len(names)), 4), squeeze=False)
    for ax, name in zip(axes[0], names, strict=False):
        ax.set_prop_cycle(color=plt.get_cmap("tab20").colors)  # 20 distinct colours: many experiments
        for exp, curve in histories[histories["run_name"] == name].groupby("dvc_exp", sort=True):
            ax.plot(curve["epoch"], curve["top1"], marker="o", markersize=3, label=str(exp))
        ax.set_title(f"{name}: test top-1 during training")
        ax.set_xlabel("epoch (on the labeled set)")
        ax.set_ylabel("top-1 %")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    if not names:
        axes[0][0].text(0.5, 0.5, "no MLflow training runs recorded", ha="center", va="center")
    fig.tight_layout()
    _save(fig, path)


def accuracy_plot(summary: pd.DataFrame, iterations: pd.DataFrame, path: Path) -> None:
    """Grouped bars: clean / C / A top-1 per model; pseudo-label accuracy of each iteration's teacher as dots.

    ``summary`` and ``iterations``: the frames of :func:`.tables.summary_table` and
    :func:`.tables.iteration_table` (accuracies in %).
    """
    plt = _pyplot()
    if "model" not in summary:  # nothing evaluated: an empty table has no columns at all
        summary = pd.DataFrame({"model": []})
    cols = [c for c in ("clean top-1 %", "C top-1 %", "A top-1 %") if c in summary and summary[c].notna().any()]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(summary) + 2), 4))
    width = 0.8 / max(1, len(cols))
    x = range(len(summary))
    for i, col in enumerate(cols):
        bars = ax.bar([p + i * width for p in x], summary[col], width, label=col)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    if len(iterations):
        # pseudo labels of iteration N come from its teacher: plot them on the teacher's bar group
        pos = {name: p for p, name in enumerate(summary["model"])}
        pts = [
            (pos[t], a)
            for t, a in zip(
                iterations["teacher -> student"].str.split(" -> ").str[0], iterations["pseudo-label acc %"], strict=True
            )
            if t in pos
        ]
        if pts:
            centre = width * (len(cols) - 1) / 2  # the middle of the group, clear of the bar labels
            ax.plot([p + centre for p, _ in pts], [a for _, a in pts], "kD", label="pseudo-label acc % (as teacher)")
    ax.set_xticks([p + width * (len(cols) - 1) / 2 for p in x], list(summary["model"]))
    ax.set_ylabel("top-1 %")
    ax.set_ylim(0, 118)  # headroom above 100 % for the legend
    ax.set_title("accuracy per model")
    ax.legend(fontsize=7, loc="upper center", ncols=2)
    fig.tight_layout()
    _save(fig, path)


def ablation_plot(ablations: pd.DataFrame, path: Path) -> None:
    """Horizontal bars: student top-1 per experiment, the teacher as a tick; the baseline first.

    ``ablations``: the frame of :func:`.tables.ablation_table` (top-1 in %).
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 1.0 + 0.4 * max(1, len(ablations))))
    y = list(range(len(ablations)))[::-1]
    bars = ax.barh(y, ablations["student top-1 %"].fillna(0), color="tab:blue", label="student top-1 %")
    ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.plot(ablations["teacher top-1 %"], y, "k|", markersize=14, label="teacher top-1 %")
    ax.set_yticks(y, list(ablations["experiment"]))
    if ablations.empty:
        ax.text(0.5, 0.5, "no MLflow runs recorded", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("clean top-1 %")
    finite = pd.concat([ablations["student top-1 %"], ablations["teacher top-1 %"]]).dropna()
    if len(finite):
        ax.set_xlim(max(0.0, finite.min() - 5), min(100.0, finite.max() + 3))  # differences are small: zoom
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    _save(fig, path)


def training_curves(history: pd.DataFrame, title: str, path: Path) -> None:
    """Train loss per epoch (left) and test top-1 at the evaluated epochs (right)."""
    fig, (a, b) = _pyplot().subplots(1, 2, figsize=(9, 3.2))
    a.plot(history["epoch"], history["train_loss"])
    a.set(xlabel="epoch", ylabel="train loss", title=f"{title}: loss")
    ev = history.dropna(subset=["test_top1"]) if "test_top1" in history else history.iloc[:0]
    b.plot(ev["epoch"], 100 * ev["test_top1"], marker="o")
    b.set(xlabel="epoch", ylabel="test top-1 (%)", title=f"{title}: accuracy")
    for ax in (a, b):
        ax.grid(alpha=0.3)
    _save(fig, path, tight=True)


def confidence_histogram(
    bins: pd.DataFrame,
    threshold: float,
    title: str,
    path: Path,
    in_domain_label: str = "in-domain (Fashion-MNIST)",
) -> None:
    """Teacher top-1 confidence, in-domain vs out-of-domain, with the filter threshold.

    ``bins``: the table of :func:`noisy_student.pseudo_labels.select.confidence_bins` (densities per bin over
    [0, 1]), so the PNG shows exactly the data of the DVC plot. The in-domain (legend ``in_domain_label``) and
    out-of-domain groups are drawn when the pool has that split; without it (``data.source: folders``: every
    unlabeled image has label -1 because its class is unknown) the pool is drawn as one histogram, "unlabeled
    pool". A group without rows (all-NaN density) is not drawn.
    """
    fig, ax = _pyplot().subplots(figsize=(6, 3.4))
    edges = np.append(bins["bin_start"].to_numpy(), bins["bin_end"].iloc[-1])
    groups = [("in_domain", in_domain_label), ("out_of_domain", "out-of-domain")]
    if not bins["in_domain"].notna().any():
        groups = [("pool", "unlabeled pool (classes unknown)")]
    for column, label in groups:
        if bins[column].notna().any():
            ax.stairs(bins[column].to_numpy(dtype=float), edges, fill=True, alpha=0.7, label=label)
    ax.axvline(threshold, color="k", ls="--", label=f"threshold {threshold:g}")
    ax.set(xlabel="teacher top-1 confidence", ylabel="density", title=title)
    ax.legend()
    ax.grid(alpha=0.3)
    _save(fig, path, tight=True)


def attack_curve(curves: dict[str, pd.DataFrame], title: str, path: Path) -> None:
    """Top-1 accuracy (%) vs attack epsilon (0..255 pixel units), one line per model."""
    fig, ax = _pyplot().subplots(figsize=(5.5, 3.4))
    for name, frame in curves.items():
        ax.plot(frame["epsilon"], 100 * frame["top1"], marker="o", label=name)
    ax.set(xlabel="epsilon (0-255 pixel units)", ylabel="top-1 (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path, tight=True)


def fgsm_comparison(metrics: Path, path: Path, models: Sequence[str] | None = None) -> list[str]:
    """One accuracy-vs-epsilon PNG with every evaluated model's FGSM curve (:func:`paths.fgsm_curve` under ``metrics``).

    ``models``: the models to draw, in this order (e.g. params ``evaluate``); ones without a CSV are
    skipped, so a partly run pipeline still gets a plot. ``None``: every FGSM curve found, sorted by
    model name. Returns the models drawn; raises ``FileNotFoundError`` when there is none, rather
    than writing an empty figure.
    """
    pattern = fgsm_curve("*", metrics=metrics)
    if models is None:
        prefix, suffix = pattern.name.split("*")
        models = sorted(p.name[len(prefix) : -len(suffix)] for p in pattern.parent.glob(pattern.name))
    files = {m: fgsm_curve(m, metrics=metrics) for m in models}
    curves = {m: pd.read_csv(f) for m, f in files.items() if f.is_file()}
    if not curves:
        raise FileNotFoundError(
            f"{pattern.parent}: no {pattern.name.replace('*', '<model>')} curves (run the eval-FGSM stages first)"
        )
    attack_curve(curves, "FGSM: top-1 vs epsilon", path)
    return list(curves)
