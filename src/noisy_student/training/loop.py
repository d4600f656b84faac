"""One training loop for teacher and student.

A teacher is a student without a pseudo-labeled stream. Every step takes a
labeled batch of ``batch_size`` and, when pseudo-labeled data is given, an
unlabeled batch of ``unlabeled_ratio * batch_size``; the loss is the task's
(:class:`~noisy_student.training.task.NoisyStudentTask`). Epochs are counted
on the labeled set.

timm owns what timm has: the task, the optimizer and scheduler factories and
weight EMA. Every ``optim.checkpoint_steps`` optimizer updates the full
training state is saved atomically; a rerun with the same key resumes from it
exactly (same weights as an uninterrupted run).

Run under a process group (several ranks, :mod:`noisy_student.distributed`), the loop is data
parallel: every rank draws the same global batch indices (one shared index generator), takes its
contiguous slice of them, and trains a DDP-wrapped model whose gradients are averaged over the
ranks, so ``batch_size`` stays the global batch. Augmentation and dropout draw from each rank's own
generator (``seed + rank``). Rank 0 evaluates, reports epochs and writes the resume state, which
holds every rank's random generators.

Data too large for host memory is streamed from WebDataset shards instead (``StreamedTrainData``,
:mod:`noisy_student.training.streams`): the same loop, steps and loss, with each rank reading its own
shards.
"""

from __future__ import annotations

import pickle
import sys
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.scheduler.scheduler import Scheduler
from tqdm.auto import tqdm

from noisy_student import distributed
from noisy_student.config import NoiseParams, OptimParams, StudentNoiseParams
from noisy_student.devices import autocast
from noisy_student.distributed import World
from noisy_student.io import save_torch
from noisy_student.models import ImageClassifier
from noisy_student.noise import BatchAugment
from noisy_student.seeds import seed_everything
from noisy_student.training.task import Batch, NoisyStudentTask

if TYPE_CHECKING:  # streams imports this module: the loop imports it when it trains streamed data
    from noisy_student.training.streams import StreamedTrainData


@dataclass
class TrainData:
    """Tensors on the host: uint8 images ``(N, C, H, W)``, float targets ``(N, K)`` summing to 1."""

    labeled_images: torch.Tensor
    labeled_targets: torch.Tensor
    unlabeled_images: torch.Tensor | None = None
    unlabeled_targets: torch.Tensor | None = None

    @property
    def has_unlabeled(self) -> bool:
        return self.unlabeled_images is not None and len(self.unlabeled_images) > 0


EpochCallback = Callable[[dict[str, float]], None]
EvalFn = Callable[[ImageClassifier], dict[str, float]]


