"""What the stages share at the command line beyond :mod:`noisy_student.console` (params, one-line errors):
the evaluation stages' options and the thread setting."""

from __future__ import annotations

import os

import torch
import typer

MODEL_OPTION = typer.Option(..., help="Checkpoint to evaluate.")
NAME_OPTION = typer.Option(..., help="Model name for the run and metrics (teacher, it1, ...).")
METRICS_OPTION = typer.Option(..., help="Metrics JSON (DVC metric).")
ITEMS_OPTION = typer.Option(None, help="CSV of per-image (per-sequence) values the report pairs models on.")


def torch_threads() -> None:
    """Respect an explicit thread count; otherwise torch's default (all cores)."""
    if os.environ.get("NOISY_STUDENT_THREADS"):
        torch.set_num_threads(int(os.environ["NOISY_STUDENT_THREADS"]))
