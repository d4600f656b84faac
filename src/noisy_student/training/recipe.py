"""The training recipe of one model: a typed run plan, its phases, and what it leaves behind.

A :class:`RunPlan` says everything that defines a run (teacher or student):
architecture, optimizer, noise, the student's ratio and schedule, FixRes.
:func:`train_model` builds the network and runs the phases:

1. the main phase: joint labeled + pseudo-labeled batches (the paper), or
   pseudo-labeled only when ``finetune_epochs > 0`` (Table 13's pretraining);
2. Table 13's finetune on the labeled images (``finetune_epochs``);
3. the FixRes finetune at a higher resolution (``fixres.epochs``).

Resume keys are derived from the plan and a hash of the training tensors, so
a run resumes only on the same params *and* the same data.

With ``distributed.processes > 1`` every rank calls :func:`train_model` (the stage runs under
torchrun, :mod:`noisy_student.distributed`); rank 0 evaluates and gets the metrics.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from noisy_student import distributed
from noisy_student.config import FixResParams, ModelParams, NoiseParams, OptimParams, Params
from noisy_student.data import ImageSet
from noisy_student.devices import inference_dtype, resolve_device, resolve_precision
from noisy_student.evaluation import images_tensor, predict_logits, topk_accuracy
from noisy_student.io import atomic_path
from noisy_student.models import ImageClassifier, ModelSpec, check_student_size, create_classifier, save_checkpoint
from noisy_student.paths import supervised_model, training_name
from noisy_student.seeds import seed_everything, seed_for
from noisy_student.training.batches import TrainData, TrainSource, one_hot
from noisy_student.training.fixres import fixres_finetune
from noisy_student.training.loop import EpochCallback, train_classifier


class PlanError(ValueError):
    """A plan that cannot be trained as configured (student too small, warm start from another architecture)."""


@dataclass(frozen=True)
class RunPlan:
    """Everything that defines one training run; built from params by :meth:`teacher` / :meth:`student`."""

    name: str  # 'teacher', 'student-it1': progress bars, curves, resume files
    seed: int
    device: str
    model: ModelParams
    optim: OptimParams
    noise: NoiseParams  # the student's is a StudentNoiseParams (Table 6 switches)
    eval_batch_size: int
    unlabeled_ratio: int = 0  # pseudo-labeled images per labeled image in a batch; 0: teacher
    finetune_epochs: int = 0  # > 0: Table 13's pretrain (pseudo labels only) + labeled finetune
    fixres: FixResParams | None = None
    teacher_parameters: int | None = None  # a student must have at least as many, unless allow_smaller
    allow_smaller: bool = False
    warm_start: bool = False  # start from the teacher's weights (Table 15), given to train_model
    precision: str = "auto"  # the ``precision`` param: autocast dtype, resolved on the device by train_model
    ranks: int = 1  # training processes of the job, distributed.processes x nodes (1: one process, no DDP)
    sync_batchnorm: bool = False  # distributed.sync_batchnorm (CUDA only)

    @classmethod
    def teacher(cls, params: Params) -> RunPlan:
        t = params.teacher
        return cls(
            training_name("teacher"),
            params.seed,
            params.device,
            t.model,
            t.optim,
            t.noise,
            params.eval.batch_size,
            precision=params.precision,
            ranks=params.distributed.ranks,
            sync_batchnorm=params.distributed.sync_batchnorm,
        )

    @classmethod
    def supervised(cls, params: Params, iteration: str) -> RunPlan:
        """Iteration ``iteration``'s same-network baseline: its student's network and noise, trained as the
        teacher is (labeled images only, the teacher's optimiser, schedule and epochs)."""
        merged = params.for_iteration(iteration)
        return cls(
            training_name(supervised_model(iteration)),
            params.seed,
            params.device,
            merged.student.model,
            params.teacher.optim,
            merged.noise,
            params.eval.batch_size,
            precision=params.precision,
            ranks=params.distributed.ranks,
            sync_batchnorm=params.distributed.sync_batchnorm,
        )

    @classmethod
    def student(cls, params: Params, iteration: str, teacher_parameters: int) -> RunPlan:
        """The plan of iteration ``iteration``'s student; ``params`` already merged for that iteration."""
        s = params.student
        return cls(
            training_name(iteration),
            params.seed,
            params.device,
            s.model,
            s.optim,
            params.noise,
            params.eval.batch_size,
            unlabeled_ratio=s.unlabeled_ratio,
            finetune_epochs=s.finetune_epochs if s.schedule == "pretrain_finetune" else 0,
            fixres=s.fixres if s.fixres.epochs else None,
            teacher_parameters=teacher_parameters,
            allow_smaller=s.allow_smaller,
            warm_start=s.init == "teacher",
            precision=params.precision,
            ranks=params.distributed.ranks,
            sync_batchnorm=params.distributed.sync_batchnorm,
        )

    def key(self, data: TrainSource) -> str:
        """A short hash of the plan and of what it trains on (its source's digest): what a resume file is valid for.

        The distributed fields count only when they are not the single process's defaults, so a
        one-process run keeps the key it always had.
        """
        plan = asdict(self)
        for name, single in (("ranks", 1), ("sync_batchnorm", False)):
            if plan[name] == single:
                del plan[name]
        digest = hashlib.sha256(json.dumps(_jsonable(plan), sort_keys=True).encode())
        data.update_digest(digest)
        return digest.hexdigest()[:16]


def _jsonable(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


@dataclass
class TrainingInputs:
    """What a run trains and evaluates on.

    ``train``: the training source, held in memory (:class:`~noisy_student.training.batches.TrainData`)
    or streamed from the tars (:class:`~noisy_student.training.streams.StreamedTrainData`), its labeled
    targets one-hot with the run's label smoothing; ``test``: the test set (in memory either way);
    ``normalization``: the labeled images' per-channel ``(mean, std)`` in 0..1; ``channels``: 1 or 3.
    """

    train: TrainSource
    test: ImageSet
    num_classes: int
    normalization: tuple[tuple[float, ...], tuple[float, ...]]
    channels: int

    @classmethod
    def in_memory(
        cls,
        labeled: ImageSet,
        test: ImageSet,
        num_classes: int,
        smoothing: float = 0.0,
        unlabeled: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> TrainingInputs:
        """``labeled`` held as host tensors, with ``unlabeled``'s pseudo-labeled uint8 images ``(N, C, H, W)``
        and float targets ``(N, K)`` (a student's, repeated as filter-balance says)."""
        images, targets = unlabeled or (None, None)
        train = TrainData(
            images_tensor(labeled.images), one_hot(labeled.labels, num_classes, smoothing), images, targets
        )
        return cls(train, test, num_classes, channel_stats(labeled.images), labeled.channels)


@dataclass
class TrainResult:
    """The kept model (EMA weights when enabled), how to rebuild it, its per-epoch history and summary metrics."""

    model: ImageClassifier
    spec: ModelSpec
    history: pd.DataFrame  # one row per epoch: epoch, train_loss, lr, test_top1/5 where evaluated, phase
    metrics: dict[str, Any]
    noise: NoiseParams
    epochs: int


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std in 0..1 of uint8 images ``(N, H, W)`` or ``(N, H, W, C)`` (the model's normalisation)."""
    x = images.astype(np.float32) / 255.0
    if x.ndim == 3:
        return (float(x.mean()),), (float(x.std()),)
    return tuple(x.mean(axis=(0, 1, 2)).tolist()), tuple(x.std(axis=(0, 1, 2)).tolist())


def _append_phase(
    history: list[dict[str, float]],
    tuned: list[dict[str, float]],
    offset: int,
    phase: float,
    on_epoch: EpochCallback | None,
) -> None:
    """Append a later phase's records: epochs continue after ``offset``, every record carries its ``phase``
    (0 = the main run), and each new one is passed to ``on_epoch`` (None: reported by another rank)."""
    for record in history:
        record.setdefault("phase", 0.0)
    for record in tuned:
        record.update(epoch=record["epoch"] + offset, phase=phase)
        if on_epoch is not None:
            on_epoch(record)
    history += tuned


def build_model(
    plan: RunPlan, inputs: TrainingInputs, warm_start: Mapping[str, torch.Tensor] | None = None
) -> tuple[ImageClassifier, ModelSpec]:
    """The freshly initialised network of ``plan`` (seeded), size-checked and warm-started as planned."""
    mean, std = inputs.normalization
    seed_everything(seed_for(plan.seed, "init"))
    model, spec = create_classifier(
        plan.model,
        inputs.num_classes,
        inputs.channels,
        mean,
        std,
        drop_rate=plan.noise.dropout,
        drop_path_rate=plan.noise.stochastic_depth,
    )
    if plan.teacher_parameters is not None:
        try:
            check_student_size(sum(p.numel() for p in model.parameters()), plan.teacher_parameters, plan.allow_smaller)
        except ValueError as exc:
            raise PlanError(str(exc)) from None
    if plan.warm_start:
        if warm_start is None:
            raise PlanError("student.init: teacher needs the teacher's weights")
        try:
            model.load_state_dict(warm_start)
        except RuntimeError as exc:
            raise PlanError(
                f"student.init: teacher needs the teacher's architecture: {str(exc).splitlines()[0]}"
            ) from None
    return model, spec


def train_model(
    plan: RunPlan,
    inputs: TrainingInputs,
    checkpoints: Path,
    on_epoch: EpochCallback,
    warm_start: Mapping[str, torch.Tensor] | None = None,
    key: str | None = None,
) -> TrainResult:
    """Build and train the model of ``plan``; resumable state lives in the folder ``checkpoints``.

    ``on_epoch`` receives every epoch's record (e.g. to log it to MLflow);
    ``warm_start``: the teacher's state dict when ``plan.warm_start``; ``key``: the resume key
    :func:`claim_run` yielded (saves hashing the data again; computed when None). Raises
    :class:`PlanError` before any training when the plan cannot run. With several processes every
    rank calls it; the others get a result without metrics (rank 0 evaluates).
    """
    world = distributed.world()
    if world.size != plan.ranks:
        raise PlanError(
            f"distributed.processes x nodes is {plan.ranks} but this process is one of {world.size}: "
            "run the stage command as it is (it starts torchrun itself when there are several)"
        )
    report = on_epoch if world.main else None  # rank 0 reports every epoch
    device = distributed.rank_device(resolve_device(plan.device))
    amp_dtype, eval_dtype = resolve_precision(plan.precision, device), inference_dtype(plan.precision, device)
    model, spec = build_model(plan, inputs, warm_start)
    test_images = images_tensor(inputs.test.images)

    def eval_fn(m: ImageClassifier) -> dict[str, float]:
        logits = predict_logits(m, test_images, plan.eval_batch_size, device, progress=False, amp_dtype=eval_dtype)
        acc = topk_accuracy(logits, inputs.test.labels)
        return {"test_top1": acc["top1"], "test_top5": acc["top5"]}

    data = inputs.train
    key = key or plan.key(data)
    start = time.perf_counter()
    final, history = train_classifier(
        model,
        data,
        plan.optim,
        plan.noise,
        unlabeled_ratio=plan.unlabeled_ratio,
        labeled_in_batch=plan.finetune_epochs == 0,
        device=device,
        amp_dtype=amp_dtype,
        seed=seed_for(plan.seed, "train"),
        checkpoint_path=checkpoints / f"{plan.name}-{key}.pt",
        checkpoint_key=key,
        eval_fn=eval_fn,
        on_epoch=report,
        desc=plan.name if not plan.finetune_epochs else f"{plan.name} pretrain",
        sync_batchnorm=plan.sync_batchnorm,
    )
    if plan.finetune_epochs:
        final, tuned = train_classifier(
            final,
            data.labeled_only(),
            plan.optim.model_copy(update={"epochs": plan.finetune_epochs, "warmup_epochs": 0}),
            plan.noise,
            device=device,
            amp_dtype=amp_dtype,
            seed=seed_for(plan.seed, "finetune"),
            checkpoint_path=checkpoints / f"{plan.name}-{key}-finetune.pt",
            checkpoint_key=key,
            eval_fn=eval_fn,
            desc=f"{plan.name} finetune",
            sync_batchnorm=plan.sync_batchnorm,
        )
        _append_phase(history, tuned, plan.optim.epochs, 1.0, report)
    if plan.fixres is not None:
        final, tuned = fixres_finetune(
            final,
            data.labeled_only(),
            plan.optim,
            plan.fixres,
            device=device,
            amp_dtype=amp_dtype,
            seed=seed_for(plan.seed, "fixres"),
            checkpoint_path=checkpoints / f"{plan.name}-{key}-fixres.pt",
            checkpoint_key=f"{key}-fixres",
            eval_fn=eval_fn,
            desc=f"{plan.name} fixres {plan.fixres.image_size}px",
        )
        _append_phase(history, tuned, plan.optim.epochs + plan.finetune_epochs, 2.0, report)
        spec = replace(spec, input_size=plan.fixres.image_size)
    final = final.cpu().eval()
    frame = pd.DataFrame(history)
    if not world.main:  # its records have no evaluations; rank 0 reports
        return TrainResult(final, spec, frame, {}, plan.noise, plan.optim.epochs)
    last = history[-1]
    n_params = sum(p.numel() for p in final.parameters())
    fixres = plan.fixres
    metrics = {
        "test_top1": last["test_top1"],
        "test_top5": last["test_top5"],
        "best_logged_test_top1": float(frame["test_top1"].max()),
        "final_train_loss": last["train_loss"],
        "epochs": plan.optim.epochs + plan.finetune_epochs,
        **({"fixres_epochs": fixres.epochs, "fixres_image_size": fixres.image_size} if fixres else {}),
        "parameters": int(n_params),
        "train_seconds": round(time.perf_counter() - start, 2),
    }
    return TrainResult(final, spec, frame, metrics, plan.noise, plan.optim.epochs)


def save_training_outputs(result: TrainResult, name: str, checkpoint: Path, curves_csv: Path) -> None:
    """The checkpoint (weights, spec, and meta: name, size, epochs, the training noise) and the curves' CSV."""
    meta = {
        "name": name,
        "params": result.metrics["parameters"],
        "epochs": result.epochs,
        # predict's noised-teacher ablation re-applies the noise the model was trained with
        "noise": result.noise.model_dump(mode="json"),
    }
    save_checkpoint(checkpoint, result.model, result.spec, meta)
    with atomic_path(curves_csv) as tmp:
        result.history.to_csv(tmp, index=False)
