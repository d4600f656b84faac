"""Stage `teacher`: train the first teacher on the labeled images only (with noise)."""

from __future__ import annotations

from pathlib import Path

import typer

from noisy_student.data import load_imageset
from stages._common import PARAMS_OPTION, friendly_errors, params_or_exit, stage_run, torch_threads
from stages._fit import class_count, fit


def main(
    params_file: Path = PARAMS_OPTION,
    data: Path = typer.Option(Path("data/prepared"), help="Folder written by `prepare`."),
    out: Path = typer.Option(Path("models/teacher.pt"), help="Checkpoint to write."),
    metrics: Path = typer.Option(Path("metrics/teacher.json"), help="Metrics JSON (DVC metric)."),
) -> None:
    """Train the teacher with cross entropy, RandAugment, dropout and stochastic depth."""
    params = params_or_exit(params_file)
    torch_threads()
    with friendly_errors():
        labeled, test = load_imageset(data / "labeled.npz"), load_imageset(data / "test.npz")
    with stage_run("teacher", params, ("teacher",)):
        fit(
            "teacher",
            params,
            params.teacher.model,
            params.teacher.optim,
            params.teacher.noise,
            labeled,
            test,
            out,
            metrics,
            class_count(data, labeled),
        )


if __name__ == "__main__":
    typer.run(main)
