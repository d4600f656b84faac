"""Clean accuracy: top-k metrics and per-image predictions as pure functions, and batched model inference."""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import nullcontext

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from noisy_student.devices import autocast
from noisy_student.models import model_noise_on


def images_tensor(images: np.ndarray) -> torch.Tensor:
    """``(N, H, W)`` or ``(N, H, W, C)`` uint8 -> ``(N, C, H, W)`` uint8 tensor."""
    t = torch.from_numpy(np.ascontiguousarray(images))
    return t.unsqueeze(1) if t.ndim == 3 else t.permute(0, 3, 1, 2).contiguous()


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Fraction (0..1) of rows whose label is among the ``k`` largest logits, for each k.

    Rows with label < 0 (unknown) are ignored.
    """
    keep = labels >= 0
    logits, labels = logits[keep], labels[keep]
    if len(labels) == 0:
        return {f"top{k}": float("nan") for k in ks}
    order = np.argsort(-logits, axis=1, kind="stable")
    out = {}
    for k in ks:
        hit = (order[:, : min(k, logits.shape[1])] == labels[:, None]).any(axis=1)
        out[f"top{k}"] = float(hit.mean())
    return out


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    batch_size: int,
    device: torch.device,
    desc: str = "predict",
    progress: bool = True,
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    model_noise: bool = False,
    amp_dtype: torch.dtype | None = None,
) -> np.ndarray:
    """Logits ``(N, K)`` float32 for uint8 images ``(N, C, H, W)``.

    By default the model is in eval mode and sees clean images (the paper's
    un-noised teacher). ``augment`` (uint8 batch -> uint8 batch) and
    ``model_noise`` (dropout + stochastic depth on, batch norm still in eval
    mode) give the *noised* teacher of the Table 6 ablation. ``amp_dtype``: autocast dtype
    (``devices.resolve_precision``); None runs in float32.
    """
    was_training = model.training
    model.eval()
    outs = []
    with autocast(device, amp_dtype), model_noise_on(model) if model_noise else nullcontext():
        batches = range(0, len(images), batch_size)
        interval = 0.2 if sys.stderr.isatty() else 5.0  # logs get a line every few seconds
        for start in tqdm(batches, desc=desc, unit="batch", disable=not progress, mininterval=interval):
            batch = images[start : start + batch_size].to(device, non_blocking=True)
            if augment is not None:
                batch = augment(batch)
            x = batch.float().div_(255)
            outs.append(model(x).float().cpu())
    model.train(was_training)
    return torch.cat(outs).numpy() if outs else np.zeros((0, 0), np.float32)


def per_image_predictions(ids: np.ndarray, labels: np.ndarray, logits: np.ndarray) -> pd.DataFrame:
    """One row per image: its ``id``, ``label`` and the model's top-1 ``prediction``.

    What the report's paired statistics need (two models' answers on the same images, joined by id)
    without rerunning either model.
    """
    return pd.DataFrame({"id": ids, "label": labels, "prediction": logits.argmax(axis=1) if len(logits) else []})


def evaluate_classifier(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    device: torch.device,
    desc: str = "eval",
    amp_dtype: torch.dtype | None = None,
) -> tuple[dict[str, float], np.ndarray]:
    """Clean top-1 / top-5 (fractions 0..1) of ``model`` on uint8 ``images`` ``(N, H, W[, C])`` with ``labels``,
    and its logits ``(N, K)``."""
    logits = predict_logits(model.to(device), images_tensor(images), batch_size, device, desc=desc, amp_dtype=amp_dtype)
    return topk_accuracy(logits, labels), logits
