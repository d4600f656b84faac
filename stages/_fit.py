"""Shared edge of the two training stages: build, train, checkpoint, log."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch

from noisy_student.config import FixResParams, ModelParams, NoiseParams, OptimParams, Params
from noisy_student.data import ImageSet, load_classes
from noisy_student.evaluation import predict_logits, topk_accuracy
from noisy_student.fixres import fixres_finetune
from noisy_student.io import atomic_path
from noisy_student.models import ImageClassifier, create_classifier, save_checkpoint
from noisy_student.plots import training_curves
from noisy_student.training import (
    TrainData,
    one_hot,
    resolve_device,
    run_key,
    seed_everything,
    train_classifier,
)
from stages._common import Timer, images_tensor, project_root, write_metrics


def class_count(data_dir: Path, labeled: ImageSet) -> int:
    """Number of classes: the names ``prepare`` stored, else the labeled set's largest label + 1."""
    names = load_classes(data_dir)
    return len(names) if names else int(labeled.labels.max()) + 1


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std in 0..1 of the labeled images (the model's normalisation)."""
    x = images.astype(np.float32) / 255.0
    axes = (0, 1, 2)
    if x.ndim == 3:
        return (float(x.mean()),), (float(x.std()),)
    return tuple(x.mean(axis=axes).tolist()), tuple(x.std(axis=axes).tolist())


def _append_phase(
    history: list[dict[str, float]],
    tuned: list[dict[str, float]],
    offset: int,
    phase: float,
    on_epoch: Callable[[dict[str, float]], None],
) -> None:
    """Append a later training phase's records to ``history``: epochs continue after ``offset``,
    every record carries its ``phase`` (0 = the main run), and each new one is logged."""
    for record in history:
        record.setdefault("phase", 0.0)
    for record in tuned:
        record.update(epoch=record["epoch"] + offset, phase=phase)
        on_epoch(record)
    history += tuned


def fit(
    name: str,
    params: Params,
    model_params: ModelParams,
    optim: OptimParams,
    noise: NoiseParams,
    labeled: ImageSet,
    test: ImageSet,
    out: Path,
    metrics_path: Path,
    num_classes: int,
    unlabeled_images: torch.Tensor | None = None,
    unlabeled_targets: torch.Tensor | None = None,
    unlabeled_ratio: int = 0,
    extra_metrics: dict[str, float] | None = None,
    key_extra: object = None,
    prepare_model: Callable[[ImageClassifier], None] | None = None,
    finetune_epochs: int = 0,
    fixres: FixResParams | None = None,
) -> ImageClassifier:
    """Train one model, save it at ``out`` and its metrics/curves beside the DVC metrics.

    ``prepare_model`` sees the freshly built network before training (size
    checks, warm start). ``finetune_epochs > 0`` selects Table 13's schedule:
    the whole run on pseudo-labeled images only, then that many epochs on the
    labeled images (fresh optimizer and schedule).
    """
    device = resolve_device(params.device)
    mean, std = channel_stats(labeled.images)
    seed_everything(params.seed)  # reproducible initial weights
    model, spec = create_classifier(
        model_params,
        num_classes,
        labeled.channels,
        mean,
        std,
        drop_rate=noise.dropout,
        drop_path_rate=noise.stochastic_depth,
    )
    if prepare_model is not None:
        prepare_model(model)
    test_images = images_tensor(test.images)

    def eval_fn(m: ImageClassifier) -> dict[str, float]:
        logits = predict_logits(m, test_images, params.eval.batch_size, device, progress=False)
        acc = topk_accuracy(logits, test.labels)
        return {"test_top1": acc["top1"], "test_top5": acc["top5"]}

    def on_epoch(record: dict[str, float]) -> None:
        mlflow.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=int(record["epoch"]))

    data = TrainData(
        images_tensor(labeled.images),
        one_hot(labeled.labels, num_classes, smoothing=optim.label_smoothing),
        unlabeled_images,
        unlabeled_targets,
    )
    key = run_key(
        name,
        params.seed,
        model_params.model_dump(),
        optim.model_dump(),
        noise.model_dump(),
        unlabeled_ratio,
        len(labeled),
        key_extra,
        finetune_epochs,
    )
    timer = Timer()
    # keyed by the run's params so concurrent queued experiments never share a file
    checkpoints = project_root() / ".checkpoints"
    final, history = train_classifier(
        model,
        data,
        optim,
        noise,
        unlabeled_ratio=unlabeled_ratio,
        labeled_in_batch=finetune_epochs == 0,
        device=device,
        seed=params.seed,
        checkpoint_path=checkpoints / f"{name}-{key}.pt",
        checkpoint_key=key,
        eval_fn=eval_fn,
        on_epoch=on_epoch,
        desc=name if not finetune_epochs else f"{name} pretrain",
    )
    if finetune_epochs:
        labeled_only = TrainData(data.labeled_images, data.labeled_targets)
        final, tuned = train_classifier(
            final,
            labeled_only,
            optim.model_copy(update={"epochs": finetune_epochs, "warmup_epochs": 0}),
            noise,
            device=device,
            seed=params.seed + 1,
            checkpoint_path=checkpoints / f"{name}-{key}-finetune.pt",
            checkpoint_key=key,
            eval_fn=eval_fn,
            desc=f"{name} finetune",
        )
        _append_phase(history, tuned, optim.epochs, 1.0, on_epoch)
    if fixres is not None and fixres.epochs:
        final, tuned = fixres_finetune(
            final,
            data.labeled_images,
            data.labeled_targets,
            optim,
            fixres,
            device=device,
            seed=params.seed + 2,
            checkpoint_path=checkpoints / f"{name}-{key}-fixres.pt",
            checkpoint_key=run_key(key, fixres.model_dump()),
            eval_fn=eval_fn,
            desc=f"{name} fixres {fixres.image_size}px",
        )
        _append_phase(history, tuned, optim.epochs + finetune_epochs, 2.0, on_epoch)
        spec = replace(spec, input_size=fixres.image_size)
    final = final.cpu().eval()
    n_params = sum(p.numel() for p in final.parameters())
    save_checkpoint(out, final, spec, {"name": name, "params": n_params, "epochs": optim.epochs})

    frame = pd.DataFrame(history)
    curves_csv = metrics_path.parent / "curves" / f"{name}.csv"
    with atomic_path(curves_csv) as tmp:
        frame.to_csv(tmp, index=False)
    png = metrics_path.parent / "curves" / f"{name}.png"
    training_curves(frame, name, png)
    mlflow.log_artifact(str(png), "plots")
    mlflow.log_artifact(str(curves_csv), "curves")
    last = history[-1]
    fixres_metrics = (
        {"fixres_epochs": fixres.epochs, "fixres_image_size": fixres.image_size} if fixres and fixres.epochs else {}
    )
    write_metrics(
        metrics_path,
        {
            "test_top1": last["test_top1"],
            "test_top5": last["test_top5"],
            "best_logged_test_top1": float(frame["test_top1"].max()),
            "final_train_loss": last["train_loss"],
            "epochs": optim.epochs + finetune_epochs,
            **fixres_metrics,
            "parameters": int(n_params),
            "train_seconds": timer.seconds,
            **(extra_metrics or {}),
        },
    )
    return final
