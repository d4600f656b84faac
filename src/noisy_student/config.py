"""Typed parameters for every section of ``params.yaml``, validated up front.

``load_params`` reads the file once and raises :class:`ParamsError` naming the
file, the dotted key, the value found and what is allowed, before any stage
does work. Unknown keys are errors too: a typo must not silently fall back to
a default.
"""

from __future__ import annotations

import difflib
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from noisy_student.paths import supervised_model


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataParams(_Section):
    """Where the images come from and how they are split.

    ``source: fashion_mnist`` reads the IDX release and uses the keys up to
    ``ood_sources``; ``source: folders`` reads the user's ImageNet-style folders
    and uses ``labeled_dir`` .. ``max_unlabeled`` (the other group is ignored).
    ``wds_shard_size``, ``residency``, ``memory_budget_gb`` and ``workers`` apply to both sources:
    ``prepare`` always writes WebDataset tar folders (:mod:`noisy_student.data.wds`); where the
    images live while a model trains is ``residency``'s choice, not the files'.
    """

    fashion_mnist_dir: str = "/usr/share/datasets/fashion-mnist"
    labeled_per_class: int = Field(100, ge=1, le=6000)
    # None keeps every remaining train image in the unlabeled pool.
    unlabeled_size: int | None = Field(None, ge=1)
    test_size: int | None = Field(None, ge=1)
    ood_images: int = Field(5000, ge=0)
    ood_sources: tuple[Literal["digits", "photos"], ...] = ("digits", "photos")
    source: Literal["fashion_mnist", "folders"] = "fashion_mnist"
    # <dir>/<class>/<image>: every image is labeled; sorted class folder names = class indices
    labeled_dir: str | None = None
    # any image files, searched recursively; subfolder names are not labels
    unlabeled_dir: str | None = None
    # same layout as labeled_dir; its classes must all exist in labeled_dir
    test_dir: str | None = None
    # square side: shorter side resized to it, then centre-cropped
    image_size: int = Field(32, ge=8, le=1024)
    # 1: greyscale (N, H, W) images; 3: RGB (N, H, W, 3)
    channels: Literal[1, 3] = 3
    # seeded uniform subsample of the unlabeled files before decoding; None: all
    max_unlabeled: int | None = Field(None, ge=1)
    # images per tar file of every prepared split (the last one may hold fewer); a tar is also predict's unit
    # of work, labelled in batches of pseudo_labels.batch_size from its first image
    wds_shard_size: int = Field(10240, ge=1)
    # where training reads the images from: 'memory' decodes the labeled and unlabeled splits once into
    # uint8 arrays (small data: the default), 'stream' reads the tars while training (ImageNet-size data),
    # 'auto' is memory when both splits decode to at most memory_budget_gb, else stream
    residency: Literal["auto", "memory", "stream"] = "auto"
    memory_budget_gb: float = Field(8.0, gt=0)
    # DataLoader worker processes per training rank reading streamed tars; 0: in the training process
    workers: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _folders_complete(self) -> DataParams:
        # a ValidationError raised with a field location makes load_params name e.g. 'data.labeled_dir'
        # instead of the whole section
        folder_keys = ("labeled_dir", "unlabeled_dir", "test_dir")
        if self.source == "folders":
            bad = [k for k in folder_keys if not getattr(self, k)]
            why = "a folder path, required when data.source is 'folders'"
        else:
            bad = [k for k in (*folder_keys, "max_unlabeled") if getattr(self, k) is not None]
            why = "null while data.source is 'fashion_mnist' (set data.source: folders to read your own images)"
        if bad:
            details = [
                InitErrorDetails(type=PydanticCustomError("data_source", why), loc=(key,), input=getattr(self, key))
                for key in bad
            ]
            raise ValidationError.from_exception_data(type(self).__name__, details)
        return self


