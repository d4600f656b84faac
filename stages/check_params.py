"""Stage `check-params`: every key of params.yaml validated before any other stage runs (it depends on the whole
file, `prepare` on its output), so a typo, an unknown key (``-S +key=...``) or a model timm does not have stops
the pipeline here, with the key named, instead of being ignored by stages that never read it."""

from __future__ import annotations

from pathlib import Path

import typer

from noisy_student.console import PARAMS_OPTION, params_or_exit
from noisy_student.io import write_json
from noisy_student.paths import PARAMS_CHECK


def main(
    params_file: Path = PARAMS_OPTION,
    out: Path = typer.Option(PARAMS_CHECK, help="Written only when the params are valid; constant content."),
) -> None:
    """Validate the params file; exit 2 naming each bad key."""
    params_or_exit(params_file)
    # constant for every valid params file: `prepare` depends on it, and must not rerun for unrelated params
    write_json(out, {"valid": True})
    typer.echo(f"{params_file}: every key valid")


if __name__ == "__main__":
    typer.run(main)
