"""timm models, their small-image variants, and self-describing checkpoints.

A checkpoint holds the model's construction recipe next to its weights, so
any stage can rebuild the exact network from the file alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from timm.layers import DropPath
from torch import nn
from torch.nn import functional as F

from noisy_student.config import ModelParams
from noisy_student.io import save_torch

CHECKPOINT_FORMAT = "noisy-student-classifier/1"


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a classifier; stored in every checkpoint."""

    arch: str
    num_classes: int
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    small_image: bool = True
    kwargs: dict[str, Any] | None = None
    # side every input is resized to before the network (FixRes finetune); None: as given
    input_size: int | None = None


class ImageClassifier(nn.Module):
    """A timm network behind its own input normalisation.

    ``forward`` takes float images ``(B, C, H, W)`` in 0..1 and returns logits
    ``(B, num_classes)``. Keeping normalisation inside the module makes
    adversarial attacks and corruptions operate in pixel space. With
    ``input_size`` set (after a FixRes finetune) inputs of any side are first
    resized (bilinear, antialiased) to ``input_size`` x ``input_size``, so every
    caller keeps feeding images at the data's resolution.
    """

    def __init__(self, net: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.net = net
        self.input_size: int | None = None
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        side = self.input_size
        if side is not None and tuple(x.shape[-2:]) != (side, side):
            x = F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
        return self.net((x - self.mean) / self.std)


def make_small_image(net: nn.Module) -> nn.Module:
    """Adapt an ImageNet network to 28-32 px inputs by removing early downsampling.

    ResNets lose the stem max-pool (the first conv keeps stride 2). EfficientNets
    follow the paper's SVHN model: the 2nd and 3rd stages get stride 1, so a
    32 px input ends in a 4x4 feature map.
    """
    if isinstance(net, timm.models.ResNet):
        net.maxpool = nn.Identity()
        return net
    if isinstance(net, timm.models.EfficientNet):
        for stage in (1, 2):
            for module in net.blocks[stage][0].modules():
                if isinstance(module, nn.Conv2d) and module.stride != (1, 1):
                    module.stride = (1, 1)
        return net
    raise ValueError(
        f"model.small_image is implemented for timm ResNet and EfficientNet families, not "
        f"{type(net).__name__}; set model.small_image: false"
    )


def create_classifier(
    params: ModelParams,
    num_classes: int,
    in_chans: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
) -> tuple[ImageClassifier, ModelSpec]:
    """Build a classifier from the timm registry.

    ``drop_rate`` is dropout before the final layer; ``drop_path_rate`` is the
    stochastic-depth drop probability of the last block, decaying linearly to
    0 at the first (timm's rule = the paper's survival 0.8 at the last block
    for 0.2).
    """
    if params.arch not in timm.list_models() and not timm.is_model(params.arch):
        raise ValueError(f"model.arch: '{params.arch}' is not a timm model (see timm.list_models())")
    extra: dict[str, Any] = dict(params.kwargs)
    if params.pretrained_file:
        path = Path(params.pretrained_file)
        if not path.is_file():
            raise FileNotFoundError(f"model.pretrained_file: {path} does not exist")
        extra.update(pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    net = timm.create_model(
        params.arch,
        num_classes=num_classes,
        in_chans=in_chans,
        drop_rate=drop_rate,
        drop_path_rate=drop_path_rate,
        **extra,
    )
    if params.small_image:
        net = make_small_image(net)
    spec = ModelSpec(
        params.arch, num_classes, in_chans, tuple(mean), tuple(std), params.small_image, dict(params.kwargs)
    )
    return ImageClassifier(net, mean, std), spec


def _noise_modules(model: nn.Module) -> Iterator[tuple[nn.Module, str]]:
    """(module, attribute) pairs holding a drop probability: dropout layers, DropPath, timm heads' drop_rate."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            yield module, "p"
        elif isinstance(module, DropPath):
            yield module, "drop_prob"
        elif isinstance(getattr(module, "drop_rate", None), float | int):
            yield module, "drop_rate"


@contextmanager
def model_noise_off(model: nn.Module) -> Iterator[nn.Module]:
    """Zero dropout and stochastic depth inside the block, keeping train-mode batch norm.

    Used for the Table 6 ablation that removes model noise for pseudo-labeled
    images only: their forward pass runs here, the labeled one outside.
    """
    saved = [(m, attr, getattr(m, attr)) for m, attr in _noise_modules(model)]
    try:
        for m, attr, _ in saved:
            setattr(m, attr, 0.0)
        yield model
    finally:
        for m, attr, value in saved:
            setattr(m, attr, value)


@contextmanager
def model_noise_on(model: nn.Module) -> Iterator[nn.Module]:
    """Eval-mode batch norm, but dropout and stochastic depth active (a *noised* teacher, Table 6).

    Only the modules that own a drop probability are switched to training
    mode (non-recursively), so batch-norm statistics are neither used from the
    batch nor updated.
    """
    was_training = {m: m.training for m in model.modules()}
    try:
        model.eval()
        for m, _ in _noise_modules(model):
            m.training = True
        yield model
    finally:
        for m, flag in was_training.items():
            m.training = flag


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def check_student_size(student: int, teacher: int, allow_smaller: bool) -> None:
    """Refuse a student with fewer parameters than its teacher unless distillation is asked for.

    The paper's student is equal-or-larger; a smaller one is knowledge distillation.
    """
    if student < teacher and not allow_smaller:
        raise ValueError(
            f"student.model has {student:,} parameters, fewer than the teacher's {teacher:,}; Noisy Student "
            "needs an equal-or-larger student. Set student.allow_smaller: true to train a smaller one anyway "
            "(knowledge distillation)."
        )


def save_checkpoint(path: str | Path, model: ImageClassifier, spec: ModelSpec, meta: dict[str, Any]) -> None:
    """Write weights + spec + metadata atomically."""
    state = {
        "format": CHECKPOINT_FORMAT,
        "spec": asdict(spec),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": meta,
    }
    save_torch(state, path)


def load_classifier(
    path: str | Path,
    map_location: str | torch.device = "cpu",
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
) -> tuple[ImageClassifier, ModelSpec, dict[str, Any]]:
    """Rebuild a classifier from a checkpoint written by :func:`save_checkpoint` (eval mode).

    The drop rates only matter in training mode or under :func:`model_noise_on`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model checkpoint not found (train it first: dvc repro)")
    state = torch.load(path, map_location=map_location, weights_only=True)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a {CHECKPOINT_FORMAT} checkpoint (format={state.get('format')!r})")
    spec_d = state["spec"]
    spec = ModelSpec(**{**spec_d, "mean": tuple(spec_d["mean"]), "std": tuple(spec_d["std"])})
    model, _ = create_classifier(
        ModelParams(arch=spec.arch, kwargs=spec.kwargs or {}, small_image=spec.small_image),
        spec.num_classes,
        spec.in_chans,
        spec.mean,
        spec.std,
        drop_rate=drop_rate,
        drop_path_rate=drop_path_rate,
    )
    model.load_state_dict(state["state_dict"])
    model.input_size = spec.input_size
    model.eval()
    return model, spec, state.get("meta", {})


def shallow_modules(net: nn.Module, stages: int) -> list[str]:
    """Names of the top-most modules of ``net`` that run before its feature stage ``stages``.

    Stages are timm's ``feature_info`` entries (ResNet: stem, layer1..4;
    EfficientNet: blocks.0..6), so ``stages=1`` is the stem (plus
    EfficientNet's first block), ``stages=2`` adds the next stage, and so on.
    The list covers every parameter before that stage and nothing after, in
    the form :func:`timm.utils.freeze` takes.
    """
    info = getattr(net, "feature_info", None)
    if stages == 0:
        return []
    if not info:
        raise ValueError(f"{type(net).__name__} has no timm feature_info: cannot tell its shallow layers")
    if stages >= len(info):
        raise ValueError(f"freeze_stages: got {stages}; {type(net).__name__} has {len(info)} stages, keep the last")
    boundary = info[stages]["module"]
    names: list[str] = []
    for name, _ in net.named_modules():
        if name == boundary:
            break
        if not name or boundary.startswith(name + ".") or any(name.startswith(n + ".") for n in names):
            continue  # an ancestor of the boundary, or inside a module already listed
        names.append(name)
    return names
