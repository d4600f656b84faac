"""Atomic file writes: a killed stage never leaves a half-written output."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates 0600 files; outputs get the mode a plain open() would give them
_FILE_MODE = 0o666 & ~_umask()


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


def remove_stale_temps(path: str | Path) -> list[Path]:
    """Delete the temporary files a killed writer of ``path`` left beside it; return them.

    One process writes a given output at a time (DVC runs a stage once per workspace; training
    states are per-run and locked), so any temp file of ``path`` that exists before a write is a
    leftover, never another writer's file in progress.
    """
    path = Path(path)
    stale = sorted(path.parent.glob(f"{_temp_prefix(path)}*.tmp")) if path.parent.is_dir() else []
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` on success.

    Temp files of ``path`` left by a killed earlier writer are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path), suffix=".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, _FILE_MODE)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _finite(data: Any) -> Any:
    """NaN/inf are not JSON: write them as null."""
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(v) for v in data]
    return data


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as pretty, strict JSON atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_finite(data), indent=2, sort_keys=True, allow_nan=False) + "\n")


def write_csv(path: str | Path, frame: pd.DataFrame) -> None:
    """Write a table as CSV without its index, atomically."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def save_torch(obj: Any, path: str | Path) -> None:
    """``torch.save`` atomically, with bytes that depend on ``obj`` only.

    Saved through an open file handle: given a file name, torch records the (random) temp-file
    name inside the archive, so two saves of identical weights would hash differently and DVC
    would rerun everything downstream.
    """
    import torch  # io stays importable without torch (report, filter-balance)

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(obj, fh)
