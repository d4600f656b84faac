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
from noisy_student.models import ImageClassifier
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


def train_classifier(
    model: ImageClassifier,
    data: TrainData,
    optim: OptimParams,
    noise: NoiseParams,
    *,
    unlabeled_ratio: int = 0,
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
    """
    seed_everything(seed)
    gen = torch.Generator().manual_seed(seed)
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
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
    labeled_stream = _Stream(len(data.labeled_images), gen)
    unlabeled_stream = _Stream(len(data.unlabeled_images), gen) if data.has_unlabeled else None
    u_batch = optim.batch_size * unlabeled_ratio if unlabeled_stream else 0

    history: list[dict[str, float]] = []
    start_epoch = 0
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
            start_epoch = int(state["epoch"])
            tqdm.write(f"[{desc}] resuming from {checkpoint_path} at epoch {start_epoch}/{optim.epochs}")

    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    total_steps = optim.epochs * steps_per_epoch
    bar = tqdm(
        total=total_steps,
        initial=start_epoch * steps_per_epoch,
        desc=desc,
        unit="step",
        dynamic_ncols=True,
        mininterval=0.2 if sys.stderr.isatty() else 5.0,  # logs (DVC, CI) get a line every few seconds
    )
    model.train()
    for epoch in range(start_epoch, optim.epochs):
        loss_sum, seen = 0.0, 0
        for step in range(steps_per_epoch):
            li = labeled_stream.take(optim.batch_size)
            images = [augment(data.labeled_images[li])]
            targets = [data.labeled_targets[li]]
            if unlabeled_stream is not None:
                ui = unlabeled_stream.take(u_batch)
                images.append(augment(data.unlabeled_images[ui]))
                targets.append(data.unlabeled_targets[ui])
            x = torch.cat(images).to(device, non_blocking=True).float().div_(255)
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            y = torch.cat(targets).to(device, non_blocking=True)
            with autocast:
                loss = task(x, y)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            num_updates = epoch * steps_per_epoch + step + 1
            scheduler.step_update(num_updates)
            task.update_ema(step=num_updates)
            loss_sum += float(loss.detach()) * len(x)
            seen += len(x)
            bar.update(1)
            bar.set_postfix(
                epoch=epoch + 1,
                loss=f"{loss_sum / seen:.4f}",
                lr=f"{optimizer.param_groups[0]['lr']:.4g}",
                refresh=False,
            )
        record: dict[str, float] = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / max(seen, 1),
            "lr": optimizer.param_groups[0]["lr"],
        }
        last = epoch + 1 == optim.epochs
        if eval_fn is not None and ((epoch + 1) % optim.eval_every == 0 or last):
            record.update(eval_fn(_eval_model(task, model)))
            model.train()
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)
        if checkpoint_path is not None and not last and (epoch + 1) % optim.checkpoint_every == 0:
            _save_state(
                checkpoint_path,
                checkpoint_key,
                task,
                optimizer,
                labeled_stream,
                unlabeled_stream,
                gen,
                history,
                epoch + 1,
            )
    bar.close()
    final = _eval_model(task, model)
    if checkpoint_path is not None and checkpoint_path.exists():
        checkpoint_path.unlink()
    return final, history


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
    epoch: int,
) -> None:
    state: dict[str, Any] = {
        "key": key,
        "epoch": epoch,
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


__all__ = ["TrainData", "train_classifier", "resolve_device", "one_hot", "run_key", "seed_everything", "steps_for"]
