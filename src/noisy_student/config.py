"""Typed parameters for every section of ``params.yaml``, validated up front.

``load_params`` reads the file once and raises :class:`ParamsError` naming the
file, the dotted key, the value found and what is allowed, before any stage
does work. Unknown keys are errors too: a typo must not silently fall back to
a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataParams(_Section):
    """Where the images come from and how they are split."""

    fashion_mnist_dir: str = "/usr/share/datasets/fashion-mnist"
    labeled_per_class: int = Field(100, ge=1, le=6000)
    # None keeps every remaining train image in the unlabeled pool.
    unlabeled_size: int | None = Field(None, ge=1)
    test_size: int | None = Field(None, ge=1)
    ood_images: int = Field(5000, ge=0)
    ood_sources: tuple[Literal["digits", "photos"], ...] = ("digits", "photos")


class NoiseParams(_Section):
    """The noise of one trained model (paper section 3: input + model noise).

    ``stochastic_depth`` is the drop probability at the LAST block (1 - survival);
    earlier blocks get linearly less (timm's ``drop_path_rate`` rule).
    """

    randaugment_num_ops: int = Field(2, ge=0, le=14)
    # torchvision's scale: 0..30, the paper's RandAugment magnitude scale.
    randaugment_magnitude: int = Field(9, ge=0, le=30)
    crop_padding: int = Field(2, ge=0)
    hflip: bool = True
    dropout: float = Field(0.5, ge=0.0, lt=1.0)
    stochastic_depth: float = Field(0.2, ge=0.0, lt=1.0)


class ModelParams(_Section):
    """A timm architecture and its small-image adaptation."""

    arch: str = "resnet10t"
    # Extra keyword arguments for timm.create_model (e.g. channels for ResNets).
    kwargs: dict[str, Any] = Field(default_factory=dict)
    # Remove early downsampling so 28-32 px inputs keep spatial resolution.
    small_image: bool = True
    # Optional local weights file (timm / torch state dict); never downloaded.
    pretrained_file: str | None = None


class OptimParams(_Section):
    """Optimizer + schedule; epochs are counted on the labeled set (as in the paper)."""

    epochs: int = Field(60, ge=1)
    batch_size: int = Field(64, ge=1)
    optimizer: str = "sgd"
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    sched: Literal["cosine", "step", "constant"] = "cosine"
    warmup_epochs: float = Field(2, ge=0)
    # 'step': multiply by decay_rate every decay_epochs (paper: 0.97 every 2.4).
    decay_epochs: float = Field(2.4, gt=0)
    decay_rate: float = Field(0.97, gt=0, le=1)
    ema_decay: float = Field(0.0, ge=0, lt=1)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    eval_every: int = Field(5, ge=1)
    checkpoint_every: int = Field(1, ge=1)


class TeacherParams(_Section):
    model: ModelParams = ModelParams()
    optim: OptimParams = OptimParams()
    noise: NoiseParams = NoiseParams()


class PseudoLabelParams(_Section):
    mode: Literal["soft", "hard"] = "soft"
    temperature: float = Field(1.0, gt=0)
    batch_size: int = Field(512, ge=1)
    shard_size: int = Field(20000, ge=1)


class FilterParams(_Section):
    confidence_threshold: float = Field(0.3, ge=0, le=1)
    # K: per-class cap (and fill target when balancing).
    images_per_class: int = Field(3000, ge=1)
    balance: bool = True


class StudentParams(_Section):
    model: ModelParams = ModelParams()
    optim: OptimParams = OptimParams()
    # unlabeled images per labeled image in every batch (paper: 1:1 .. 28:1).
    unlabeled_ratio: int = Field(3, ge=1)


class EvalParams(_Section):
    batch_size: int = Field(512, ge=1)


class RobustnessParams(_Section):
    """Robustness test sets generated from the test split (Fashion-MNIST-C/-P/-A) and the attacks."""

    # training images for the reference (baseline) model; None = all 60,000
    reference_train_images: int | None = Field(None, ge=100)
    c_images: int = Field(1000, ge=1)  # test images corrupted 15 x 5 times
    p_images: int = Field(200, ge=1)  # test images turned into perturbation sequences
    p_frames: int = Field(10, ge=2)
    # epsilons in 0..255 pixel units, as in the paper
    fgsm_epsilons: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0)
    pgd_epsilon: float = Field(8.0, ge=0)
    pgd_steps: int = Field(10, ge=1)
    attack_images: int = Field(1000, ge=1)
    batch_size: int = Field(500, ge=1)


class TrackingParams(_Section):
    experiment: str = "noisy-student"


class Params(_Section):
    seed: int = 0
    device: Literal["auto", "cpu", "cuda", "xla"] = "auto"
    data: DataParams = DataParams()
    teacher: TeacherParams = TeacherParams()
    noise: NoiseParams = NoiseParams()
    pseudo_labels: PseudoLabelParams = PseudoLabelParams()
    filter: FilterParams = FilterParams()
    student: StudentParams = StudentParams()
    eval: EvalParams = EvalParams()
    robustness: RobustnessParams = RobustnessParams()
    tracking: TrackingParams = TrackingParams()
    # Iterations: name -> the model that labels for it ("teacher" or a previous
    # iteration's name). Order of the mapping is the order of training.
    iterations: dict[str, str] = Field(default_factory=lambda: {"it1": "teacher"})
    # Models to evaluate ("teacher" and/or iteration names); dvc.yaml unrolls over it.
    evaluate: tuple[str, ...] = ("teacher", "it1")

    @model_validator(mode="after")
    def _iterations_chain(self) -> Params:
        seen = {"teacher"}
        for name, teacher in self.iterations.items():
            if teacher not in seen:
                raise ValueError(
                    f"iterations.{name}: teacher '{teacher}' must be 'teacher' or an earlier iteration ({sorted(seen)})"
                )
            seen.add(name)
        for name in self.evaluate:
            if name not in seen:
                raise ValueError(f"evaluate: '{name}' is not a model of this pipeline ({sorted(seen)})")
        return self


class ParamsError(ValueError):
    """A params file that cannot be used; the message names file, key and expectation."""


def _describe(err: dict[str, Any]) -> str:
    key = ".".join(str(p) for p in err["loc"]) or "<root>"
    got = err.get("input")
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        return f"unknown key '{key}' (check the spelling; allowed keys are the ones in the default params.yaml)"
    return f"key '{key}': got {got!r}; expected: {msg}"


def parse_params(raw: dict[str, Any], source: str = "params.yaml") -> Params:
    """Validate a parsed mapping; raise :class:`ParamsError` listing every bad key."""
    try:
        return Params.model_validate(raw or {})
    except ValidationError as exc:
        lines = [_describe(e) for e in exc.errors()]
        raise ParamsError(f"{source}: invalid parameters:\n  - " + "\n  - ".join(lines)) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found (run from the repository root or pass --params)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    if raw is not None and not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    return parse_params(raw, str(path))
