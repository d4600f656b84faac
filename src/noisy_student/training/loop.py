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

The loop does not care where the images live: a training source (in memory,
:class:`~noisy_student.training.batches.TrainData`, or streamed from the tars,
:class:`~noisy_student.training.streams.StreamedTrainData`) hands out uint8 batches
(:mod:`noisy_student.training.batches`); the loop moves them to the device, augments and normalises
them there, the same way for both.
"""

from __future__ import annotations

import pickle
import sys
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
from noisy_student.training.batches import Batches, BatchPlan, HostBatch, TrainSource, batches_per_epoch
from noisy_student.training.task import Batch, NoisyStudentTask

EpochCallback = Callable[[dict[str, float]], None]
EvalFn = Callable[[ImageClassifier], dict[str, float]]


@dataclass
class _Progress:
    """Where the loop stands: the part of the training state that is not model, optimizer or RNG."""

    history: list[dict[str, float]] = field(default_factory=list)
    epoch: int = 0  # next epoch to run (0-based)
    step: int = 0  # next step within that epoch
    loss_sum: float = 0.0  # image-weighted loss of the epoch so far
    seen: int = 0  # images of the epoch so far


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

    One file for all ranks: rank 0 writes it (model and optimizer: the same on every rank) with every
    rank's batch-source state and generators gathered into it; every rank reads it back and takes its own.
    """

    path: Path | None
    key: str
    task: NoisyStudentTask
    optimizer: torch.optim.Optimizer
    batches: Batches
    device: torch.device
    world: World

    def load(self) -> _Progress | None:
        """The saved progress (model, optimizer, batches and RNGs restored in place), or None."""
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
        saved = state.get("ranks")
        if not isinstance(saved, list) or len(saved) != self.world.size:
            size = len(saved) if isinstance(saved, list) else "an unknown number of"
            tqdm.write(
                f"ignoring training state {self.path}: saved by {size} processes, "
                f"this run has {self.world.size}; starting over"
            )
            return None
        self.task.load_checkpoint_state(state["state_dict"])
        if self.task.has_ema() and "state_dict_ema" in state:
            self.task.load_checkpoint_state(state["state_dict_ema"], ema=True)
        self.optimizer.load_state_dict(state["optimizer"])
        mine = saved[self.world.rank]
        self.batches.load_state_dict(mine["batches"])
        _set_rng_state(mine["rng"], self.device)
        return _Progress(
            state["history"], int(state["epoch"]), int(state["step"]), float(state["loss_sum"]), int(state["seen"])
        )

    def save(self, progress: _Progress) -> None:
        """Write the state (atomically); with several ranks every rank must call it (their states are gathered)."""
        if self.path is None:
            return
        mine = {"batches": self.batches.state_dict(), "rng": _rng_state(self.device)}
        ranks = distributed.gather(mine) if self.world.size > 1 else [mine]
        if not self.world.main:
            return
        state: dict[str, Any] = {
            "key": self.key,
            "epoch": progress.epoch,
            "step": progress.step,
            "loss_sum": progress.loss_sum,
            "seen": progress.seen,
            "optimizer": self.optimizer.state_dict(),
            "history": progress.history,
            "ranks": ranks,
            **self.task.get_checkpoint_state(),
        }
        if self.task.has_ema():
            state.update(self.task.get_checkpoint_state(ema=True))
        save_torch(state, self.path)

    def finish(self) -> None:
        if self.world.main and self.path is not None and self.path.exists():
            self.path.unlink()


class _DeviceBatches:
    """This rank's steps on the device: the source's uint8 batches moved there, augmented with the input
    noise (the rank's own generator), then float 0..1 in the model's memory format; one place for every
    source. ``augment_unlabeled``: the pseudo-labeled images' noise (off in Table 6's ablation)."""

    def __init__(
        self, batches: Batches, noise: StudentNoiseParams, device: torch.device, channels_last: bool, world: World
    ) -> None:
        self.batches, self.device, self.channels_last, self.world = batches, device, channels_last, world
        self.augment = BatchAugment(noise)
        self.augment_unlabeled = self.augment if noise.unlabeled_augment else BatchAugment(noise, augment=False)

    def _prepared(self, batch: HostBatch | None, augment: BatchAugment) -> Batch | None:
        if batch is None:
            return None
        images = augment(batch[0].to(self.device, non_blocking=True))
        x = images.float().div_(255)
        x = x.contiguous(memory_format=torch.channels_last) if self.channels_last else x
        return x, batch[1].to(self.device, non_blocking=True)

    def next(self) -> tuple[Batch | None, Batch | None, int]:
        """(this rank's labeled batch or None, its pseudo-labeled batch or None, images in the global step)."""
        labeled, unlabeled = self.batches.next()
        images = sum(len(b[1]) for b in (labeled, unlabeled) if b is not None) * self.world.size
        return self._prepared(labeled, self.augment), self._prepared(unlabeled, self.augment_unlabeled), images


def train_classifier(
    model: ImageClassifier,
    data: TrainSource,
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

    ``data``: images in memory (:class:`~noisy_student.training.batches.TrainData`) or tars read while
    training (:class:`~noisy_student.training.streams.StreamedTrainData`); steps per epoch come from its
    ``num_labeled``; resume is exact for both.
    """
    if not labeled_in_batch and not data.has_unlabeled:
        raise ValueError("labeled_in_batch=False needs pseudo-labeled images")
    world = distributed.world()
    if optim.batch_size % world.size:
        raise ValueError(f"batch_size {optim.batch_size} does not divide by the {world.size} training processes")
    distributed.check_sync_batchnorm(sync_batchnorm, device)
    pseudo = noise if isinstance(noise, StudentNoiseParams) else StudentNoiseParams(**noise.model_dump())
    seed_everything(seed + world.rank)  # augmentation and dropout: each rank its own; batch indices: shared
    u_batch = optim.batch_size * unlabeled_ratio if data.has_unlabeled else 0
    source = data.batches(BatchPlan(optim.batch_size, u_batch, labeled_in_batch), world, seed, device)
    batches = _DeviceBatches(source, pseudo, device, channels_last, world)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    task = NoisyStudentTask(model, unlabeled_model_noise=pseudo.unlabeled_model_noise, device=device)
    if optim.ema_decay > 0:
        task.setup_ema(decay=optim.ema_decay, use_warmup=True)  # of the plain module, before any wrapping
    steps_per_epoch = batches_per_epoch(data.num_labeled, optim.batch_size)
    optimizer, scheduler = _optimization(model, optim, steps_per_epoch)
    resume = _Resume(checkpoint_path, checkpoint_key, task, optimizer, source, device, world)
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
    # the bar closed (its line ended) on the way out of an exception too, or the stage's one-line error is
    # printed onto the end of the bar's unfinished line
    with distributed.data_parallel(task, model, sync_batchnorm=sync_batchnorm), closing(source), closing(bar):
        if optim.compile:
            task.forward_module = torch.compile(task.trainable_module)
        model.train()
        while progress.epoch < optim.epochs:
            epoch = progress.epoch
            if progress.step == 0:
                progress.loss_sum, progress.seen = 0.0, 0
            source.begin_epoch(epoch, progress.step)
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
    resume.finish()
    return _eval_model(task, model), progress.history


def _xla_mark_step() -> Callable[[], None]:
    import torch_xla.core.xla_model as xm  # type: ignore[import-not-found]

    return xm.mark_step


def _eval_model(task: NoisyStudentTask, model: ImageClassifier) -> ImageClassifier:
    ema = task.get_trainable_module(ema=True)
    return ema.module if ema is not None else model