class NoiseParams(_Section):
    """The noise a model is trained with (paper section 3: input + model noise); the teacher's shape.

    ``stochastic_depth`` is the drop probability at the LAST block (1 - survival);
    earlier blocks get linearly less (timm's ``drop_path_rate`` rule).
    """

    randaugment_num_ops: int = Field(2, ge=0, le=14)
    # torchvision's scale: 0..30, the paper's RandAugment magnitude scale.
    randaugment_magnitude: int = Field(9, ge=0, le=30)
    # 'per_image': torchvision's RandAugment called image by image; 'batched': the same
    # per-image draws applied with one call per (op, sign) group (faster, same distribution,
    # a different random stream, so results differ from 'per_image' run for run)
    randaugment_impl: Literal["per_image", "batched"] = "per_image"
    crop_padding: int = Field(2, ge=0)
    hflip: bool = True
    dropout: float = Field(0.5, ge=0.0, lt=1.0)
    stochastic_depth: float = Field(0.2, ge=0.0, lt=1.0)


# keys of StudentNoiseParams that mean nothing for a model trained on labeled images only
PSEUDO_LABEL_NOISE_KEYS = ("unlabeled_augment", "unlabeled_model_noise")


class StudentNoiseParams(NoiseParams):
    """The student's noise: the same fields as the teacher's, plus Table 6's ablation switches.

    The switches turn the noise off for the pseudo-labeled images only, while the
    labeled images keep it.
    """

    unlabeled_augment: bool = True  # crop + flip + RandAugment on pseudo-labeled images
    unlabeled_model_noise: bool = True  # dropout + stochastic depth in their forward pass


@lru_cache(maxsize=1)
def _timm_models() -> frozenset[str]:
    # timm (and torch with it) is imported at the first architecture check, not when this module is
    # imported (modules that only use these types stay light); the registry is listed once per process
    import timm

    return frozenset(timm.list_models())


class ModelParams(_Section):
    """A timm architecture and its small-image adaptation."""

    arch: str = "resnet10t"
    # Extra keyword arguments for timm.create_model (e.g. channels for ResNets).
    kwargs: dict[str, Any] = Field(default_factory=dict)
    # Remove early downsampling so 28-32 px inputs keep spatial resolution.
    small_image: bool = True
    # Optional local weights file (timm / torch state dict); never downloaded.
    pretrained_file: str | None = None

    @field_validator("arch")
    @classmethod
    def _known_to_timm(cls, arch: str) -> str:
        # Checked while the params are read, so every stage refuses a misspelt model before it opens an
        # MLflow run or loads data; models.create_classifier keeps its own check for specs from elsewhere.
        import timm

        names = _timm_models()
        # is_model also accepts the registry's pretrained tags ('resnet50.a1_in1k'), as create_classifier does
        if arch in names or timm.is_model(arch):
            return arch
        close = difflib.get_close_matches(arch, sorted(names), n=5)
        hint = f"close matches: {', '.join(close)}" if close else "no close match; see timm.list_models()"
        # values go in as context, filling the template's placeholders (an f-string would let braces in
        # a user's value read as placeholders)
        context = {"arch": repr(arch), "hint": hint}
        raise PydanticCustomError("timm_model", "{arch} is not a timm model; {hint}", context)


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
    # optimizer updates between resumable checkpoints (written atomically)
    checkpoint_steps: int = Field(200, ge=1)
    # torch.compile the model's training forward (CPU and CUDA; costs ~30 s of compiling per run)
    compile: bool = False


class TeacherParams(_Section):
    model: ModelParams = ModelParams()
    optim: OptimParams = OptimParams()
    noise: NoiseParams = NoiseParams()


class PseudoLabelParams(_Section):
    mode: Literal["soft", "hard"] = "soft"
    temperature: float = Field(1.0, gt=0)
    # Table 6 ablation: label with the teacher's training noise on (RandAugment input,
    # dropout, stochastic depth). The paper's method keeps the teacher un-noised.
    noised_teacher: bool = False
    batch_size: int = Field(512, ge=1)
    # store only the k largest probabilities (+ their classes) per image; the student
    # renormalises them to dense targets. null = the full distribution (paper's code).
    top_k: int | None = Field(None, ge=1)


