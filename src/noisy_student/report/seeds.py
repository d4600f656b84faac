"""Does Noisy Student gain over seeds? Each model's top-1 and each student's gain, per seed, with mean and spread.

A single run's gain moves by half a point from seed to seed, so a claim needs several seeds. The runs are
DVC experiments of one recipe that differ in ``seed`` (e.g. ``dvc exp run -n default-s1 -S seed=1``); the
``eval@<model>`` runs carry the clean test top-1 as ``top1``, the ``student@<it>`` runs name the model that
labeled their pool (tag ``teacher_name``). A student's gain is its top-1 minus that labeling model's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from noisy_student.report.charts import _pyplot, _save  # charts.py is a dep of training stages: not edited
from noisy_student.report.tables import ordered_models

KEY_COLUMNS = ["store", "dvc_exp", "seed", "machine"]
TOTAL = "last - teacher"  # the whole method: the last iteration's student over the first teacher


def _latest_finished(runs: pd.DataFrame) -> pd.DataFrame:
    """The newest finished run per store, experiment and run name (reruns: the last one is the result)."""
    done = runs[runs["status"] == "FINISHED"]
    return done.sort_values("start_time").groupby(["store", "dvc_exp", "run_name"], sort=False).tail(1)


def _machine(env: object) -> str:
    """``AMD EPYC (family 25 model 17), 2 threads`` from a run's env tags; '' for runs logged without them."""
    if not isinstance(env, Mapping) or not env.get("env.cpu"):
        return ""
    generation = env.get("env.cpu_generation")
    threads = env.get("env.torch_threads")
    return env["env.cpu"] + (f" ({generation})" if generation else "") + (f", {threads} threads" if threads else "")


def seed_gains(runs: pd.DataFrame, experiments: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per experiment: every evaluated model's top-1 (%) and every student's gain (points).

    ``runs``: :func:`noisy_student.report.history.mlflow_runs`, optionally with a ``store`` column (the
    tracking URI, when rows come from several stores; experiments of the same name in two stores stay two
    rows). ``experiments``: the ``dvc_exp`` names to keep (None: every experiment with an ``eval@teacher``).
    Columns: :data:`KEY_COLUMNS` (``machine`` from the teacher run's env tags), then one per model
    (``teacher``, ``it1``, ... in iteration order), then ``<student> - <its labeler>`` per student and
    :data:`TOTAL` (the last student in the row minus the teacher). Rows sorted by seed, experiment, store.
    """
    if "store" not in runs.columns:
        runs = runs.assign(store="")
    if experiments is not None:
        runs = runs[runs["dvc_exp"].isin(list(experiments))]
    latest = _latest_finished(runs)
    evals = latest[latest["run_name"].str.startswith("eval@")]
    models = ordered_models(name.removeprefix("eval@") for name in set(evals["run_name"]))
    teachers = latest[latest["run_name"] == "teacher"].set_index(["store", "dvc_exp"])
    labelers: dict[tuple[str, str, str], str] = {}  # (store, experiment, student) -> the model that labeled its pool
    for run in runs[runs["run_name"].str.startswith("student@")].itertuples():
        if isinstance(run.teacher_name, str):
            labelers[(run.store, run.dvc_exp, run.run_name.removeprefix("student@"))] = run.teacher_name
    rows = []
    for (store, exp), group in evals.groupby(["store", "dvc_exp"], sort=False):
        top1 = {r.run_name.removeprefix("eval@"): round(100 * float(r.top1), 2) for r in group.itertuples()}
        if "teacher" not in top1:
            continue
        row: dict[str, object] = {
            "store": store,
            "dvc_exp": exp,
            "seed": int(group["params"].iloc[0]["seed"]),
            "machine": _machine(teachers["env"].get((store, exp)) if "env" in teachers.columns else None),
            **{model: top1.get(model, np.nan) for model in models},
        }
        pipeline = next((p for p in group["pipeline_params"] if isinstance(p, Mapping)), {})
        students = [m for m in models if m != "teacher" and m in top1]
        for student in students:
            # a cached student stage logged no run this time: the experiment's params name its labeler
            labeler = labelers.get((store, exp, student)) or pipeline.get(f"iterations.{student}.teacher")
            if labeler in top1:
                row[f"{student} - {labeler}"] = round(top1[student] - top1[labeler], 2)
        if students:
            row[TOTAL] = round(top1[students[-1]] - top1["teacher"], 2)
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return pd.DataFrame(columns=KEY_COLUMNS + models)
    gains = [c for c in table.columns if " - " in c and c != TOTAL]
    columns = KEY_COLUMNS + models + gains + ([TOTAL] if TOTAL in table.columns else [])
    return table[columns].sort_values(["seed", "dvc_exp", "store"], ignore_index=True)


def seed_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Mean, sample standard deviation (ddof 1; NaN for one seed), min and max of every numeric column of
    :func:`seed_gains` (top-1 % and gains in points) over its rows, plus ``n`` (rows with a value)."""
    numeric = table.drop(columns=KEY_COLUMNS).apply(pd.to_numeric)
    summary = pd.DataFrame(
        {
            "n": numeric.count(),
            "mean": numeric.mean(),
            "std": numeric.std(ddof=1),
            "min": numeric.min(),
            "max": numeric.max(),
        }
    )
    return summary.round(3)


def seed_gains_plot(table: pd.DataFrame, path: Path, targets: Mapping[str, float] | None = None) -> None:
    """Every gain column of :func:`seed_gains` as one x position: one dot per seed, the mean with a one
    standard deviation bar, and the column's target (``targets``: column -> points) as a dashed line."""
    gains = [c for c in table.columns if " - " in c]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for x, column in enumerate(gains):
        values = pd.to_numeric(table[column]).dropna()
        ax.scatter(np.full(len(values), x - 0.08), values, color="tab:blue", s=18, label="one seed" if x == 0 else None)
        std = values.std(ddof=1) if len(values) > 1 else 0.0
        ax.errorbar(
            x + 0.08,
            values.mean(),
            yerr=std,
            fmt="D",
            color="tab:red",
            capsize=4,
            label="mean +- 1 std" if x == 0 else None,
        )
        ax.annotate(
            f"{values.mean():+.2f}", (x + 0.08, values.mean()), textcoords="offset points", xytext=(7, 6), fontsize=8
        )
        if targets and column in targets:
            ax.hlines(
                targets[column],
                x - 0.3,
                x + 0.3,
                colors="gray",
                linestyles="dashed",
                label="target" if not any(c in targets for c in gains[:x]) else None,
            )
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_xticks(range(len(gains)), gains)
    ax.set_ylabel("gain in test top-1 (points)")
    ax.set_title(f"Noisy Student gains over {len(table)} runs", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    _save(fig, path, tight=True)
