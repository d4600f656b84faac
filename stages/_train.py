"""What the two training stages share at their edge: the training processes, one trainer per run."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager

import typer

from noisy_student import distributed
from noisy_student.console import friendly_errors
from noisy_student.data.wds import WdsDataError
from noisy_student.devices import resolve_device
from noisy_student.paths import checkpoints_dir
from noisy_student.training.locks import RunLockedError, claim_run
from noisy_student.training.recipe import PlanError, RunPlan, TrainingInputs, train_model
from stages._processes import stops_in_one_line


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
            key = plan.key(inputs.train)
            with friendly_errors(RunLockedError):
                stack.enter_context(claim_run(plan.name, key, checkpoints_dir()))
        try:
            key = distributed.broadcast(key)
        except RuntimeError:  # rank 0 left: it could not start the run and said why
            if world.main:
                raise
            raise typer.Exit(code=2) from None
        # a tar damaged while streaming (exit 2), a rank, node or loader worker gone (exit 1): one line each
        with friendly_errors(WdsDataError), stops_in_one_line(plan.name):
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