class FilterParams(_Section):
    confidence_threshold: float = Field(0.3, ge=0, le=1)
    # keep confidences below this too (1.0: no upper bound); with the threshold it picks one
    # confidence bin [threshold, max), the pools of the paper's Fig. 5
    confidence_max: float = Field(1.0, gt=0, le=1)
    # K: per-class cap (and fill target when balancing); None: no cap (balance must then be off)
    images_per_class: int | None = Field(3000, ge=1)
    balance: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> FilterParams:
        if self.confidence_max <= self.confidence_threshold:
            raise ValueError(
                f"confidence_max ({self.confidence_max}) must be above confidence_threshold "
                f"({self.confidence_threshold}): together they are the bin [threshold, max) of kept confidences"
            )
        if self.balance and self.images_per_class is None:
            raise ValueError("balance: true needs images_per_class (the count every class is filled up to)")
        return self


class FixResParams(_Section):
    """FixRes-style finetune after the student's training (the paper's L2: 1.5 epochs).

    Unaugmented labeled images, no dropout / stochastic depth, at ``image_size``
    (the checkpoint then resizes every input to it, so evaluation and the next
    iteration's predictions run at that resolution too), with the stem and the
    first ``freeze_stages`` feature stages frozen (weights and batch-norm
    statistics).
    """

    epochs: int = Field(0, ge=0)  # 0: off
    image_size: int = Field(32, ge=8, le=2048)
    lr: float = Field(0.005, gt=0)
    freeze_stages: int = Field(2, ge=0)


class StudentParams(_Section):
    model: ModelParams = ModelParams()
    optim: OptimParams = OptimParams()
    fixres: FixResParams = FixResParams()
    # unlabeled images per labeled image in every batch (paper: 1:1 .. 28:1).
    unlabeled_ratio: int = Field(3, ge=1)
    # 'joint' (the paper's method) or Table 13's 'pretrain_finetune': the same number of
    # steps on pseudo-labeled images only, then `finetune_epochs` on the labeled images.
    schedule: Literal["joint", "pretrain_finetune"] = "joint"
    finetune_epochs: int = Field(10, ge=1)
    # Table 15: 'scratch' (the paper's default) or warm-start from the teacher's weights
    # (needs the teacher's architecture).
    init: Literal["scratch", "teacher"] = "scratch"
    # A student smaller than its teacher is knowledge distillation, not Noisy Student:
    # refused unless asked for explicitly.
    allow_smaller: bool = False


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
    # The released benchmarks, read unchanged when set (None: the embedded Fashion-MNIST-A/-C/-P sets).
    # ImageNet-A: <dir>/<wnid>/<image>.jpg; ImageNet-C: <dir>/<corruption>/<severity>/<wnid>/<image>;
    # ImageNet-P: <dir>/<perturbation>/<wnid>/<name>.mp4 (needs PyAV) or <name>/<frame>.png folders.
    imagenet_a_dir: str | None = None
    imagenet_c_dir: str | None = None
    imagenet_p_dir: str | None = None
    # the model's class ids (wnids) in logit order: JSON list, JSON {index: [wnid, name]} or text, one per
    # line. Required for ImageNet-A; for C/P None means the sorted wnid folders (the usual ImageNet order).
    class_index_file: str | None = None
    # side of the square input the release images are resized to; None: 224, the releases' own size
    image_size: int | None = Field(None, ge=8)
    # resize the shorter side to image_size / crop_fraction, then centre-crop (0.875 = Resize 256 +
    # CenterCrop 224, usual for ImageNet-A); None: resize straight to image_size
    crop_fraction: float | None = Field(None, gt=0.0, le=1.0)
    # read only the first k images (C, A) or sequences (P) of every class folder; None: all
    release_max_per_class: int | None = Field(None, ge=1)
    # clean ImageNet validation folder <dir>/<wnid>/<image>: the clean error for ImageNet-C's relative mCE
    imagenet_val_dir: str | None = None
    # JSON {"p_flip_probability": {p: FP}, "p_top5_distance": {p: T5D}} of the baseline (AlexNet) on the
    # released ImageNet-P, for mFR / mT5D; None: raw flip probabilities and top-5 distances only
    p_baseline_file: str | None = None


