"""`seed-gains`: each model's top-1 and each student's gain per seed, with mean and spread, from MLflow.

Not a DVC stage: it reads the experiments that `dvc exp run -S seed=...` logged, e.g.
``noisy-student seed-gains default-s1 default-s2 --store sqlite:///elsewhere/mlflow.db --target "it2 - it1=0.5"``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import typer

from noisy_student.report.history import mlflow_runs
from noisy_student.report.seeds import seed_gains, seed_gains_plot, seed_summary
from noisy_student.tracking import tracking_uri
from stages._common import PARAMS_OPTION, fail, params_or_exit


def _targets(specs: list[str]) -> dict[str, float]:
    targets = {}
    for spec in specs:
        column, sep, value = spec.rpartition("=")
        try:
            targets[column.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not column.strip():
            fail(f"--target {spec!r}: expected '<gain column>=<points>', e.g. 'it2 - it1=0.5'")
    return targets


def main(
    experiments: list[str] = typer.Argument(None, help="dvc_exp names to include (default: every experiment)."),
    store: list[str] = typer.Option(
        None,
        help="MLflow tracking URI to read (repeatable; default: this project's store). A plain `dvc repro` "
        "is the experiment 'workspace' of its store.",
    ),  # fmt: skip
    target: list[str] = typer.Option(None, help="A gain's target drawn on the plot, e.g. 'it1 - teacher=1.0'."),
    out: Path = typer.Option(Path("reports/seed-gains.png"), help="PNG to write."),
    params_file: Path = PARAMS_OPTION,
) -> None:
    """Print one row per experiment (seed, machine, top-1 per model, gain per student), then mean / std /
    min / max over the rows, and plot the gains."""
    experiment = params_or_exit(params_file).tracking.experiment  # the MLflow experiment, not a DVC one
    targets = _targets(target or [])
    uris = store or [tracking_uri()]
    runs = pd.concat([mlflow_runs(uri, experiment).assign(store=uri) for uri in uris], ignore_index=True)
    table = seed_gains(runs, experiments or None)
    if table.empty:
        fail(f"no finished eval@teacher runs for {experiments or 'any experiment'} in {', '.join(uris)}")
    shown = table.drop(columns=[] if len(uris) > 1 else ["store"])
    typer.echo(shown.to_markdown(index=False))
    typer.echo("")
    typer.echo(seed_summary(table).to_markdown())
    seed_gains_plot(table, out, targets)
    typer.echo(f"wrote {out}")


if __name__ == "__main__":
    typer.run(main)
