"""Is the teacher converged? Teacher top-1 against its epochs, per seed and precision, from MLflow runs.

The rule this answers (issue 11, README "Is the teacher converged?"): doubling the teacher's epochs must add
less than ``threshold`` points on every seed. The runs are DVC experiments that differ in
``teacher.optim.epochs`` (e.g. ``dvc exp run -n t800-s0 -S seed=0 -S teacher.optim.epochs=800 eval@teacher``);
their teacher stage runs carry the seed and epochs as params and the final test top-1 as ``test_top1``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from noisy_student.report.charts import _pyplot, _save  # charts.py is a dep of training stages: not edited

CONVERGENCE_COLUMNS = ["dvc_exp", "precision", "seed", "epochs", "top1", "gain_over_half"]


def teacher_convergence(runs: pd.DataFrame, experiments: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per experiment's latest finished teacher run: its seed, precision, epochs and top-1 (%).

    ``runs``: :func:`noisy_student.report.history.mlflow_runs`. ``experiments``: the ``dvc_exp`` names to
    keep (None: every experiment with a finished teacher run). ``gain_over_half`` (points) is the
    row's top-1 minus that of the run with the same seed and precision at half the epochs (NaN when
    there is none). Rows are sorted by precision, seed and epochs.
    """
    teachers = runs[(runs["run_name"] == "teacher") & (runs["status"] == "FINISHED")]
    if experiments is not None:
        teachers = teachers[teachers["dvc_exp"].isin(list(experiments))]
    teachers = teachers.sort_values("start_time").groupby("dvc_exp", sort=False).tail(1)
    rows = [
        {
            "dvc_exp": r.dvc_exp,
            # a run without a pipeline parent (plain `python -m stages.teacher`) has no whole params file
            "precision": (r.pipeline_params or {}).get("precision", "?"),
            "seed": int(r.params["seed"]),
            "epochs": int(r.params["teacher.optim.epochs"]),
            "top1": round(100 * float(r.top1), 2),
        }
        for r in teachers.itertuples()
    ]
    table = pd.DataFrame(rows, columns=CONVERGENCE_COLUMNS[:-1])
    table = table.sort_values(["precision", "seed", "epochs"], ignore_index=True)
    by_key = {(r.precision, r.seed, r.epochs): r.top1 for r in table.itertuples()}
    table["gain_over_half"] = [
        round(r.top1 - by_key[(r.precision, r.seed, r.epochs // 2)], 2)
        if r.epochs % 2 == 0 and (r.precision, r.seed, r.epochs // 2) in by_key
        else np.nan
        for r in table.itertuples()
    ]
    return table


def converged_at(table: pd.DataFrame, threshold: float = 0.3) -> dict[str, int | None]:
    """Per precision: the fewest epochs whose doubling adds < ``threshold`` points on every seed measured.

    None when no length was doubled on every seed of that precision, or no doubling passed.
    """
    out: dict[str, int | None] = {}
    for precision, group in table.groupby("precision"):
        seeds = set(group["seed"])
        out[str(precision)] = None
        for epochs in sorted(set(group["epochs"])):
            doubled = group[(group["epochs"] == 2 * epochs) & group["gain_over_half"].notna()]
            if set(doubled["seed"]) == seeds and (doubled["gain_over_half"] < threshold).all():
                out[str(precision)] = int(epochs)
                break
    return out


def doubling_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per precision and doubling (``from_epochs`` -> twice that): over the seeds that ran both lengths, the
    count ``n`` and the mean, sample std (ddof 1), min and max of the gain (points). One seed's doubling
    moves by about half a point, so the mean over seeds says more than any one seed; the rule itself
    (:func:`converged_at`) still asks every seed."""
    doubled = table[table["gain_over_half"].notna()].assign(from_epochs=lambda t: t["epochs"] // 2)
    summary = doubled.groupby(["precision", "from_epochs"])["gain_over_half"].agg(
        n="count", mean="mean", std=lambda g: g.std(ddof=1), min="min", max="max"
    )
    return summary.round(3).reset_index()


def convergence_plot(table: pd.DataFrame, path: Path, threshold: float = 0.3) -> None:
    """Top-1 (%) against epochs (log2 axis), one line per (precision, seed), each point's gain over half
    its epochs written beside it; the title names the rule and its ``threshold``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, ((precision, seed), group) in enumerate(table.groupby(["precision", "seed"])):
        (line,) = ax.plot(group["epochs"], group["top1"], marker="o", label=f"seed {seed}, precision {precision}")
        for r in group.itertuples():
            if not np.isnan(r.gain_over_half):  # lines can meet at one point: each line's labels at its own height
                ax.annotate(
                    f"{r.gain_over_half:+.2f}",
                    (r.epochs, r.top1),
                    textcoords="offset points",
                    xytext=(6, 11 * i - 16),
                    color=line.get_color(),
                    fontsize=8,
                )
    ax.set_xscale("log", base=2)
    epochs = sorted(set(table["epochs"]))
    ax.set_xticks(epochs, [str(e) for e in epochs])
    ax.margins(x=0.15)  # room for the gain labels right of the last points
    ax.set_xlabel("teacher epochs")
    ax.set_ylabel("test top-1 %")
    ax.set_title(f"Teacher convergence: doubling must add < {threshold} points on every seed", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path, tight=True)