class IterationParams(_Section):
    """One self-training iteration: who labels for it, and what it changes.

    The override mappings are deep-merged into the top-level sections of the
    same name for this iteration only (e.g. a bigger student or a larger
    unlabeled ratio in iteration 2, as in the paper's Table 7).
    """

    teacher: str
    student: dict[str, Any] = Field(default_factory=dict)
    noise: dict[str, Any] = Field(default_factory=dict)
    pseudo_labels: dict[str, Any] = Field(default_factory=dict)
    filter: dict[str, Any] = Field(default_factory=dict)


OVERRIDABLE = ("student", "noise", "pseudo_labels", "filter")


class TrackingParams(_Section):
    experiment: str = "noisy-student"
    # every student is logged as an MLflow model and registered under this name (null: not registered)
    registered_model: str | None = "noisy-student"


class DistributedParams(_Section):
    """Training and labelling processes of the teacher / predict / student stages (torchrun + DDP).

    ``processes: 1, nodes: 1`` is one process (no torchrun); otherwise the stage re-runs itself under
    torchrun with ``processes`` ranks on each of ``nodes`` machines (gloo on CPU, one GPU each with
    nccl) that split every global batch evenly.
    """

    processes: int = Field(1, ge=1)
    # machines of one job (torchrun, static rendezvous): the stage's own machine is node 0 and holds
    # global rank 0 (it tracks and writes); every other node runs the command the stage prints
    nodes: int = Field(1, ge=1)
    # host:port on node 0 that the other nodes reach (its TCP store); needed when nodes > 1
    rdzv_endpoint: str = ""
    # batch-norm statistics over the global batch instead of each rank's slice; CUDA only
    sync_batchnorm: bool = False

    @property
    def ranks(self) -> int:
        """Training processes of the whole job: ``processes`` on each of ``nodes`` machines."""
        return self.processes * self.nodes

    @field_validator("rdzv_endpoint")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, _, port = value.rpartition(":")
        if value and (not host or not port.isdigit() or not 0 < int(port) < 65536):
            raise PydanticCustomError("host_port", "host:port with a port from 1 to 65535, e.g. node0:29500")
        return value


