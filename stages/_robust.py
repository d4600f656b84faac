"""Shared edge of the robustness evaluation stages: the embedded sets and the released benchmarks."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from noisy_student.config import ParamsError, RobustnessParams
from noisy_student.evaluation import predict_logits
from noisy_student.models import ImageClassifier, ModelSpec, load_classifier
from noisy_student.robustness import VideoDecodingError, read_class_list
from noisy_student.training import resolve_device
from stages._common import fail, images_tensor

# the resolution ImageNet-C/-P are released at (and ImageNet-A is usually evaluated at)
RELEASE_IMAGE_SIZE = 224


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


@dataclass(frozen=True)
class ReleaseInput:
    """How release images are read for one model: its class list, input size and channels."""

    wnids: list[str]  # the model's class ids, in logit order
    size: int
    channels: int  # the checkpoint's in_chans: 1 -> images converted to L, 3 -> to RGB
    crop_fraction: float | None
    max_per_class: int | None

    def loader_kwargs(self) -> dict[str, Any]:
        """Keyword arguments shared by the library's release loaders."""
        return {
            "size": self.size,
            "channels": self.channels,
            "crop_fraction": self.crop_fraction,
            "max_per_class": self.max_per_class,
        }

    def describe(self, root: str) -> dict[str, Any]:
        """Fields written next to the metrics so a number can be traced to its input."""
        return {"source": str(root), "image_size": self.size, "channels": self.channels}


def release_model(
    path: Path, device_name: str, r: RobustnessParams, class_folders: Path | None
) -> tuple[ImageClassifier, torch.device, ReleaseInput]:
    """The checkpoint on its device and the input spec for reading a released benchmark.

    The class list comes from ``robustness.class_index_file`` and must have one id per logit. Without
    the file, ``class_folders`` (a folder of ``<wnid>`` folders of the release; None: the file is
    required) gives the sorted wnid folder names, the standard ImageNet index, accepted only when
    there is one folder per logit: fewer folders would silently shift every label.
    """
    model, spec, _ = load_classifier(path)
    try:
        wnids = read_class_list(r.class_index_file) if r.class_index_file else None
    except ValueError as err:
        raise ParamsError(f"robustness.class_index_file: {err}") from None
    if wnids is None and class_folders is not None:
        wnids = _folder_classes(class_folders, spec.num_classes)
    wnids = _checked_classes(path, spec, wnids)
    device = resolve_device(device_name)
    size = r.image_size or RELEASE_IMAGE_SIZE
    return model.to(device), device, ReleaseInput(wnids, size, spec.in_chans, r.crop_fraction, r.release_max_per_class)


def _folder_classes(folder: Path, num_classes: int) -> list[str]:
    """Sorted ``<wnid>`` folder names of one release set, checked to cover every logit."""
    names = []
    if folder.is_dir():
        names = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(names) != num_classes:
        raise ParamsError(
            f"robustness.class_index_file is not set and {folder} has {len(names)} class folders, not one per "
            f"model output ({num_classes}): set class_index_file to the model's class ids in logit order"
        )
    return names


def _checked_classes(path: Path, spec: ModelSpec, wnids: list[str] | None) -> list[str]:
    """The class list, refused when missing or not one id per model output."""
    if wnids is None:
        raise ParamsError(
            "robustness.class_index_file is not set: ImageNet-A needs the model's class ids (wnids) in logit "
            "order to pick its 200 classes out of the logits"
        )
    if len(wnids) != spec.num_classes:
        raise ParamsError(
            f"robustness.class_index_file lists {len(wnids)} classes but {path} has {spec.num_classes} outputs: "
            "the file must list the model's class ids in logit order"
        )
    return wnids


def release_logits(model: ImageClassifier, images: torch.Tensor, batch_size: int, device: torch.device) -> np.ndarray:
    """Logits ``(N, K)`` for uint8 ``(N, C, H, W)`` release images (already at the model's size and channels)."""
    return predict_logits(model, images, batch_size, device, progress=False)


def release_labels_check(labels: torch.Tensor, num_logits: int, where: str) -> np.ndarray:
    """Labels as numpy, checked to index the logits (a class folder outside the model's classes is a layout bug)."""
    out = labels.numpy()
    if len(out) and out.max() >= num_logits:
        raise ValueError(f"{where}: label {int(out.max())} is beyond the model's {num_logits} classes")
    return out


def load_p_baseline(path: str | Path) -> tuple[dict[str, float], dict[str, float]]:
    """Baseline flip probabilities and top-5 distances of the released ImageNet-P, from a JSON file.

    Same keys as the embedded ``baseline.json``: ``{"p_flip_probability": {p: FP}, "p_top5_distance":
    {p: T5D}}``; a missing ``p_top5_distance`` means mT5D is not computed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: ImageNet-P baseline file (robustness.p_baseline_file) not found")
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("p_flip_probability"), dict):
        raise ValueError(f'{path}: expected {{"p_flip_probability": {{perturbation: FP}}, "p_top5_distance": ...}}')
    fp = {str(k): float(v) for k, v in data["p_flip_probability"].items()}
    t5 = {str(k): float(v) for k, v in (data.get("p_top5_distance") or {}).items()}
    return fp, t5


@contextmanager
def release_errors() -> Iterator[None]:
    """One-line messages for what a user fixes on their side: layout, params, missing files, video decoding.

    (``LayoutError`` is a ``FileNotFoundError``; the messages name the path and the expected layout.)
    """
    try:
        yield
    except (ParamsError, FileNotFoundError, VideoDecodingError) as exc:
        fail(str(exc))
