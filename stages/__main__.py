"""``python -m stages`` (or ``noisy-student``): every DVC stage as one typer CLI."""

from __future__ import annotations

import typer

from stages import evaluate, filter_balance, predict, prepare, student, teacher

app = typer.Typer(help="Noisy Student Training stages (the same commands dvc.yaml runs).", no_args_is_help=True)
app.command("prepare")(prepare.main)
app.command("teacher")(teacher.main)
app.command("predict")(predict.main)
app.command("filter-balance")(filter_balance.main)
app.command("student")(student.main)
app.command("eval")(evaluate.main)

if __name__ == "__main__":
    app()