class Params(_Section):
    seed: int = 0
    device: Literal["auto", "cpu", "cuda", "xla"] = "auto"
    # autocast dtype of training and inference (attacks stay float32): auto = bf16 on CUDA and on CPUs
    # with bf16 instructions (avx512_bf16 / amx_bf16), float32 elsewhere
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    data: DataParams = DataParams()
    teacher: TeacherParams = TeacherParams()
    noise: StudentNoiseParams = StudentNoiseParams()
    pseudo_labels: PseudoLabelParams = PseudoLabelParams()
    filter: FilterParams = FilterParams()
    student: StudentParams = StudentParams()
    eval: EvalParams = EvalParams()
    robustness: RobustnessParams = RobustnessParams()
    tracking: TrackingParams = TrackingParams()
    distributed: DistributedParams = DistributedParams()
    # Iterations: name -> {teacher: the model that labels for it ("teacher" or an
    # earlier iteration), overrides...}. Order of the mapping is the order of training.
    iterations: dict[str, IterationParams] = Field(default_factory=lambda: {"it1": IterationParams(teacher="teacher")})
    # Iterations whose student network also trains supervised, as the teacher does (the same-network
    # baseline, model "supervised-<iteration>"); dvc.yaml unrolls the `supervised` stage over it.
    supervised: tuple[str, ...] = ()
    # Models to evaluate ("teacher", iteration names, "supervised-<iteration>"); dvc.yaml unrolls over it.
    evaluate: tuple[str, ...] = ("teacher", "it1")

    @model_validator(mode="after")
    def _iterations_chain(self) -> Params:
        # Each bad name is reported at its own location (iterations.<it>.teacher, evaluate.<index>), so
        # load_params names that key and value instead of the model root and the whole params mapping.
        details: list[InitErrorDetails] = []
        seen = ["teacher"]
        for name, it in self.iterations.items():
            if it.teacher not in seen:
                why = "{got} is not 'teacher' or an earlier iteration; allowed: {allowed}"
                context = {"got": repr(it.teacher), "allowed": ", ".join(seen)}
                details.append(
                    InitErrorDetails(
                        type=PydanticCustomError("iteration_teacher", why, context),
                        loc=("iterations", name, "teacher"),
                        input=it.teacher,
                    )
                )
            seen.append(name)
        for index, name in enumerate(self.supervised):
            if name not in self.iterations:
                why = "{got} is not an iteration; allowed: {allowed}"
                context = {"got": repr(name), "allowed": ", ".join(self.iterations) or "(none)"}
                details.append(
                    InitErrorDetails(
                        type=PydanticCustomError("supervised_iteration", why, context),
                        loc=("supervised", index),
                        input=name,
                    )
                )
        seen += [supervised_model(name) for name in self.supervised]
        for index, name in enumerate(self.evaluate):
            if name not in seen:
                why = "{got} is not a model of this pipeline; allowed: {allowed}"
                context = {"got": repr(name), "allowed": ", ".join(seen)}
                details.append(
                    InitErrorDetails(
                        type=PydanticCustomError("evaluate_model", why, context), loc=("evaluate", index), input=name
                    )
                )
        if details:
            raise ValidationError.from_exception_data(type(self).__name__, details)
        return self

    @model_validator(mode="after")
    def _distributed_fits(self) -> Params:
        # every rank takes an equal slice of each global batch; SyncBatchNorm has no CPU / XLA kernel
        n, details = self.distributed.ranks, list[InitErrorDetails]()
        for section in ("teacher", "student"):
            batch = getattr(self, section).optim.batch_size
            if batch % n:
                what = "a multiple of the training ranks, distributed.processes x distributed.nodes ({n})"
                why = PydanticCustomError("batch_split", what, {"n": n})
                details.append(InitErrorDetails(type=why, loc=(section, "optim", "batch_size"), input=batch))
        if self.distributed.nodes > 1 and not self.distributed.rdzv_endpoint:
            why = PydanticCustomError(
                "rdzv_endpoint",
                "node 0's host:port (e.g. node0:29500) when distributed.nodes is {n}",
                {"n": self.distributed.nodes},
            )
            details.append(InitErrorDetails(type=why, loc=("distributed", "rdzv_endpoint"), input=""))
        if self.distributed.sync_batchnorm and self.device in ("cpu", "xla"):
            why = PydanticCustomError(
                "sync_batchnorm",
                "false on device {device}: SyncBatchNorm runs on CUDA only",
                {"device": repr(self.device)},
            )
            details.append(InitErrorDetails(type=why, loc=("distributed", "sync_batchnorm"), input=True))
        if details:
            raise ValidationError.from_exception_data(type(self).__name__, details)
        return self

    def for_iteration(self, name: str) -> Params:
        """These params with iteration ``name``'s overrides merged into its sections."""
        if name not in self.iterations:
            raise KeyError(f"iterations: no iteration '{name}' (have {list(self.iterations)})")
        return Params.model_validate(_merged(self.model_dump(), self.iterations[name]))


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _merged(raw: dict[str, Any], it: IterationParams) -> dict[str, Any]:
    merged = dict(raw)
    for section in OVERRIDABLE:
        merged[section] = _deep_merge(raw.get(section) or {}, getattr(it, section))
    return merged


class ParamsError(ValueError):
    """A params file that cannot be used; the message names file, key and expectation."""


# keys that once existed: a params file that still sets one is told what replaced it
REMOVED_KEYS = {
    ("data", "format"): (
        "removed: prepare always writes WebDataset tar folders (<split>.wds); whether training holds the "
        "images in memory or streams the tars is data.residency (auto | memory | stream)"
    ),
    ("pseudo_labels", "shard_size"): (
        "removed: predict labels the unlabeled pool one tar at a time; the tar size is data.wds_shard_size"
    ),
}

