"""`teacher-convergence`: teacher top-1 against epochs from the MLflow store, as a table and a PNG.

Not a DVC stage: it reads the experiments that `dvc exp run -S teacher.optim.epochs=...` logged, e.g.
``noisy-student teacher-convergence t400-s0 t400-s1 t800-s0 t800-s1``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from noisy_student.report.convergence import converged_at, convergence_plot, doubling_summary, teacher_convergence
from noisy_student.report.history import mlflow_runs
from noisy_student.tracking import tracking_uri
from stages._common import PARAMS_OPTION, params_or_exit


def main(
    experiments: list[str] = typer.Argument(None, help="dvc_exp names to include (default: every experiment)."),
    out: Path = typer.Option(Path("reports/teacher-convergence.png"), help="PNG to write."),
    threshold: float = typer.Option(0.3, help="Points a doubling of the epochs may add for 'converged'."),
    params_file: Path = PARAMS_OPTION,
) -> None:
    """Print each teacher run's seed, precision, epochs, top-1 and gain over half its epochs; plot them."""
    experiment = params_or_exit(params_file).tracking.experiment  # the MLflow experiment, not a DVC one
    table = teacher_convergence(mlflow_runs(tracking_uri(), experiment), experiments or None)
    if table.empty:
        typer.secho(f"no finished teacher runs for {experiments or 'any experiment'} in {tracking_uri()}", err=True)
        raise typer.Exit(1)
    typer.echo(table.to_markdown(index=False))
    typer.echo("")
    typer.echo(doubling_summary(table).to_markdown(index=False))
    for precision, epochs in converged_at(table, threshold).items():
        verdict = f"converged at {epochs} epochs" if epochs else "not shown converged"
        typer.echo(f"precision {precision}: {verdict} (doubling adds < {threshold} points on every seed)")
    convergence_plot(table, out, threshold)
    typer.echo(f"wrote {out}")


if __name__ == "__main__":
    typer.run(main)
