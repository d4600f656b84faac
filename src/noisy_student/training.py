"""One training loop for teacher and student.

A teacher is a student without a pseudo-labeled stream. Every step takes a
labeled batch of ``batch_size`` and, when pseudo-labeled data is given, an
unlabeled batch of ``unlabeled_ratio * batch_size``; the loss is the mean
soft-target cross entropy over the concatenated batch (paper, section 2).
Epochs are counted on the labeled set.

The loop uses timm for the parts timm owns: the classification task, the
optimizer and scheduler factories, the soft-target loss and weight EMA.
Training state is checkpointed atomically every ``checkpoint_every`` epochs
and a rerun with the same key resumes from it.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from timm.loss import SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.task import ClassificationTask
from tqdm.auto import tqdm

from noisy_student.config import NoiseParams, OptimParams
from noisy_student.io import atomic_path
from noisy_student.models import ImageClassifier, model_noise_off
from noisy_student.noise import BatchAugment


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


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then an XLA (TPU) device when torch_xla is installed, then CPU."""
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    if name in ("xla", "auto"):
        try:
            import torch_xla.core.xla_model as xm  # type: ignore[import-not-found]

            return xm.xla_device()
        except ImportError:
            if name == "xla":
                raise RuntimeError("device: xla requested but torch_xla is not installed") from None
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def one_hot(labels: np.ndarray, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """``(N,)`` class indices -> ``(N, K)`` float targets with optional label smoothing."""
    off = smoothing / num_classes
    t = torch.full((len(labels), num_classes), off, dtype=torch.float32)
    t[torch.arange(len(labels)), torch.as_tensor(labels, dtype=torch.long)] = 1.0 - smoothing + off
    return t


def run_key(*parts: Any) -> str:
    """A short stable hash of everything that defines a run, for resume safety."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _batches_per_epoch(n_labeled: int, batch_size: int) -> int:
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


def joint_loss(
    logits_labeled: torch.Tensor,
    targets_labeled: torch.Tensor,
    logits_unlabeled: torch.Tensor | None = None,
    targets_unlabeled: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean soft-target cross entropy over the concatenated batch (paper, section 2).

    Logits ``(B_l, K)`` / ``(B_u, K)``, targets of the same shapes summing to 1
    per row (one-hot for labeled and hard pseudo labels, a distribution for
    soft ones). Every image weighs the same: ``(sum CE_l + sum CE_u) / (B_l + B_u)``,
    so the unlabeled part's weight grows with the batch ratio.
    """
    logits = [logits_labeled] if logits_unlabeled is None else [logits_labeled, logits_unlabeled]
    targets = [targets_labeled] if targets_unlabeled is None else [targets_labeled, targets_unlabeled]
    logits_all, targets_all = torch.cat(logits), torch.cat(targets)
    per_image = -(targets_all * torch.log_softmax(logits_all.float(), dim=-1)).sum(dim=-1)
    return per_image.mean()


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


def train_classifier(
    model: ImageClassifier,
    data: TrainData,
    optim: OptimParams,
    noise: NoiseParams,
    *,
    unlabeled_ratio: int = 0,
    labeled_in_batch: bool = True,
    device: torch.device,
    seed: int,
    checkpoint_path: Path | None = None,
    checkpoint_key: str = "",
    eval_fn: EvalFn | None = None,
    on_epoch: EpochCallback | None = None,
    desc: str = "train",
) -> tuple[ImageClassifier, list[dict[str, float]]]:
    """Train ``model`` in place and return the model to keep (EMA weights when enabled) and the history.

    ``eval_fn`` is called every ``optim.eval_every`` epochs and on the last one;
    its metrics join that epoch's record. ``on_epoch`` receives each record.
    ``labeled_in_batch=False`` trains on the pseudo-labeled stream alone while
    epochs are still counted on the labeled set (Table 13's pretraining phase).
    Every ``optim.checkpoint_steps`` updates the full state (weights, optimizer,
    EMA, data streams, RNGs, partial epoch loss) is saved atomically; a call
    with the same ``checkpoint_key`` resumes from it exactly.
    """
    if not labeled_in_batch and not data.has_unlabeled:
        raise ValueError("labeled_in_batch=False needs pseudo-labeled images")
    seed_everything(seed)
    gen = torch.Generator().manual_seed(seed)
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
        data = _resident(data, device)
    task = ClassificationTask(model, criterion=SoftTargetCrossEntropy(), device=device, verbose=False)
    if optim.ema_decay > 0:
        task.setup_ema(decay=optim.ema_decay, use_warmup=True)
    optimizer = create_optimizer_v2(
        model, opt=optim.optimizer, lr=optim.lr, weight_decay=optim.weight_decay, momentum=optim.momentum
    )
    steps_per_epoch = _batches_per_epoch(len(data.labeled_images), optim.batch_size)
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
    augment = BatchAugment(noise)
    augment_unlabeled = augment if noise.unlabeled_augment else BatchAugment(noise, augment=False)
    # one forward over the concatenated batch unless the pseudo-labeled images must skip model noise
    split_forward = data.has_unlabeled and not noise.unlabeled_model_noise
    forward = torch.compile(model) if optim.compile else model
    labeled_stream = _Stream(len(data.labeled_images), gen)
    unlabeled_stream = _Stream(len(data.unlabeled_images), gen) if data.has_unlabeled else None
    u_batch = optim.batch_size * unlabeled_ratio if unlabeled_stream else 0

    history: list[dict[str, float]] = []
    start_epoch, start_step, loss_sum, seen = 0, 0, 0.0, 0
    if checkpoint_path is not None and checkpoint_path.is_file():
        state = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
        if state.get("key") == checkpoint_key:
            task.load_checkpoint_state(state["state_dict"])
            if task.has_ema() and "state_dict_ema" in state:
                task.load_checkpoint_state(state["state_dict_ema"], ema=True)
            optimizer.load_state_dict(state["optimizer"])
            labeled_stream.load(state["labeled_stream"])
            if unlabeled_stream is not None:
                unlabeled_stream.load(state["unlabeled_stream"])
            gen.set_state(state["gen"])
            torch.set_rng_state(state["torch_rng"])
            history = state["history"]
            start_epoch, start_step = int(state["epoch"]), int(state["step"])
            loss_sum, seen = float(state["loss_sum"]), int(state["seen"])
            tqdm.write(
                f"[{desc}] resuming from {checkpoint_path} at epoch {start_epoch + 1}/{optim.epochs}, "
                f"step {start_step}/{steps_per_epoch}",
                file=sys.stderr,
            )

    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    total_steps = optim.epochs * steps_per_epoch
    bar = tqdm(
        total=total_steps,
        initial=start_epoch * steps_per_epoch + start_step,
        desc=desc,
        unit="step",
        dynamic_ncols=True,
        mininterval=0.2 if sys.stderr.isatty() else 5.0,  # logs (DVC, CI) get a line every few seconds
    )

    def to_device(images: torch.Tensor) -> torch.Tensor:
        x = images.to(device, non_blocking=True).float().div_(255)
        return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x

    mark_step = _xla_mark_step() if device.type == "xla" else None
    model.train()
    for epoch in range(start_epoch, optim.epochs):
        if epoch > start_epoch or start_step == 0:
            loss_sum, seen = 0.0, 0
        for step in range(start_step if epoch == start_epoch else 0, steps_per_epoch):
            # the labeled stream is drawn even when unused so epochs and RNG stay aligned across schedules
            li = labeled_stream.take(optim.batch_size)
            images = [augment(data.labeled_images[li])] if labeled_in_batch else []
            targets = [data.labeled_targets[li]] if labeled_in_batch else []
            if unlabeled_stream is not None:
                ui = unlabeled_stream.take(u_batch)
                images.append(augment_unlabeled(data.unlabeled_images[ui]))
                targets.append(data.unlabeled_targets[ui])
            ys = [t.to(device, non_blocking=True) for t in targets]
            with autocast:
                if split_forward and labeled_in_batch:
                    logits_l = forward(to_device(images[0]))
                    with model_noise_off(model):
                        logits_u = forward(to_device(images[1]))
                    loss = joint_loss(logits_l, ys[0], logits_u, ys[1])
                elif split_forward:
                    with model_noise_off(model):
                        loss = joint_loss(forward(to_device(images[0])), ys[0])
                else:
                    x, y = to_device(torch.cat(images)), torch.cat(ys)
                    # the task holds the plain module (its state dict, EMA); a compiled wrapper runs the forward
                    loss = task(x, y)["loss"] if forward is model else task.criterion(forward(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if mark_step is not None:
                mark_step()  # XLA: cut the lazy graph once per update, or it grows over the whole epoch
            num_updates = epoch * steps_per_epoch + step + 1
            scheduler.step_update(num_updates)
            task.update_ema(step=num_updates)
            batch_images = sum(len(t) for t in targets)
            loss_sum += float(loss.detach()) * batch_images
            seen += batch_images
            bar.update(1)
            bar.set_postfix(
                epoch=epoch + 1,
                loss=f"{loss_sum / seen:.4f}",
                lr=f"{optimizer.param_groups[0]['lr']:.4g}",
                refresh=False,
            )
            if step + 1 == steps_per_epoch:
                record: dict[str, float] = {
                    "epoch": epoch + 1,
                    "train_loss": loss_sum / max(seen, 1),
                    "lr": optimizer.param_groups[0]["lr"],
                }
                if eval_fn is not None and ((epoch + 1) % optim.eval_every == 0 or epoch + 1 == optim.epochs):
                    record.update(eval_fn(_eval_model(task, model)))
                    model.train()
                history.append(record)
                if on_epoch is not None:
                    on_epoch(record)
            if checkpoint_path is not None and num_updates % optim.checkpoint_steps == 0 and num_updates < total_steps:
                next_epoch, next_step = (epoch + 1, 0) if step + 1 == steps_per_epoch else (epoch, step + 1)
                _save_state(
                    checkpoint_path,
                    checkpoint_key,
                    task,
                    optimizer,
                    labeled_stream,
                    unlabeled_stream,
                    gen,
                    history,
                    {"epoch": next_epoch, "step": next_step, "loss_sum": loss_sum, "seen": seen},
                )
    bar.close()
    final = _eval_model(task, model)
    if checkpoint_path is not None and checkpoint_path.exists():
        checkpoint_path.unlink()
    return final, history


def _xla_mark_step() -> Callable[[], None]:
    import torch_xla.core.xla_model as xm  # type: ignore[import-not-found]

    return xm.mark_step


def _eval_model(task: ClassificationTask, model: ImageClassifier) -> ImageClassifier:
    ema = task.get_trainable_module(ema=True)
    return ema.module if ema is not None else model


def _save_state(
    path: Path,
    key: str,
    task: ClassificationTask,
    optimizer: torch.optim.Optimizer,
    labeled_stream: _Stream,
    unlabeled_stream: _Stream | None,
    gen: torch.Generator,
    history: list[dict[str, float]],
    position: dict[str, Any],
) -> None:
    state: dict[str, Any] = {
        "key": key,
        **position,
        "optimizer": optimizer.state_dict(),
        "labeled_stream": labeled_stream.state(),
        "gen": gen.get_state(),
        "torch_rng": torch.get_rng_state(),
        "history": history,
        **task.get_checkpoint_state(),
    }
    if task.has_ema():
        state.update(task.get_checkpoint_state(ema=True))
    if unlabeled_stream is not None:
        state["unlabeled_stream"] = unlabeled_stream.state()
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def steps_for(n_labeled: int, optim: OptimParams) -> int:
    """Total optimizer updates of a run (for planning and benchmarks)."""
    return optim.epochs * _batches_per_epoch(n_labeled, optim.batch_size)


__all__ = [
    "TrainData",
    "train_classifier",
    "joint_loss",
    "resolve_device",
    "one_hot",
    "run_key",
    "seed_everything",
    "steps_for",
]