# custom error types whose message already quotes the value found and says what is allowed
_SELF_DESCRIBED = ("timm_model", "iteration_teacher", "supervised_iteration", "evaluate_model")
_MAX_INPUT_CHARS = 80


def _shorten(value: Any) -> str:
    """``repr(value)`` cut to a line: an error at a section (or the root) must not print the whole mapping."""
    text = repr(value)
    if isinstance(value, dict):
        text = f"a mapping with keys {list(value)}"
    return text if len(text) <= _MAX_INPUT_CHARS else text[: _MAX_INPUT_CHARS - 3] + "..."


def _describe(err: dict[str, Any]) -> str:
    key = ".".join(str(p) for p in err["loc"]) or "<root>"
    got = _shorten(err.get("input"))
    msg = err["msg"]
    if err["type"] in _SELF_DESCRIBED:
        return f"key '{key}': {msg}"
    if err["type"] == "extra_forbidden" and err["loc"][-1] in PSEUDO_LABEL_NOISE_KEYS and "teacher" in err["loc"]:
        return (
            f"key '{key}': applies to pseudo-labeled images, which only the student sees; set it in the "
            f"student's noise (noise.{err['loc'][-1]}) and remove it from teacher.noise"
        )
    if err["type"] == "extra_forbidden" and tuple(err["loc"][-2:]) in REMOVED_KEYS:
        return f"key '{key}': {REMOVED_KEYS[tuple(err['loc'][-2:])]}; delete it from the params file"
    if err["type"] == "extra_forbidden":
        return f"unknown key '{key}' (check the spelling; allowed keys are the ones in the default params.yaml)"
    return f"key '{key}': got {got}; expected: {msg}"


def parse_params(raw: dict[str, Any], source: str = "params.yaml") -> Params:
    """Validate a parsed mapping; raise :class:`ParamsError` listing every bad key."""
    try:
        params = Params.model_validate(raw or {})
    except ValidationError as exc:
        lines = [_describe(e) for e in exc.errors()]
        raise ParamsError(f"{source}: invalid parameters:\n  - " + "\n  - ".join(lines)) from None
    # every iteration's overrides are validated up front, named by their own key
    lines = []
    merged: dict[str, Params] = {}
    for name in params.iterations:
        try:
            merged[name] = params.for_iteration(name)
        except ValidationError as exc:
            for e in exc.errors():
                section = str(e["loc"][0]) if e["loc"] else ""
                prefix = ("iterations", name) if section in OVERRIDABLE else ()
                lines.append(_describe({**e, "loc": (*prefix, *e["loc"])}))
    if not lines:
        lines = _warm_start_mismatches(params, merged)
    if lines:
        raise ParamsError(f"{source}: invalid parameters:\n  - " + "\n  - ".join(lines))
    return params


def _warm_start_mismatches(params: Params, merged: dict[str, Params]) -> list[str]:
    """Iterations whose student warm-starts (``student.init: teacher``) from a different network.

    The teacher's weights load into the student only if both are the same timm network; checked here
    so a mismatch stops ``dvc repro`` before the teacher and predict stages instead of at the student.
    """
    lines = []
    network = {"arch", "kwargs", "small_image"}  # what decides the state dict's keys and shapes
    for name, it in merged.items():
        if it.student.init != "teacher":
            continue
        labeler = params.iterations[name].teacher
        teacher_model = params.teacher.model if labeler == "teacher" else merged[labeler].student.model
        ours, theirs = it.student.model.model_dump(include=network), teacher_model.model_dump(include=network)
        if ours == theirs:
            continue
        key = f"iterations.{name}.student.init" if "init" in params.iterations[name].student else "student.init"
        lines.append(
            f"key '{key}': got 'teacher' for {name}, whose student network {ours} is not that of its teacher "
            f"{labeler!r} {theirs}; expected: 'scratch', or the same student.model as the teacher"
        )
    return lines


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
