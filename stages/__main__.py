"""``python -m stages`` (or ``noisy-student``): every DVC stage as one typer CLI."""

from __future__ import annotations

import typer

from stages import (
    check_params,
    convergence,
    eval_a,
    eval_c,
    eval_fgsm,
    eval_p,
    evaluate,
    filter_balance,
    predict,
    prepare,
    report,
    robustness_data,
    seeds,
    shard,
    student,
    teacher,
    ui,
)

app = typer.Typer(help="Noisy Student Training stages (the same commands dvc.yaml runs).", no_args_is_help=True)
app.command("check-params")(check_params.main)
app.command("prepare")(prepare.main)
app.command("teacher")(teacher.main)
app.command("predict")(predict.main)
app.command("filter-balance")(filter_balance.main)
app.command("student")(student.main)
app.command("eval")(evaluate.main)
app.command("robustness-data")(robustness_data.main)
app.command("eval-c")(eval_c.main)
app.command("eval-p")(eval_p.main)
app.command("eval-a")(eval_a.main)
app.command("eval-fgsm")(eval_fgsm.main)
app.command("report")(report.main)
app.command("ui")(ui.main)
app.command("shard")(shard.main)
app.command("teacher-convergence")(convergence.main)
app.command("seed-gains")(seeds.main)

if __name__ == "__main__":
    app()