def one_hot(labels: np.ndarray, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """``(N,)`` class indices -> ``(N, K)`` float targets with optional label smoothing."""
    off = smoothing / num_classes
    t = torch.full((len(labels), num_classes), off, dtype=torch.float32)
    t[torch.arange(len(labels)), torch.as_tensor(labels, dtype=torch.long)] = 1.0 - smoothing + off
    return t


def batches_per_epoch(n_labeled: int, batch_size: int) -> int:
    return max(1, n_labeled // batch_size)


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


@dataclass
class _Progress:
    """Where the loop stands: the part of the training state that is not model, optimizer or RNG."""

    history: list[dict[str, float]] = field(default_factory=list)
    epoch: int = 0  # next epoch to run (0-based)
    step: int = 0  # next step within that epoch
    loss_sum: float = 0.0  # image-weighted loss of the epoch so far
    seen: int = 0  # images of the epoch so far


def _resident(data: TrainData, device: torch.device) -> TrainData:
    """Move the image/target tensors to the accelerator when they use under a quarter of its free memory.

    Then batches are gathered and augmented on the device (no per-step host
    copy); otherwise they stay on the host and each batch is copied over.
    """
    tensors = [data.labeled_images, data.labeled_targets, data.unlabeled_images, data.unlabeled_targets]
    size = sum(t.numel() * t.element_size() for t in tensors if t is not None)
    free, _ = torch.cuda.mem_get_info(device)
    if size > free / 4:
        return data
    return TrainData(*(t.to(device) if t is not None else None for t in tensors))


def _optimization(
    model: ImageClassifier, optim: OptimParams, steps_per_epoch: int
) -> tuple[torch.optim.Optimizer, Scheduler]:
    """timm's optimizer and a per-update scheduler (warmup from 1 % of ``lr``)."""
    optimizer = create_optimizer_v2(
        model, opt=optim.optimizer, lr=optim.lr, weight_decay=optim.weight_decay, momentum=optim.momentum
    )
    sched_kwargs: dict[str, Any] = {}
    if optim.sched == "step":
        sched_kwargs = {"decay_epochs": optim.decay_epochs, "decay_rate": optim.decay_rate}
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=optim.sched,
        num_epochs=optim.epochs,
        warmup_epochs=optim.warmup_epochs,
        warmup_lr=optim.lr * 0.01,
        step_on_epochs=False,
        updates_per_epoch=steps_per_epoch,
        **sched_kwargs,
    )
    return optimizer, scheduler


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """This process's global generators (augmentation, dropout): the CPU one, and CUDA's on CUDA."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


@dataclass
class _Resume:
    """The resumable training state of one run, in the file ``path``, valid only for ``key``.

    One file for all ranks: rank 0 writes it (model, optimizer, streams: the same on every rank) with
    every rank's generators gathered into it; every rank reads it back and takes its own. ``rank_streams``
    (streamed data) differ by rank: their states are gathered the same way.
    """

    path: Path | None
    key: str
    task: NoisyStudentTask
    optimizer: torch.optim.Optimizer
    streams: dict[str, _Stream]
    gen: torch.Generator
    device: torch.device
    world: World
    rank_streams: dict[str, Any] = field(default_factory=dict)  # objects with state() / load(state)

    def load(self) -> _Progress | None:
        """The saved progress (model, optimizer, streams and RNGs restored in place), or None."""
        if self.path is None or not self.path.is_file():
            return None
        try:
            # tensors and plain containers only: a crafted file in the checkpoint folder cannot run code
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
            tqdm.write(f"ignoring unreadable training state {self.path} ({type(exc).__name__}); starting over")
            return None
        if not isinstance(state, dict) or state.get("key") != self.key:
            return None
        if int(state.get("world_size", 1)) != self.world.size:
            tqdm.write(
                f"ignoring training state {self.path}: saved by {state.get('world_size', 1)} processes, "
                f"this run has {self.world.size}; starting over"
            )
            return None
        rank_streams = state.get("rank_streams")
        if self.rank_streams and (not isinstance(rank_streams, list) or len(rank_streams) != self.world.size):
            tqdm.write(f"ignoring training state {self.path}: it has no streamed-data positions; starting over")
            return None
        self.task.load_checkpoint_state(state["state_dict"])
        if self.task.has_ema() and "state_dict_ema" in state:
            self.task.load_checkpoint_state(state["state_dict_ema"], ema=True)
        self.optimizer.load_state_dict(state["optimizer"])
        for name, stream in self.streams.items():
            stream.load(state[f"{name}_stream"])
        for name, stream in self.rank_streams.items():
            stream.load(rank_streams[self.world.rank][name])
        self.gen.set_state(state["gen"])
        if self.world.size > 1:
            _set_rng_state(state["rank_rng"][self.world.rank], self.device)
        else:
            _set_rng_state({"cpu": state["torch_rng"], "cuda": state.get("cuda_rng")}, self.device)
        return _Progress(
            state["history"], int(state["epoch"]), int(state["step"]), float(state["loss_sum"]), int(state["seen"])
        )

    def save(self, progress: _Progress) -> None:
        """Write the state (atomically); with several ranks every rank must call it (their generators are gathered)."""
        if self.path is None:
            return
        rank_rng = distributed.gather(_rng_state(self.device)) if self.world.size > 1 else None
        mine = {name: stream.state() for name, stream in self.rank_streams.items()}
        rank_streams = distributed.gather(mine) if self.rank_streams else None
        if not self.world.main:
            return
        state: dict[str, Any] = {
            "key": self.key,
            "epoch": progress.epoch,
            "step": progress.step,
            "loss_sum": progress.loss_sum,
            "seen": progress.seen,
            "optimizer": self.optimizer.state_dict(),
            **{f"{name}_stream": stream.state() for name, stream in self.streams.items()},
            "gen": self.gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "history": progress.history,
            **self.task.get_checkpoint_state(),
        }
        if self.task.has_ema():
            state.update(self.task.get_checkpoint_state(ema=True))
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        if rank_rng is not None:
            state.update(world_size=self.world.size, rank_rng=rank_rng)
        if rank_streams is not None:
            state["rank_streams"] = rank_streams
        save_torch(state, self.path)

    def finish(self) -> None:
        if self.world.main and self.path is not None and self.path.exists():
            self.path.unlink()


class _Batches:
    """Draws each step's labeled and pseudo-labeled batches: indices from the streams, input noise, to the device.

    The labeled stream is drawn even when unused (Table 13's pretraining), so epochs and RNG draws stay
    aligned across schedules. ``batch_size`` / ``unlabeled_batch`` are global: with several ranks each
    draws the same indices and keeps its own contiguous slice (``1 / world.size`` of them).
    """

    def __init__(
        self,
        data: TrainData,
        streams: dict[str, _Stream],
        noise: StudentNoiseParams,
        batch_size: int,
        unlabeled_batch: int,
        labeled_in_batch: bool,
        device: torch.device,
        channels_last: bool,
        world: World,
    ) -> None:
        self.data, self.streams, self.device, self.channels_last = data, streams, device, channels_last
        self.world = world
        self.batch_size, self.unlabeled_batch, self.labeled_in_batch = batch_size, unlabeled_batch, labeled_in_batch
        self.augment = BatchAugment(noise)
        self.augment_unlabeled = self.augment if noise.unlabeled_augment else BatchAugment(noise, augment=False)

    def _to_device(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, C, H, W)`` -> float 0..1 on the device, in the model's memory format."""
        x = images.to(self.device, non_blocking=True).float().div_(255)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _mine(self, indices: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous slice of the global batch's indices (all of them for one process)."""
        if self.world.size == 1:
            return indices
        k = len(indices) // self.world.size
        return indices[self.world.rank * k : (self.world.rank + 1) * k]

    def next(self) -> tuple[Batch | None, Batch | None, int]:
        """(this rank's labeled batch or None, its pseudo-labeled batch or None, images in the global step)."""
        d = self.data
        li = self._mine(self.streams["labeled"].take(self.batch_size))
        labeled = (self.augment(d.labeled_images[li]), d.labeled_targets[li]) if self.labeled_in_batch else None
        unlabeled = None
        if d.has_unlabeled:
            ui = self._mine(self.streams["unlabeled"].take(self.unlabeled_batch))
            unlabeled = (self.augment_unlabeled(d.unlabeled_images[ui]), d.unlabeled_targets[ui])
        images = sum(len(b[1]) for b in (labeled, unlabeled) if b is not None) * self.world.size
        return self._on_device(labeled), self._on_device(unlabeled), images

    def _on_device(self, batch: tuple[torch.Tensor, torch.Tensor] | None) -> Batch | None:
        if batch is None:
            return None
        return self._to_device(batch[0]), batch[1].to(self.device, non_blocking=True)

    def begin_epoch(self, epoch: int, step: int) -> None:
        """Epoch ``epoch`` starts (or resumes) at ``step``: nothing to do for endless index streams."""

    def close(self) -> None:
        """Nothing to release (a streamed source stops its loader processes)."""


def epoch_steps(data: TrainData | StreamedTrainData, batch_size: int) -> int:
    """Optimizer updates per epoch: full global batches of the labeled set."""
    n = len(data.labeled_images) if isinstance(data, TrainData) else data.num_labeled
    return batches_per_epoch(n, batch_size)


def train_classifier(
    model: ImageClassifier,
    data: TrainData | StreamedTrainData,
    optim: OptimParams,
    noise: NoiseParams,
    *,
    unlabeled_ratio: int = 0,
    labeled_in_batch: bool = True,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = True,
    seed: int,
    checkpoint_path: Path | None = None,
    checkpoint_key: str = "",
    eval_fn: EvalFn | None = None,
    on_epoch: EpochCallback | None = None,
    desc: str = "train",
    sync_batchnorm: bool = False,
) -> tuple[ImageClassifier, list[dict[str, float]]]:
    """Train ``model`` in place and return the model to keep (EMA weights when enabled) and the history.

    ``noise``: the input noise of every image; a :class:`StudentNoiseParams`
    also says whether pseudo-labeled images get input / model noise (Table 6;
    a plain :class:`NoiseParams` means they do). ``eval_fn`` is called every
    ``optim.eval_every`` epochs and on the last one; its metrics join that
    epoch's record. ``on_epoch`` receives each record. ``labeled_in_batch=False``
    trains on the pseudo-labeled stream alone while epochs are still counted
    on the labeled set (Table 13's pretraining phase). ``amp_dtype``: the
    autocast dtype of forward + loss (``devices.resolve_precision``; None:
    float32). ``channels_last``: model and inputs in channels-last memory
    format (faster convolutions on CUDA and on CPU: bench/speedup.py). Every
    ``optim.checkpoint_steps`` updates the full state (weights, optimizer, EMA,
    data streams, RNGs, partial epoch loss) is saved atomically; a call with
    the same ``checkpoint_key`` resumes from it exactly.

    Called on every rank of an initialized process group, it trains data parallel (module
    docstring): ``device`` is this rank's, ``optim.batch_size`` must divide by the number of ranks,
    and ``eval_fn`` / ``on_epoch`` run on rank 0 only while the others wait. ``sync_batchnorm``
    (CUDA only) synchronizes batch-norm statistics over the ranks.

    ``data``: host tensors (:class:`TrainData`) or shard folders read while training
    (:class:`~noisy_student.training.streams.StreamedTrainData`; steps per epoch from its
    ``num_labeled``, each rank streaming its own shards; resume exact as that module says).
    """
    if not labeled_in_batch and not data.has_unlabeled:
        raise ValueError("labeled_in_batch=False needs pseudo-labeled images")
    world = distributed.world()
    if optim.batch_size % world.size:
        raise ValueError(f"batch_size {optim.batch_size} does not divide by the {world.size} training processes")
    distributed.check_sync_batchnorm(sync_batchnorm, device)
    pseudo = noise if isinstance(noise, StudentNoiseParams) else StudentNoiseParams(**noise.model_dump())
    seed_everything(seed + world.rank)  # augmentation and dropout: each rank its own; batch indices: `gen`, shared
    gen = torch.Generator().manual_seed(seed)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if device.type == "cuda" and isinstance(data, TrainData):
        data = _resident(data, device)
    task = NoisyStudentTask(model, unlabeled_model_noise=pseudo.unlabeled_model_noise, device=device)
    if optim.ema_decay > 0:
        task.setup_ema(decay=optim.ema_decay, use_warmup=True)  # of the plain module, before any wrapping
    steps_per_epoch = epoch_steps(data, optim.batch_size)
    optimizer, scheduler = _optimization(model, optim, steps_per_epoch)
    u_batch = optim.batch_size * unlabeled_ratio if data.has_unlabeled else 0
    batches: _Batches
    if isinstance(data, TrainData):
        streams = {"labeled": _Stream(len(data.labeled_images), gen)}
        if data.has_unlabeled:
            streams["unlabeled"] = _Stream(len(data.unlabeled_images), gen)
        batches = _Batches(
            data, streams, pseudo, optim.batch_size, u_batch, labeled_in_batch, device, channels_last, world
        )
        rank_streams: dict[str, Any] = {}
    else:
        from noisy_student.training.streams import StreamedBatches

        batches = StreamedBatches(
            data, pseudo, optim.batch_size, u_batch, labeled_in_batch, device, channels_last, world, seed
        )
        streams, rank_streams = {}, {"streamed": batches}
    resume = _Resume(checkpoint_path, checkpoint_key, task, optimizer, streams, gen, device, world, rank_streams)
    progress = resume.load()
    at = -1 if progress is None else progress.epoch * steps_per_epoch + progress.step
    if not distributed.same_on_every_rank(at):
        raise RuntimeError(f"[{desc}] the training processes read different states from {checkpoint_path}")
    if progress is not None:
        who = f"{desc} rank {world.rank}/{world.size}" if world.size > 1 else desc
        tqdm.write(
            f"[{who}] resuming from {checkpoint_path} at epoch {progress.epoch + 1}/{optim.epochs}, "
            f"step {progress.step}/{steps_per_epoch}",
            file=sys.stderr,
        )
    progress = progress or _Progress()

    total_steps = optim.epochs * steps_per_epoch
    bar = tqdm(
        total=total_steps,
        initial=progress.epoch * steps_per_epoch + progress.step,
        desc=desc,
        unit="step",
        dynamic_ncols=True,
        mininterval=0.2 if sys.stderr.isatty() else 5.0,  # logs (DVC, CI) get a line every few seconds
        disable=not world.main,
    )
    mark_step = _xla_mark_step() if device.type == "xla" else None
    with distributed.data_parallel(task, model, sync_batchnorm=sync_batchnorm), closing(batches):
        if optim.compile:
            task.forward_module = torch.compile(task.trainable_module)
        model.train()
        while progress.epoch < optim.epochs:
            epoch = progress.epoch
            if progress.step == 0:
                progress.loss_sum, progress.seen = 0.0, 0
            batches.begin_epoch(epoch, progress.step)
            for step in range(progress.step, steps_per_epoch):
                labeled, unlabeled, images = batches.next()
                with autocast(device, amp_dtype):
                    loss = task(labeled, unlabeled)["loss"]
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if mark_step is not None:
                    mark_step()  # XLA: cut the lazy graph once per update, or it grows over the whole epoch
                num_updates = epoch * steps_per_epoch + step + 1
                scheduler.step_update(num_updates)
                task.update_ema(step=num_updates)
                progress.loss_sum += distributed.mean(loss) * images  # the global batch's loss
                progress.seen += images
                bar.update(1)
                lr = optimizer.param_groups[0]["lr"]
                bar.set_postfix(
                    epoch=epoch + 1, loss=f"{progress.loss_sum / progress.seen:.4f}", lr=f"{lr:.4g}", refresh=False
                )
                progress.epoch, progress.step = (epoch + 1, 0) if step + 1 == steps_per_epoch else (epoch, step + 1)
                if step + 1 == steps_per_epoch:
                    record = {"epoch": epoch + 1, "train_loss": progress.loss_sum / max(progress.seen, 1), "lr": lr}
                    if eval_fn is not None and ((epoch + 1) % optim.eval_every == 0 or epoch + 1 == optim.epochs):
                        if world.main:
                            record.update(eval_fn(_eval_model(task, model)))
                            model.train()
                        distributed.barrier()  # the other ranks wait for rank 0's evaluation
                    progress.history.append(record)
                    if on_epoch is not None and world.main:
                        on_epoch(record)
                if num_updates % optim.checkpoint_steps == 0 and num_updates < total_steps:
                    resume.save(progress)  # every rank: their generators are gathered
    bar.close()
    resume.finish()
    return _eval_model(task, model), progress.history


def _xla_mark_step() -> Callable[[], None]:
    import torch_xla.core.xla_model as xm  # type: ignore[import-not-found]

    return xm.mark_step


def _eval_model(task: NoisyStudentTask, model: ImageClassifier) -> ImageClassifier:
    ema = task.get_trainable_module(ema=True)
    return ema.module if ema is not None else model
