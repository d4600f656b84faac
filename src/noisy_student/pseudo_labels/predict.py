"""The teacher labels the unlabeled pool: load it (with its training noise for the Table 6 ablation), predict, shard.

The paper's teacher is not noised when it labels (eval mode, clean images).
``pseudo_labels.noised_teacher`` is the ablation that labels with the noise
the teacher was trained with, read from its checkpoint: RandAugment + crop +
flip on the images, dropout and stochastic depth in the model.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError
from tqdm.auto import tqdm

from noisy_student.config import NoiseParams, PseudoLabelParams
from noisy_student.data.imageset import ImageSet, load_imageset
from noisy_student.evaluation import images_tensor, predict_logits
from noisy_student.models import ImageClassifier, load_classifier
from noisy_student.noise import BatchAugment
from noisy_student.pseudo_labels.shards import predict_metrics, write_prediction_shards
from noisy_student.pseudo_labels.targets import softmax


@dataclass
class PredictInputs:
    """Everything ``predict`` reads, loaded and checked before any work (or MLflow run) starts.

    ``noise`` is the teacher's training noise when it labels noised
    (``pseudo_labels.noised_teacher``), else None.
    """

    teacher: ImageClassifier
    noise: NoiseParams | None
    pool: ImageSet


def teacher_noise(checkpoint: Path, meta: dict[str, Any]) -> NoiseParams:
    """The noise a model was trained with, from its checkpoint's ``meta`` (``"noise"``: NoiseParams as a dict).

    Raises ``ValueError`` naming ``checkpoint`` when it was saved without one
    (or with one these params no longer read): guessing it from today's params
    would be wrong whenever an iteration overrides ``noise``.
    """
    if "noise" not in meta:
        raise ValueError(
            f"{checkpoint}: the teacher was saved without its training noise; retrain it "
            "(pseudo_labels.noised_teacher labels with the noise the teacher was trained with)"
        )
    try:
        return NoiseParams.model_validate(meta["noise"])
    except ValidationError as exc:
        raise ValueError(
            f"{checkpoint}: its stored training noise is not valid noise params "
            f"({exc.error_count()} errors, e.g. {exc.errors()[0]['msg']}); retrain it"
        ) from None


def load_predict_inputs(checkpoint: Path, unlabeled: Path, params: PseudoLabelParams) -> PredictInputs:
    """Load the teacher and the unlabeled pool, and check ``params.top_k`` against the teacher's classes.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for a
    checkpoint without its training noise (noised teacher only) or a ``top_k``
    above the number of classes.
    """
    teacher, spec, meta = load_classifier(checkpoint)
    noise = None
    if params.noised_teacher:
        noise = teacher_noise(checkpoint, meta)
        # rebuilt with its drop rates: they only act under model noise, so the un-noised teacher skips this
        teacher, spec, _ = load_classifier(checkpoint, drop_rate=noise.dropout, drop_path_rate=noise.stochastic_depth)
    pool = load_imageset(unlabeled)
    k, classes = params.top_k, spec.num_classes
    if k is not None and k > classes:  # checked before the (long) prediction
        raise ValueError(f"pseudo_labels.top_k: got {k}; the teacher has {classes} classes (1..{classes})")
    return PredictInputs(teacher, noise, pool)


def predict_pseudo_labels(
    inputs: PredictInputs, out: Path, params: PseudoLabelParams, device: torch.device, seed: int
) -> dict[str, Any]:
    """Label every pool image with the teacher's softmax at ``params.temperature``; write shards to ``out``.

    ``seed`` seeds torch's global generator, which the noised teacher's
    augmentation and dropout draw from; the un-noised teacher draws nothing.
    Returns the metrics of :func:`~noisy_student.pseudo_labels.shards.predict_metrics`.
    """
    start = time.perf_counter()
    torch.manual_seed(seed)
    model = inputs.teacher.to(device)
    pool = inputs.pool
    pred, conf = write_prediction_shards(
        pool, _probs_chunks(model, pool, inputs.noise, params, device), out, params.shard_size, params.top_k
    )
    return predict_metrics(pool.labels, pred, conf, round(time.perf_counter() - start, 2))


def _probs_chunks(
    model: ImageClassifier, pool: ImageSet, noise: NoiseParams | None, params: PseudoLabelParams, device: torch.device
) -> Iterator[np.ndarray]:
    """``(n, K)`` float32 softmax of consecutive pool chunks of whole batches.

    Streamed so only one chunk's logits and probabilities are in memory. The
    chunks are whole batches at the same offsets as one call over the pool
    (same batches, same RNG draws when noised), so the output does not depend
    on the chunk size.
    """
    augment = BatchAugment(noise) if noise is not None else None
    images = images_tensor(pool.images)
    chunk = params.batch_size * max(1, params.shard_size // params.batch_size)
    for start in tqdm(range(0, len(pool), chunk), desc="predict", unit="chunk", mininterval=5.0):
        logits = predict_logits(
            model,
            images[start : start + chunk],
            params.batch_size,
            device,
            progress=False,
            augment=augment,
            model_noise=noise is not None,
        )
        yield softmax(logits, params.temperature)
