"""The processes of a stage that can run as several ranks (teacher, student, predict): threads, torchrun."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import typer

from noisy_student import distributed
from noisy_student.config import Params
from noisy_student.console import fail, friendly_errors
from noisy_student.devices import resolve_device
from stages._common import torch_threads


def start_processes(params: Params, any_world: bool = False) -> None:
    """Torch threads, and the ranks when ``distributed.processes`` or ``distributed.nodes`` > 1: started as one
    process, rerun this command under torchrun and exit with its code (node 0 prints what other nodes run); a
    rank under torchrun takes its share of the threads and must be one of the params' ranks, unless
    ``any_world`` (``predict``: any number of ranks labels the same files)."""
    d = params.distributed
    with friendly_errors(ValueError):
        distributed.check_sync_batchnorm(d.sync_batchnorm, resolve_device(params.device))
    if not distributed.under_torchrun():
        if d.ranks > 1:
            threads = int(os.environ.get(distributed.THREADS_ENV) or torch.get_num_threads())
            distributed.relaunch(d.processes, threads, d.nodes, d.rdzv_endpoint)
        torch_threads()
        return
    ranks = int(os.environ.get("WORLD_SIZE", "1"))
    if ranks != d.ranks and not any_world:
        fail(
            f"distributed.processes x distributed.nodes is {d.processes} x {d.nodes} but torchrun started "
            f"{ranks} ranks: run the stage without torchrun (node 0), or the command it prints (other nodes)"
        )
    distributed.die_with_parent()  # torchrun gone (even killed): this rank goes too
    torch.set_num_threads(distributed.rank_threads())


@contextmanager
def stops_in_one_line(name: str) -> Iterator[None]:
    """What stops a running stage from outside its code, one line and exit 1 instead of a traceback: another
    rank or node gone, a DataLoader worker killed. What the stage saved stays (a training's last
    checkpoint, predict's finished shards): the rerun resumes from it."""
    try:
        yield
    except Exception as exc:
        lost = distributed.lost_peer(exc)
        reason = f"another rank of the job stopped ({lost}); its own log says why" if lost else None
        reason = reason or distributed.dead_loader_worker(exc)
        world = distributed.world()
        if reason is None:
            raise
        who = f"{name} rank {world.rank}/{world.size}" if world.size > 1 else name
        typer.secho(f"error: [{who}] {reason}; run the stage again to resume", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=1) from None
