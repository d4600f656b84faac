"""What the training stages share at their edge: the training processes (predict's ranks too), one trainer per run."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager

import torch
import typer

from noisy_student import distributed
from noisy_student.config import Params
from noisy_student.devices import resolve_device
from noisy_student.paths import checkpoints_dir
from noisy_student.training import PlanError, RunLockedError, RunPlan, TrainingInputs, claim_run, train_model
from stages._common import fail, friendly_errors, torch_threads


def start_processes(params: Params, any_world: bool = False) -> None:
    """Torch threads, and the ranks when ``distributed.processes`` > 1.

    One process: threads as every stage sets them. Several, started as one process (by DVC or by
    hand): run this same command under torchrun and exit with its code (never returns). A rank under
    torchrun: its share of the threads, checked to be one of as many ranks as the params say, unless
    ``any_world`` (``predict``: any number of ranks labels the same files, so a hand-started torchrun
    of any size is fine).
    """
    processes = params.distributed.processes
    with friendly_errors(ValueError):
        distributed.check_sync_batchnorm(params.distributed.sync_batchnorm, resolve_device(params.device))
    if not distributed.under_torchrun():
        if processes > 1:
            distributed.relaunch(processes, int(os.environ.get(distributed.THREADS_ENV) or torch.get_num_threads()))
        torch_threads()
        return
    ranks = int(os.environ.get("WORLD_SIZE", "1"))
    if ranks != processes and not any_world:
        fail(f"distributed.processes is {processes} but torchrun started {ranks}: run the stage without torchrun")
    distributed.die_with_parent()  # torchrun gone (even killed): this rank goes too
    torch.set_num_threads(distributed.rank_threads())


@contextmanager
def exclusive_run(plan: RunPlan, inputs: TrainingInputs) -> Iterator[str]:
    """Hold a training run's lock (one line and exit 2 when another process trains it); yield its resume key.

    Ranks join their process group here; rank 0 takes the lock and hands its key to the others. On a
    clean exit the other ranks wait for rank 0 (which writes the outputs) before the group closes.
    """
    with ExitStack() as stack:
        with friendly_errors(ValueError):
            world = stack.enter_context(distributed.process_group(resolve_device(plan.device)))
        key = ""
        if world.main:
            with friendly_errors(RunLockedError):
                key = stack.enter_context(claim_run(plan, inputs, checkpoints_dir()))
        try:
            key = distributed.broadcast(key)
        except RuntimeError:  # rank 0 left: it could not start the run and said why
            if world.main:
                raise
            raise typer.Exit(code=2) from None
        yield key
        distributed.barrier()


def other_rank_trains(plan: RunPlan, inputs: TrainingInputs, key: str, warm: Mapping | None = None) -> bool:
    """On ranks other than 0: train here and return True (rank 0 tracks, evaluates and writes). Rank 0 (and a
    single process) returns False at once. ``warm``: the teacher's weights for a warm-started student."""
    if distributed.world().main:
        return False
    try:
        train_model(plan, inputs, checkpoints_dir(), lambda record: None, warm, key)
    except PlanError:
        raise typer.Exit(code=2) from None  # rank 0 says why
    return True
