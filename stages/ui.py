"""`noisy-student ui`: the MLflow UI on this project's store, opened on the training runs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from noisy_student.tracking import tracking_uri, training_runs_url
from stages._common import PARAMS_OPTION, params_or_exit


def main(
    host: str = typer.Option("127.0.0.1", help="Address the UI listens on."),
    port: int = typer.Option(5000, help="Port the UI listens on."),
    params_file: Path = PARAMS_OPTION,
) -> None:
    """Start `mlflow ui` on the project's store and print the address of the experiment's training runs."""
    params = params_or_exit(params_file)
    url = training_runs_url(f"http://{host}:{port}", params.tracking.experiment)
    typer.echo(f"open {url}")
    uri = tracking_uri()
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    # Become mlflow rather than wait on it as a child: SIGTERM / SIGINT then reach mlflow ui itself, which
    # forwards them to uvicorn, and its job runner (huey consumers) exits once uvicorn is gone
    # (tests/test_ui.py). A child would outlive us with all its workers. Flush first: exec drops the buffer.
    sys.stdout.flush()
    os.execv(sys.executable, command)


if __name__ == "__main__":
    typer.run(main)
