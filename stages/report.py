"""`report`: reports/report.md with the summary, per-iteration and ablation tables, plus PNG plots.

Runs as the last DVC stage and as ``noisy-student report``; the report itself is
:func:`noisy_student.report.build.write_report`.
"""

from __future__ import annotations

from pathlib import Path

import typer

from noisy_student.console import PARAMS_OPTION, params_or_exit
from noisy_student.report.build import write_report
from noisy_student.report.tables import BASELINE
from noisy_student.tracking import experiment_name, tracking_uri


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
    report = write_report(
        metrics,
        params,
        tracking_uri(),
        out,
        plots=plots,
        mlflow_history=mlflow_history,
        baseline=baseline,
        experiment=experiment_name(),
    )
    for note in report.notes:  # the parts left out (the eval-FGSM stages have not run)
        typer.secho(f"note: {note}", err=True)
    typer.echo(report.text)


if __name__ == "__main__":
    typer.run(main)
