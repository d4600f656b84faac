"""`report`: reports/report.md with the summary, per-iteration and ablation tables, plus PNG plots.

Reads the metrics files of a finished pipeline and the MLflow run history; the tables themselves are built
by :mod:`noisy_student.report_tables`. Runs as the last DVC stage and as ``noisy-student report``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd
import typer

from noisy_student.config import Params
from noisy_student.io import atomic_path
from noisy_student.plots import fgsm_comparison
from noisy_student.report_tables import (
    BASELINE,
    ablation_table,
    iteration_table,
    latest_training_runs,
    natural_key,
    ordered_models,
    summary_table,
)
from stages._common import PARAMS_OPTION, flatten, params_or_exit, tracking_uri

# metrics file (relative to the metrics folder) -> column prefix in the per-model frame
MODEL_FILES = {
    "eval": "eval-{m}.json",
    "a": "robustness/a-{m}.json",
    "c": "robustness/c-{m}.json",
    "p": "robustness/p-{m}.json",
    "fgsm": "robustness/fgsm-{m}.json",
}


def _read(path: Path) -> dict[str, Any]:
    """A metrics JSON, or {} when that stage has not run (the table shows a gap instead of failing)."""
    return json.loads(path.read_text()) if path.is_file() else {}


def model_metrics(metrics: Path, models: list[str]) -> pd.DataFrame:
    """One row per model, columns ``<prefix>.<key>`` from every metrics file of that model."""
    rows = {}
    for m in models:
        row: dict[str, Any] = {}
        for prefix, pattern in MODEL_FILES.items():
            row.update(flatten(_read(metrics / pattern.format(m=m)), f"{prefix}."))
        rows[m] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def _arch(params: Params, model: str) -> str:
    """Architecture of a pipeline model as configured (with that iteration's overrides)."""
    if model == "teacher":
        return params.teacher.model.arch
    # per-iteration overrides (Params.for_iteration) when the params schema has them
    resolve = getattr(params, "for_iteration", None)
    return (resolve(model) if resolve else params).student.model.arch


def _teacher_of(params: Params, iteration: str) -> str:
    # an iteration is {teacher: ..., overrides} (or, in older params files, just the teacher's name)
    value = params.iterations[iteration]
    return str(getattr(value, "teacher", value))


def iteration_inputs(metrics: Path, params: Params) -> pd.DataFrame:
    """The per-iteration facts iteration_table needs, from params and the iteration's metrics files."""
    rows = []
    for it in list(params.iterations):
        teacher = _teacher_of(params, it)
        predict, selected = _read(metrics / f"predict-{it}.json"), _read(metrics / f"filter-{it}.json")
        rows.append(
            {
                "iteration": it,
                "teacher": teacher,
                "teacher_arch": _arch(params, teacher),
                "student_arch": _arch(params, it),
                "teacher_top1": _read(metrics / f"eval-{teacher}.json").get("top1"),
                "student_top1": _read(metrics / f"eval-{it}.json").get("top1"),
                "pseudo_label_accuracy": predict.get("pseudo_label_accuracy"),
                "selected_total": selected.get("total"),
                "selected_unique": selected.get("unique"),
            }
        )
    return pd.DataFrame(rows)


def mlflow_runs(uri: str, experiment: str) -> pd.DataFrame:
    """Every run of the MLflow experiment as one row (tags, params, top1). Empty when there is no store.

    A missing SQLite file is not created: inside a queued DVC experiment that would leave a stray store.
    """
    columns = ["run_id", "run_name", "dvc_exp", "start_time", "params_hash", "top1", "params"]
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return pd.DataFrame(columns=columns)
    import mlflow  # imported here: only this part of the report needs it, and it is slow to import

    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return pd.DataFrame(columns=columns)
    rows = []
    page_token = None
    while True:
        page = client.search_runs([exp.experiment_id], max_results=1000, page_token=page_token)
        for r in page:
            rows.append(
                {
                    "run_id": r.info.run_id,
                    "run_name": r.info.run_name,
                    "dvc_exp": r.data.tags.get("dvc_exp", BASELINE),
                    "start_time": r.info.start_time,
                    "params_hash": r.data.tags.get("params_hash"),
                    # eval runs log top1; training runs their last epoch's test_top1 (the fallback)
                    "top1": r.data.metrics.get("top1", r.data.metrics.get("test_top1", float("nan"))),
                    "params": dict(r.data.params),
                }
            )
        page_token = page.token
        if not page_token:
            break
    return pd.DataFrame(rows, columns=columns)


def training_histories(uri: str, runs: pd.DataFrame) -> pd.DataFrame:
    """Test top-1 per epoch of the latest teacher / student run of every experiment.

    Columns ``dvc_exp, run_name, epoch, top1`` (top1 in %). An experiment that did not retrain a model has no
    run for it, so every curve belongs to the experiment that produced it.
    """
    columns = ["dvc_exp", "run_name", "epoch", "top1"]
    latest = latest_training_runs(runs)
    if latest.empty:
        return pd.DataFrame(columns=columns)
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    rows = [
        (run.dvc_exp, run.run_name, int(m.step), 100.0 * m.value)
        for run in latest.itertuples()
        for m in client.get_metric_history(run.run_id, "test_top1")
        if m.step > 0  # epochs count from 1; step 0 would be a summary value
    ]
    return pd.DataFrame(rows, columns=columns).sort_values(["run_name", "dvc_exp", "epoch"], ignore_index=True)


def curves_plot(histories: pd.DataFrame, path: Path) -> None:
    """One panel per trained model (teacher, student@itN), one test top-1 curve per experiment."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def accuracy_plot(summary: pd.DataFrame, iterations: pd.DataFrame, path: Path) -> None:
    """Grouped bars: clean / C / A top-1 per model; pseudo-label accuracy of each iteration's teacher as dots."""
    import matplotlib

    matplotlib.use("Agg")  # a stage has no display
    import matplotlib.pyplot as plt

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
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def ablation_plot(ablations: pd.DataFrame, path: Path) -> None:
    """Horizontal bars: student top-1 per experiment, the teacher as a tick; the baseline first."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def _md(table: pd.DataFrame) -> str:
    if table.empty:
        return "(nothing recorded yet)\n"
    return table.to_markdown(index=False, floatfmt=".2f") + "\n"


def render(
    summary: pd.DataFrame,
    iterations: pd.DataFrame,
    ablations: pd.DataFrame,
    images: dict[str, str],
    baseline: str = BASELINE,
) -> str:
    """The Markdown document (image paths relative to the report)."""
    parts = [
        "# Noisy Student: report\n",
        "## Summary (clean and robustness, per evaluated model)\n",
        "Accuracies in %; C mCE and P mFR x100, lower is better.\n",
        _md(summary),
        "## Iterations (Table 7 style)\n",
        "Pseudo-label accuracy: the teacher's top-1 on the in-domain unlabeled pool. Selected rows: what the "
        "student trains on after filtering and balancing (with duplicates), unique images: distinct ones.\n",
        _md(iterations),
    ]
    if "accuracy" in images:
        parts.append(f"![accuracy per model]({images['accuracy']})\n")
    parts += [
        "## Ablations in the experiment history (Table 6 style)\n",
        "One row per DVC experiment (MLflow runs grouped by their `dvc_exp` tag), latest run of each stage. "
        f"Changed params: what differs from the baseline `{baseline}` (`{BASELINE}`: a plain `dvc repro`). "
        "An experiment reruns only "
        "what its change reaches; `teacher from` names the group whose teacher evaluation is shown.\n",
        _md(ablations),
    ]
    if "ablations" in images:
        parts.append(f"![ablations]({images['ablations']})\n")
    if "curves" in images:
        parts += ["## Learning curves (latest training run of each experiment)\n", f"![curves]({images['curves']})\n"]
    if "fgsm" in images:
        parts += ["## FGSM accuracy vs epsilon (every evaluated model)\n", f"![FGSM]({images['fgsm']})\n"]
    return "\n".join(parts)


def main(
    metrics: Path = typer.Option(Path("metrics"), help="Metrics folder of a finished pipeline."),
    out: Path = typer.Option(Path("reports/report.md"), help="Markdown file to write."),
    plots: Path = typer.Option(None, help="Folder for the PNG plots (default: the report's folder)."),
    mlflow_history: bool = typer.Option(True, "--mlflow/--no-mlflow", help="Ablation table from MLflow runs."),
    baseline: str = typer.Option(BASELINE, help="Experiment (dvc_exp tag) the ablations are compared with."),
    params_file: Path = PARAMS_OPTION,
) -> None:
    """Write the report (Markdown + PNGs) and print it."""
    params = params_or_exit(params_file)
    experiment = os.environ.get("DVC_EXP_NAME", BASELINE)  # the same name stage_run tags MLflow runs with
    # the paper's small, medium and large budgets where they were evaluated
    eps = tuple(e for e in (2.0, 8.0, 16.0) if e in params.robustness.fgsm_epsilons) or params.robustness.fgsm_epsilons
    models = ordered_models(params.evaluate)
    summary = summary_table(model_metrics(metrics, models), eps, experiment)
    iterations = iteration_table(iteration_inputs(metrics, params), experiment)
    runs = mlflow_runs(tracking_uri(), params.tracking.experiment) if mlflow_history else pd.DataFrame()
    # the baseline is this workspace: current params, committed metrics (older runs under its name aside)
    is_workspace = baseline == BASELINE
    defaults = {k: str(v) for k, v in flatten(params.model_dump(mode="json")).items()} if is_workspace else None
    workspace_top1 = dict(zip(summary["model"], summary["clean top-1 %"] / 100, strict=True)) if is_workspace else None
    ablations = ablation_table(runs, baseline, defaults, workspace_top1)

    plots = plots or out.parent
    # both PNGs are always written (DVC declares them as outputs), empty axes when there is nothing to show
    accuracy_plot(summary, iterations, plots / "accuracy.png")
    ablation_plot(ablations, plots / "ablations.png")
    curves_plot(training_histories(tracking_uri(), runs) if mlflow_history else pd.DataFrame(), plots / "curves.png")
    names = ["accuracy", "ablations", "curves"]
    try:
        fgsm_comparison(metrics / "robustness", plots / "fgsm.png", models)
        names.append("fgsm")
    except FileNotFoundError as exc:  # the eval-FGSM stages have not run (outside DVC): report without it
        typer.secho(f"note: {exc}", err=True)
    images = {name: os.path.relpath(plots / f"{name}.png", out.parent) for name in names}
    text = render(summary, iterations, ablations, images, baseline)
    with atomic_path(out) as tmp:
        tmp.write_text(text)
    typer.echo(text)


if __name__ == "__main__":
    typer.run(main)
