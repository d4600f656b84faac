"""What every command shares at the command line: the params option and file, one-line errors.

Used by the tools of :mod:`noisy_student.cli` and, through ``stages/_common.py``, by every DVC stage.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import typer

from noisy_student.config import Params, ParamsError, load_params

PARAMS_OPTION = typer.Option("params.yaml", "--params", help="Validated parameters file.")


def fail(message: str) -> NoReturn:
    """Print one clear message and exit non-zero (no traceback: the message says what to fix)."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def params_or_exit(path: Path, iteration: str | None = None) -> Params:
    """Validated params; with ``iteration``, that iteration's overrides merged in."""
    try:
        params = load_params(path)
        if iteration is None:
            return params
        if iteration not in params.iterations:
            raise ParamsError(f"{path}: iterations: no iteration '{iteration}' (have {list(params.iterations)})")
        return params.for_iteration(iteration)
    except ParamsError as exc:
        fail(str(exc))
        raise  # unreachable; keeps type checkers calm


@contextmanager
def friendly_errors(*also: type[Exception]) -> Iterator[None]:
    """Turn expected input errors into one-line messages; real bugs keep their traceback.

    Missing files (a ``FileNotFoundError``, e.g. a missing dataset) and bad params always count as
    expected; ``also`` adds the error types a command's library call raises for bad user input.
    """
    try:
        yield
    except (ParamsError, FileNotFoundError, *also) as exc:
        fail(str(exc))
