"""What the two training stages share at their edge: one trainer per run."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from noisy_student.paths import checkpoints_dir
from noisy_student.training import RunLockedError, RunPlan, TrainingInputs, claim_run
from stages._common import friendly_errors


@contextmanager
def exclusive_run(plan: RunPlan, inputs: TrainingInputs) -> Iterator[str]:
    """Hold a training run's lock (one line and exit 2 when another process trains it); yield its resume key."""
    with ExitStack() as stack:
        with friendly_errors(RunLockedError):
            key = stack.enter_context(claim_run(plan, inputs, checkpoints_dir()))
        yield key
