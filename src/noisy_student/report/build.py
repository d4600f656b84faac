"""The whole report: reports/report.md with the summary, per-iteration and ablation tables, plus PNG plots."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from noisy_student.config import Params
from noisy_student.io import atomic_path
from noisy_student.report.charts import ablation_plot, accuracy_plot, curves_plot, fgsm_comparison
from noisy_student.report.history import mlflow_runs, training_histories
from noisy_student.report.inputs import iteration_inputs, model_metrics, paired_gains, robustness_gains
from noisy_student.report.tables import (
    BASELINE,
    ablation_table,
    interval_table,
    iteration_table,
    ordered_models,
    paired_table,
    robustness_gain_table,
    summary_table,
)
from noisy_student.tracking import flatten

# the paper's small, medium and large FGSM budgets (0..255 pixel units), shown where they were evaluated
PAPER_EPSILONS = (2.0, 8.0, 16.0)


@dataclass
class Report:
    """What :func:`write_report` wrote: the Markdown text, and notes on the parts it had to leave out."""

    text: str
    notes: list[str] = field(default_factory=list)


def _md(table: pd.DataFrame) -> str:
    """A frame as a Markdown pipe table (2 decimals; p-values, which span decades, 3 significant digits),
    or a placeholder line when it has no rows."""
    if table.empty:
        return "(nothing recorded yet)\n"
    formats = [".3g" if str(c).endswith(" p") else ".2f" for c in table.columns]
    # missing cells (a model not evaluated, a comparison not possible) read "n/a", not "nan" / "<NA>"
    cells = table.astype(object).where(table.notna(), None)
    return cells.to_markdown(index=False, floatfmt=formats, missingval="n/a") + "\n"


def render(
    summary: pd.DataFrame,
    iterations: pd.DataFrame,
    ablations: pd.DataFrame,
    images: dict[str, str],
    baseline: str = BASELINE,
    paired: pd.DataFrame | None = None,
    intervals: pd.DataFrame | None = None,
    robustness: pd.DataFrame | None = None,
) -> str:
    """The Markdown document.

    ``images``: figure name (``accuracy``, ``ablations``, ``curves``, ``fgsm``) -> PNG path relative to the
    report; a figure missing from it gets no section / link.
    """
    parts = [
        "# Noisy Student: report\n",
        "## Summary (clean and robustness, per evaluated model)\n",
        "Accuracies in %; C mCE and P mFR x100, lower is better.\n",
        _md(summary),
        "95 % bootstrap intervals over the images (A, FGSM / PGD), test images (C) and sequences (P) each was "
        "measured on: how far the number could move with other images of the same sets.\n",
        _md(intervals if intervals is not None else pd.DataFrame()),
        "## Iterations (Table 7 style)\n",
        "Pseudo-label accuracy: the teacher's top-1 on the in-domain unlabeled pool. Selected rows: what the "
        "student trains on after filtering and balancing (with duplicates), unique images: distinct ones.\n",
        _md(iterations),
        "## Gains on the same test images (paired)\n",
        "Both models answer the same test images, so their difference is far more certain than either "
        "accuracy's spread over seeds: 95 % CI = paired bootstrap over the test images (2,000 resamples, "
        "seeded); B only / A only: images only that model gets right; McNemar p: exact test that those split "
        "50/50. Empty cells: a model's per-image predictions (metrics/predictions) are missing. With a "
        "same-network baseline (params `supervised`), teacher -> supervised-itN is the larger network's share of "
        "the gain and supervised-itN -> itN Noisy Student's.\n",
        _md(paired if paired is not None else pd.DataFrame()),
        "## Robustness gains on the same images (paired)\n",
        "B - A on the same embedded -A / -C / -P images (sequences) and attacked images, with a paired bootstrap "
        "95 % CI over them (2,000 resamples, seeded): accuracies in points (higher is better), C mCE and P mFR "
        "in their units (lower is better). Pairing removes what the images share, so these intervals are "
        "narrower than the per-model ones above. Empty: no per-item file (metrics/predictions), e.g. a "
        "released benchmark.\n",
        _md(robustness if robustness is not None else pd.DataFrame()),
    ]
    if "accuracy" in images:
        parts.append(f"![accuracy per model]({images['accuracy']})\n")
    parts += [
        "## Ablations in the experiment history (Table 6 style)\n",
        "One row per DVC experiment (MLflow runs grouped by their `dvc_exp` tag), latest run of each stage. "
        f"Changed params: what its whole params file changes against the baseline `{baseline}` (`{BASELINE}`: "
        "a plain `dvc repro`). An experiment reruns only what its change reaches, so its teacher is found by "
        "the checkpoint's content hash; `teacher from` names the experiment whose evaluation of that checkpoint "
        "is shown (empty: no run evaluated it; `(assumed)`: runs logged without checkpoint hashes).\n",
        _md(ablations),
    ]
    if "ablations" in images:
        parts.append(f"![ablations]({images['ablations']})\n")
    if "curves" in images:
        parts += ["## Learning curves (latest training run of each experiment)\n", f"![curves]({images['curves']})\n"]
    if "fgsm" in images:
        parts += ["## FGSM accuracy vs epsilon (every evaluated model)\n", f"![FGSM]({images['fgsm']})\n"]
    return "\n".join(parts)


def write_report(
    metrics: Path,
    params: Params,
    uri: str,
    out: Path,
    plots: Path | None = None,
    mlflow_history: bool = True,
    baseline: str = BASELINE,
    experiment: str = BASELINE,
) -> Report:
    """Write the Markdown report ``out`` and its PNGs (``plots``, default: the report's folder).

    ``metrics``: the metrics folder of a (partly) finished pipeline; ``uri``: the MLflow tracking URI
    (read only; a missing SQLite store is not created); ``mlflow_history``: False leaves the ablations and
    curves empty; ``baseline``: the experiment (``dvc_exp`` tag) the ablations are compared with;
    ``experiment``: the name the summary and iteration tables are labelled with (this workspace's DVC
    experiment). accuracy.png, ablations.png and curves.png are always written (DVC declares them as
    outputs), fgsm.png only when some model has an FGSM curve.
    """
    eps = tuple(e for e in PAPER_EPSILONS if e in params.robustness.fgsm_epsilons) or params.robustness.fgsm_epsilons
    models = ordered_models(params.evaluate)
    per_model = model_metrics(metrics, models)
    summary = summary_table(per_model, eps, experiment)
    intervals = interval_table(per_model, eps, experiment)
    iterations = iteration_table(iteration_inputs(metrics, params), experiment)
    paired = paired_table(paired_gains(metrics, params), experiment)
    robustness = robustness_gain_table(robustness_gains(metrics, params), experiment)
    runs = mlflow_runs(uri, params.tracking.experiment) if mlflow_history else pd.DataFrame()
    # the baseline is this workspace: current params, committed metrics (older runs under its name aside)
    is_workspace = baseline == BASELINE
    defaults = {k: str(v) for k, v in flatten(params.model_dump(mode="json")).items()} if is_workspace else None
    workspace_top1 = dict(zip(summary["model"], summary["clean top-1 %"] / 100, strict=True)) if is_workspace else None
    ablations = ablation_table(runs, baseline, defaults, workspace_top1)

    plots = plots or out.parent
    # empty axes when there is nothing to show: DVC expects every declared PNG
    accuracy_plot(summary, iterations, plots / "accuracy.png")
    ablation_plot(ablations, plots / "ablations.png")
    curves_plot(training_histories(uri, runs) if mlflow_history else pd.DataFrame(), plots / "curves.png")
    names, notes = ["accuracy", "ablations", "curves"], []
    try:
        fgsm_comparison(metrics, plots / "fgsm.png", models)
        names.append("fgsm")
    except FileNotFoundError as exc:  # the eval-FGSM stages have not run (outside DVC): report without it
        notes.append(str(exc))
    images = {name: os.path.relpath(plots / f"{name}.png", out.parent) for name in names}
    text = render(summary, iterations, ablations, images, baseline, paired, intervals, robustness)
    with atomic_path(out) as tmp:
        tmp.write_text(text)
    return Report(text, notes)
