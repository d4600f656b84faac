"""What the training loop draws its steps from: one batch interface, and its in-memory implementation.

A training source (:class:`TrainData` here, held in memory; ``StreamedTrainData`` in
:mod:`noisy_student.training.streams`, read from the tars while training) makes a :class:`Batches`
for one run. Every step, :meth:`Batches.next` hands out this rank's labeled and pseudo-labeled
batches as uint8 images ``(B, C, H, W)`` with float targets ``(B, K)``; the loop moves them to the
device, augments and normalises them there, in one place for both sources. ``batch_size`` and
``unlabeled_batch`` are global: with several ranks each gets ``1 / ranks`` of each. The loop calls
:meth:`Batches.begin_epoch` before each epoch's first step (and at a resumed step);
:meth:`Batches.state_dict` is this rank's part of the resume state, restored by
:meth:`Batches.load_state_dict` before the first ``begin_epoch``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from noisy_student.distributed import World

# (uint8 images (B, C, H, W), float targets (B, K) summing to 1 per row), on the host or the device
HostBatch = tuple[torch.Tensor, torch.Tensor]


def one_hot(labels: np.ndarray, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """``(N,)`` class indices -> ``(N, K)`` float targets with optional label smoothing."""
    off = smoothing / num_classes
    t = torch.full((len(labels), num_classes), off, dtype=torch.float32)
    t[torch.arange(len(labels)), torch.as_tensor(labels, dtype=torch.long)] = 1.0 - smoothing + off
    return t


def batches_per_epoch(n_labeled: int, batch_size: int) -> int:
    """Optimizer updates per epoch: full global batches of the labeled set (at least one)."""
    return max(1, n_labeled // batch_size)


@dataclass(frozen=True)
class BatchPlan:
    """How one run cuts its steps: global labeled / pseudo-labeled batch sizes, and whether labeled
    images are in the step (False: Table 13's pretraining on pseudo labels alone)."""

    batch_size: int
    unlabeled_batch: int = 0
    labeled_in_batch: bool = True


class Batches(Protocol):
    """This rank's batches of one run (module docstring)."""

    def begin_epoch(self, epoch: int, step: int) -> None:
        """Epoch ``epoch`` starts, or resumes at ``step`` (its first ``step`` batches already trained on)."""
        ...

    def next(self) -> tuple[HostBatch | None, HostBatch | None]:
        """(this rank's labeled batch or None, its pseudo-labeled batch or None)."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def close(self) -> None:
        """Release what the batches hold (loader processes)."""
        ...


class TrainSource(Protocol):
    """What a run trains on, in memory or streamed: its size, its batches and its content's digest."""

    @property
    def num_labeled(self) -> int: ...

    @property
    def has_unlabeled(self) -> bool: ...

    def batches(self, plan: BatchPlan, world: World, seed: int, device: torch.device) -> Batches: ...

    def labeled_only(self) -> TrainSource: ...

    def update_digest(self, digest: Any) -> None:
        """Feed what the run trains on into ``digest`` (a hashlib object): resume files are valid for it only."""
        ...


def rank_slice(indices: torch.Tensor, world: World) -> torch.Tensor:
    """This rank's contiguous slice of a global batch's indices (all of them for one process)."""
    if world.size == 1:
        return indices
    k = len(indices) // world.size
    return indices[world.rank * k : (world.rank + 1) * k]


@dataclass
class TrainData:
    """Images held in memory: uint8 ``(N, C, H, W)``, float targets ``(N, K)`` summing to 1."""

    labeled_images: torch.Tensor
    labeled_targets: torch.Tensor
    unlabeled_images: torch.Tensor | None = None
    unlabeled_targets: torch.Tensor | None = None

    @property
    def num_labeled(self) -> int:
        return len(self.labeled_images)

    @property
    def has_unlabeled(self) -> bool:
        return self.unlabeled_images is not None and len(self.unlabeled_images) > 0

    def batches(self, plan: BatchPlan, world: World, seed: int, device: torch.device) -> MemoryBatches:
        return MemoryBatches(self, plan, world, seed, device)

    def labeled_only(self) -> TrainData:
        return TrainData(self.labeled_images, self.labeled_targets)

    def update_digest(self, digest: Any) -> None:
        for t in (self.labeled_images, self.labeled_targets, self.unlabeled_images, self.unlabeled_targets):
            if t is not None:
                digest.update(str((tuple(t.shape), t.dtype)).encode())
                digest.update(t.contiguous().numpy().tobytes())

    def resident(self, device: torch.device) -> TrainData:
        """On an accelerator, the tensors moved there when they use under a quarter of its free memory.

        Then batches are gathered and augmented on the device (no per-step host copy); otherwise they
        stay on the host and each batch is copied over.
        """
        if device.type != "cuda":
            return self
        tensors = [self.labeled_images, self.labeled_targets, self.unlabeled_images, self.unlabeled_targets]
        size = sum(t.numel() * t.element_size() for t in tensors if t is not None)
        free, _ = torch.cuda.mem_get_info(device)
        if size > free / 4:
            return self
        return TrainData(*(t.to(device) if t is not None else None for t in tensors))


class _Stream:
    """Endless shuffled index stream over ``n`` rows (reshuffled each pass)."""

    def __init__(self, n: int, gen: torch.Generator) -> None:
        self.n, self.gen = n, gen
        self.perm = torch.randperm(n, generator=gen)
        self.pos = 0

    def take(self, k: int) -> torch.Tensor:
        out = []
        while k > 0:
            if self.pos >= self.n:
                self.perm = torch.randperm(self.n, generator=self.gen)
                self.pos = 0
            chunk = self.perm[self.pos : self.pos + k]
            self.pos += len(chunk)
            k -= len(chunk)
            out.append(chunk)
        return torch.cat(out)

    def state(self) -> dict[str, Any]:
        return {"perm": self.perm, "pos": self.pos}

    def load(self, state: dict[str, Any]) -> None:
        self.perm, self.pos = state["perm"], int(state["pos"])


class MemoryBatches:
    """:class:`Batches` of a :class:`TrainData`: rows drawn from endless shuffled index streams.

    Every rank draws the same global batch indices (one index generator seeded with ``seed``, shared
    by the ranks) and keeps its contiguous slice. The labeled stream is drawn even when unused
    (Table 13's pretraining), so epochs and draws stay aligned across schedules.
    """

    def __init__(self, data: TrainData, plan: BatchPlan, world: World, seed: int, device: torch.device) -> None:
        self.data, self.plan, self.world = data.resident(device), plan, world
        self.gen = torch.Generator().manual_seed(seed)
        self.labeled = _Stream(data.num_labeled, self.gen)
        pseudo = data.has_unlabeled and plan.unlabeled_batch > 0
        self.unlabeled = _Stream(len(data.unlabeled_images), self.gen) if pseudo else None  # type: ignore[arg-type]

    def begin_epoch(self, epoch: int, step: int) -> None:
        """Nothing to do: the index streams are endless."""

    def next(self) -> tuple[HostBatch | None, HostBatch | None]:
        d, plan = self.data, self.plan
        li = rank_slice(self.labeled.take(plan.batch_size), self.world)
        labeled = (d.labeled_images[li], d.labeled_targets[li]) if plan.labeled_in_batch else None
        unlabeled = None
        if self.unlabeled is not None:
            ui = rank_slice(self.unlabeled.take(plan.unlabeled_batch), self.world)
            unlabeled = (d.unlabeled_images[ui], d.unlabeled_targets[ui])  # type: ignore[index]
        return labeled, unlabeled

    def state_dict(self) -> dict[str, Any]:
        state = {"gen": self.gen.get_state(), "labeled": self.labeled.state()}
        return state if self.unlabeled is None else {**state, "unlabeled": self.unlabeled.state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.gen.set_state(state["gen"])
        self.labeled.load(state["labeled"])
        if self.unlabeled is not None:
            self.unlabeled.load(state["unlabeled"])

    def close(self) -> None:
        """Nothing to release."""
