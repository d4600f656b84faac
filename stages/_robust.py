"""Shared edge of the robustness evaluation stages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from noisy_student.evaluation import predict_logits
from noisy_student.models import ImageClassifier, load_classifier
from noisy_student.training import resolve_device
from stages._common import images_tensor


def load_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: robustness test set not found (run the `robustness-data` stage first)")
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def load_baseline(folder: Path) -> dict[str, Any]:
    path = folder / "baseline.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: baseline errors not found (run the `robustness-data` stage first)")
    return json.loads(path.read_text())


def model_on_device(path: Path, device_name: str) -> tuple[ImageClassifier, torch.device]:
    model, _, _ = load_classifier(path)
    device = resolve_device(device_name)
    return model.to(device), device


def logits_of(model: ImageClassifier, images: np.ndarray, batch_size: int, device: torch.device) -> np.ndarray:
    """Logits ``(N, K)`` for uint8 images ``(N, H, W)`` (grayscale) or ``(N, H, W, C)``."""
    return predict_logits(model, images_tensor(images), batch_size, device, progress=False)
