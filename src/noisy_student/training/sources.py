"""What the teacher and student stages train on, from ``prepare``'s folder of tar splits.

``data.residency`` decides where the images live while a model trains, never how they are stored:
``memory`` decodes the labeled split (and the student's selected pool images) once into uint8 host
tensors (:class:`TrainingInputs` with ``labeled``); ``stream`` reads the tars while training
(:class:`~noisy_student.training.streams.StreamedTrainData`); ``auto`` is memory when the labeled
and unlabeled splits decode to at most ``data.memory_budget_gb``. Either way the student's pseudo
labels join the pool by image id, and the test set is held in memory (it is evaluated by rank 0
alone, which timm's wds reader cannot do without duplicates).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from noisy_student.config import DataParams, Params
from noisy_student.data import ImageSet, class_count, load_imageset
from noisy_student.data.wds import check_tars, iter_tar, read_info, split_path
from noisy_student.evaluation import images_tensor
from noisy_student.pseudo_labels.targets import SelectedImages, student_targets
from noisy_student.training.recipe import TrainingInputs, channel_stats
from noisy_student.training.streams import StreamedTrainData

# decoded bytes of labeled images the normalization is computed from: all of a small split (the same
# numbers the in-memory path computes), a strided subset of whole tars of a large one
STATS_BYTES = 512 * 2**20


def decoded_bytes(folder: Path) -> int:
    """What a split folder takes decoded into memory: samples x the first image's bytes."""
    info = read_info(folder)
    first = next(iter_tar(info.paths(folder)[0])).image
    return first.nbytes * info.num_samples


def residency(prepared: Path, data: DataParams) -> Literal["memory", "stream"]:
    """``data.residency``, with ``auto`` resolved: memory when labeled + unlabeled decode to at most the budget."""
    if data.residency != "auto":
        return data.residency
    splits = [split_path(prepared, "labeled"), split_path(prepared, "unlabeled")]
    total = sum(decoded_bytes(folder) for folder in splits if folder.exists())
    return "memory" if total <= data.memory_budget_gb * 2**30 else "stream"


def shard_channel_stats(folder: Path, max_bytes: int = STATS_BYTES) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std in 0..1 of the images of a ``.wds`` split folder, as :func:`channel_stats` computes.

    Every image when the split decodes to at most ``max_bytes``; otherwise every k-th tar (whole
    tars, spread over the split so no run of classes dominates) up to about ``max_bytes``: an
    estimate, which is all a normalization needs.
    """
    tars = read_info(folder).paths(folder)
    stride = max(1, -(-decoded_bytes(folder) // max_bytes))
    images = [sample.image for tar in tars[::stride] for sample in iter_tar(tar)]
    return channel_stats(np.stack(images))


def teacher_inputs(prepared: Path, data: DataParams, smoothing: float) -> TrainingInputs:
    """The teacher's labeled + test data from ``prepare``'s folder ``prepared`` (``smoothing``: its label smoothing)."""
    test = load_imageset(split_path(prepared, "test"))
    labeled_path = split_path(prepared, "labeled")
    if residency(prepared, data) == "memory":
        labeled = load_imageset(labeled_path)
        return TrainingInputs.in_memory(labeled, test, class_count(prepared, labeled.labels), smoothing)
    return _streamed(labeled_path, test, class_count(prepared, test.labels), data.workers, smoothing)


def student_inputs(
    prepared: Path, params: Params, selected: Path, num_classes: int
) -> tuple[TrainingInputs, dict[str, Any]]:
    """The student's labeled + pseudo-labeled + test data, and the pseudo-label stats the stage reports.

    ``params``: the iteration's (``data`` residency, the student's label smoothing for labeled images,
    ``pseudo_labels.mode``, ``filter.confidence_threshold``). In memory: the selected pool images (found
    by id) repeated by their copies, as host tensors; streamed: the selected ids with their tars,
    targets and copies, read from the unlabeled tars while training.
    """
    data, smoothing = params.data, params.student.optim.label_smoothing
    mode, threshold = params.pseudo_labels.mode, params.filter.confidence_threshold
    test = load_imageset(split_path(prepared, "test"))
    labeled_path, unlabeled_path = split_path(prepared, "labeled"), split_path(prepared, "unlabeled")
    chosen, stats = student_targets(selected, num_classes, mode, threshold=threshold)
    if residency(prepared, data) == "memory":
        labeled, pool = load_imageset(labeled_path), load_imageset(unlabeled_path)
        rows, targets = chosen.rows(pool.ids, selected)
        pseudo = (images_tensor(pool.images[rows]), torch.from_numpy(targets))
        return TrainingInputs.in_memory(labeled, test, num_classes, smoothing, pseudo), stats
    return _streamed(labeled_path, test, num_classes, data.workers, smoothing, unlabeled_path, chosen), stats


def _streamed(
    labeled: Path,
    test: ImageSet,
    num_classes: int,
    workers: int,
    smoothing: float,
    unlabeled: Path | None = None,
    pseudo: SelectedImages | None = None,
) -> TrainingInputs:
    """The labeled split (and a student's selected pool images) streamed, with the labeled split's
    normalization (one value per channel: the channel count)."""
    info = read_info(labeled)
    check_tars(labeled)  # before training: timm's reader would skip a damaged tar and repeat others
    if unlabeled is not None and pseudo is not None:  # joined by (id, tar): keys need only be unique per tar
        check_tars(unlabeled, sorted(set(pseudo.shards.tolist())), unique_keys=False)
    mean, std = shard_channel_stats(labeled)
    train = StreamedTrainData(
        labeled, info.num_samples, len(mean), num_classes, smoothing, workers, info.split, unlabeled, pseudo
    )
    return TrainingInputs(train, test, num_classes, (mean, std), len(mean))
