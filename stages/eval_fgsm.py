"""Stage `eval-FGSM`: accuracy vs FGSM epsilon (0..255 pixel units) and PGD-10 at one epsilon."""

from __future__ import annotations

from pathlib import Path

import typer

from noisy_student.console import PARAMS_OPTION, friendly_errors, params_or_exit
from noisy_student.data import load_imageset
from noisy_student.io import write_csv
from noisy_student.paths import TEST, pgd_curve
from noisy_student.report.charts import attack_curve
from noisy_student.robustness.evaluate import evaluate_attacks, load_model_under_test, save_attack_curve
from noisy_student.tracking import log_artifacts, log_datasets, stage_run, write_metrics
from stages._common import ITEMS_OPTION, METRICS_OPTION, MODEL_OPTION, NAME_OPTION, torch_threads


def main(
    model: Path = MODEL_OPTION,
    name: str = NAME_OPTION,
    test: Path = typer.Option(TEST, help="Clean test set."),
    metrics: Path = METRICS_OPTION,
    items: Path | None = ITEMS_OPTION,
    curve: Path = typer.Option(..., help="CSV epsilon,top1 (DVC plot)."),
    pgd: Path | None = typer.Option(None, help="CSV epsilon,steps,top1 of PGD (DVC plot); default: beside --curve."),
    plot: Path = typer.Option(..., help="PNG of the curve."),
    params_file: Path = PARAMS_OPTION,
) -> None:
    """White-box attacks through the model's own normalisation, on a seeded subset of the test set."""
    params = params_or_exit(params_file)
    torch_threads()
    with friendly_errors():
        data = load_imageset(test)
        net = load_model_under_test(model, params)
    with stage_run("eval-FGSM", params, ("robustness",), name):
        log_datasets(evaluation=(test,))
        result = evaluate_attacks(net, data, params)
        save_attack_curve(result, curve, pgd or curve.parent / pgd_curve(name).name)
        attack_curve({name: result.curve()}, f"FGSM ({name})", plot)
        log_artifacts("plots", plot)
        write_metrics(metrics, result.metrics())
        if items is not None:
            write_csv(items, result.items())
    fgsm = ", ".join(f"eps {e:g}: {100 * a:.1f} %" for e, a in result.fgsm.items())
    typer.echo(
        f"eval-FGSM {name}: {fgsm}; PGD-{result.pgd_steps} eps {result.pgd_epsilon:g}: {100 * result.pgd_top1:.1f} %"
    )


if __name__ == "__main__":
    typer.run(main)
