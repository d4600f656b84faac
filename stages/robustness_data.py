"""Stage `robustness-data`: the -C / -P / -A test sets and the reference (baseline) model.

What is built, and from what: ``noisy_student.robustness.build``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from noisy_student import paths
from noisy_student.console import PARAMS_OPTION, friendly_errors, params_or_exit
from noisy_student.robustness.build import build_robustness_sets, load_build_inputs
from noisy_student.tracking import stage_run, write_metrics


def main(
    test: Path = typer.Option(paths.TEST, help="Test image set."),
    out: Path = typer.Option(paths.ROBUSTNESS_DATA, help="Folder for c.npz, p.npz, a.npz."),
    metrics: Path = typer.Option(paths.metrics_file("robustness-data"), help="Reference model errors."),
    labeled: Path | None = typer.Option(
        None, help="Labeled image set, the reference's training set with data.source folders (default: next to --test)."
    ),
    params_file: Path = PARAMS_OPTION,
) -> None:
    """Generate the corrupted / perturbed / natural-adversarial test sets and the baseline errors."""
    params = params_or_exit(params_file)
    labeled = labeled if labeled is not None else test.with_name(paths.LABELED.name)
    with friendly_errors():
        inputs = load_build_inputs(params, test, labeled)
    with stage_run("robustness-data", params, ("robustness",)):
        result = build_robustness_sets(inputs, params, out)
        write_metrics(metrics, result)
    typer.echo(
        f"robustness-data: {result['a_images']} natural-adversarial images; reference clean top-1 "
        f"{100 * result['reference_clean_top1']:.2f} %"
    )


if __name__ == "__main__":
    typer.run(main)
