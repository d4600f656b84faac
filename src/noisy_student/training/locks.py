"""One training run at a time: a file lock per run (name + resume key) in the checkpoints folder, and the
clean-up of resumable states that killed runs left behind."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class RunLockedError(ValueError):
    """Another process is training the same run (same plan, same data) right now."""


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextmanager
def claim_run(name: str, key: str, checkpoints: Path) -> Iterator[None]:
    """Hold the lock of run ``name`` with resume key ``key`` while it trains.

    A second process asking for the same run (same plan, same data: the same resume files) gets a
    :class:`RunLockedError` at once instead of resuming from a state the first one is still writing.
    On a clean exit the run's resumable states are gone (each phase removes its own) and states of
    the same model left by killed runs with other params or data are removed too.
    """
    checkpoints.mkdir(parents=True, exist_ok=True)
    lock = checkpoints / f"{name}-{key}.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    if not _try_lock(fd):
        holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise RunLockedError(
            f"another process (pid {holder}) is training {name} with these params and data "
            f"(lock {lock}); wait for it to finish or stop it, then rerun"
        )
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    try:
        yield
        remove_stale_states(checkpoints, name)
    finally:
        lock.unlink(missing_ok=True)
        os.close(fd)  # releases the lock


def remove_stale_states(checkpoints: Path, name: str) -> list[Path]:
    """Delete the resumable states of model ``name`` that no process is training (killed runs), with their
    temp files and lock files; return what was removed."""
    removed: list[Path] = []
    for lock in sorted(checkpoints.glob(f"{name}-*.lock")):
        fd = os.open(lock, os.O_RDWR)
        try:
            if not _try_lock(fd):
                continue  # a live run (e.g. another queued experiment) holds it
            key = lock.stem[len(name) + 1 :]
            for state in checkpoints.glob(f"{name}-{key}*.pt"):
                state.unlink(missing_ok=True)
                removed.append(state)
            lock.unlink(missing_ok=True)
            removed.append(lock)
        finally:
            os.close(fd)
    locked = {lock.stem for lock in checkpoints.glob(f"{name}-*.lock")}
    for state in sorted(checkpoints.glob(f"{name}-*.pt")):
        if not any(state.stem.startswith(stem) for stem in locked):
            state.unlink(missing_ok=True)
            removed.append(state)
    for tmp in sorted(checkpoints.glob(f".{name}-*.tmp")):
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed
