"""``python -m stages`` (or ``noisy-student``): every DVC stage, under its dvc.yaml name, and the tools beside them."""

from __future__ import annotations

import typer

from stages import (
    check_params,
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
    seed_gains,
    shard,
    student,
    teacher,
    teacher_convergence,
    ui,
)

PIPELINE = "Pipeline stages (dvc.yaml)"
TOOLS = "Tools (not DVC stages)"

app = typer.Typer(
    help="Noisy Student Training: the pipeline stages dvc.yaml runs (same names), and tools that are not DVC stages.",
    no_args_is_help=True,
)
# one spelling per command: a stage's command is its dvc.yaml stage name, case included
for name, module in [
    ("check-params", check_params),
    ("prepare", prepare),
    ("teacher", teacher),
    ("predict", predict),
    ("filter-balance", filter_balance),
    ("student", student),
    ("eval", evaluate),
    ("robustness-data", robustness_data),
    ("eval-C", eval_c),
    ("eval-P", eval_p),
    ("eval-A", eval_a),
    ("eval-FGSM", eval_fgsm),
    ("report", report),
]:
    app.command(name, rich_help_panel=PIPELINE)(module.main)
for name, module in [
    ("ui", ui),
    ("shard", shard),
    ("teacher-convergence", teacher_convergence),
    ("seed-gains", seed_gains),
]:
    app.command(name, rich_help_panel=TOOLS)(module.main)

if __name__ == "__main__":
    app()
