"""What the teacher and student stages train on, loaded by ``data.format`` from ``prepare``'s folder.

``npz``: the labeled set and the pseudo-labeled rows as host tensors (:class:`TrainingInputs` with
``labeled``). ``wds``: the shard folders and the keyed pseudo labels, streamed while training
(:class:`~noisy_student.training.streams.StreamedTrainData`). The test set is held in memory either
way (it is evaluated by rank 0 alone, which timm's wds reader cannot do without duplicates).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from noisy_student.data import class_count, load_imageset
from noisy_student.data.wds import iter_tar, read_info, split_path
from noisy_student.evaluation import images_tensor
from noisy_student.pseudo_labels import student_targets
from noisy_student.pseudo_labels.keyed import keyed_student_targets
from noisy_student.training.recipe import TrainingInputs, channel_stats
from noisy_student.training.streams import StreamedTrainData

# decoded bytes of labeled images the normalization is computed from: all of a small split (the same
# numbers the npz path computes), a strided subset of whole tars of a large one
STATS_BYTES = 512 * 2**20


def shard_channel_stats(folder: Path, max_bytes: int = STATS_BYTES) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std in 0..1 of the images of a ``.wds`` split folder, as :func:`channel_stats` computes.

    Every image when the split decodes to at most ``max_bytes``; otherwise every k-th tar (whole
    tars, spread over the split so no run of classes dominates) up to about ``max_bytes``: an
    estimate, which is all a normalization needs.
    """
    info = read_info(folder)
    tars = info.paths(folder)
    first = next(iter_tar(tars[0])).image
    total = first.nbytes * info.num_samples
    stride = max(1, -(-total // max_bytes))
    images = [sample.image for tar in tars[::stride] for sample in iter_tar(tar)]
    return channel_stats(np.stack(images))


def teacher_inputs(prepared: Path, data_format: Literal["npz", "wds"], workers: int) -> TrainingInputs:
    """The teacher's labeled + test data from ``prepare``'s folder ``prepared``."""
    test = load_imageset(split_path(prepared, "test", data_format))
    labeled_path = split_path(prepared, "labeled", data_format)
    if data_format == "npz":
        labeled = load_imageset(labeled_path)
        return TrainingInputs(labeled, test, class_count(prepared, labeled.labels))
    streamed, stats = _streamed_labeled(labeled_path, class_count(prepared, test.labels), workers)
    return TrainingInputs(None, test, streamed.num_classes, streamed=streamed, normalization=stats)


def student_inputs(
    prepared: Path,
    data_format: Literal["npz", "wds"],
    workers: int,
    selected: Path,
    num_classes: int,
    mode: Literal["soft", "hard"],
    threshold: float,
) -> tuple[TrainingInputs, dict[str, Any]]:
    """The student's labeled + pseudo-labeled + test data, and the pseudo-label stats the stage reports.

    ``npz``: the selected pool rows repeated by their copies, as host tensors; ``wds``: the selected
    keys with their targets and copies, joined with the unlabeled tars while training.
    """
    test = load_imageset(split_path(prepared, "test", data_format))
    labeled_path = split_path(prepared, "labeled", data_format)
    unlabeled_path = split_path(prepared, "unlabeled", data_format)
    if data_format == "npz":
        labeled, pool = load_imageset(labeled_path), load_imageset(unlabeled_path)
        rows, targets, stats = student_targets(selected, pool, num_classes, mode, threshold=threshold)
        images = images_tensor(pool.images[rows])
        return TrainingInputs(labeled, test, num_classes, images, torch.from_numpy(targets)), stats
    keyed, stats = keyed_student_targets(selected, num_classes, mode, threshold=threshold)
    labeled, norm = _streamed_labeled(labeled_path, num_classes, workers)
    streamed = replace(labeled, unlabeled=unlabeled_path, pseudo=keyed)
    return TrainingInputs(None, test, num_classes, streamed=streamed, normalization=norm), stats


def _streamed_labeled(
    folder: Path, num_classes: int, workers: int
) -> tuple[StreamedTrainData, tuple[tuple[float, ...], tuple[float, ...]]]:
    """The labeled split as streamed data, and its normalization (one value per channel: the channel count)."""
    info = read_info(folder)
    mean, std = shard_channel_stats(folder)
    channels = len(mean)
    data = StreamedTrainData(folder, info.num_samples, channels, num_classes, workers=workers, labeled_split=info.split)
    return data, (mean, std)
