"""One on-disk format, two residencies: the same prepared tars trained in memory and streamed.

A micro prepared folder (``labeled.wds``, ``unlabeled.wds``, ``test.wds`` written by
:func:`~noisy_student.data.save_imageset`) and a ``selected.parquet`` of pseudo labels with copies go
through the stage's own assembly (:func:`~noisy_student.training.sources.student_inputs` with
``data.residency`` memory or stream, its ``train`` source). One
epoch of either source's :class:`~noisy_student.training.batches.Batches` must hand out the same
multiset of (image, target) pairs: every labeled image once with its smoothed one-hot target, every
selected pool image ``copies`` times with its pseudo label.

Exact resume is tested per residency where the runs are: in memory by
``tests/test_training.py::test_interrupted_run_resumes_to_the_same_weights``, streamed by
``tests/test_training_streams.py::test_an_interrupted_streamed_run_resumes_to_the_same_weights``
(and its two-rank twin), both bit for bit.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from noisy_student.config import DataParams, FilterParams, OptimParams, Params, StudentNoiseParams, StudentParams
from noisy_student.data import ImageSet, save_imageset
from noisy_student.data.wds import read_info
from noisy_student.distributed import World
from noisy_student.evaluation import images_tensor
from noisy_student.pseudo_labels.shards import prediction_table
from noisy_student.training.batches import BatchPlan, TrainData, TrainSource, one_hot
from noisy_student.training.sources import student_inputs
from noisy_student.training.streams import StreamedTrainData

K = 3  # classes
N_LABELED, N_UNLABELED, N_TEST, SHARD = 48, 40, 8, 12  # 4 labeled tars, 4 pool tars (the last one shorter)
BATCH, RATIO = 8, 2  # 48 / 8 = 6 steps an epoch, 16 pseudo-labeled images a step: 96 an epoch
SELECTED = np.arange(24)  # the pool rows selected: all of the first two tars
COPIES = np.tile([2, 3, 5, 6], 6)  # 96 samples per pass: an epoch draws exactly one pass
SMOOTHING = 0.1
STEPS = N_LABELED // BATCH
assert COPIES.sum() == STEPS * BATCH * RATIO and len(COPIES) == len(SELECTED)

NOISE = StudentNoiseParams(randaugment_num_ops=1, randaugment_magnitude=5, dropout=0.1, stochastic_depth=0.1)


def _imageset(n: int, seed: int, first_id: int, labeled: bool) -> ImageSet:
    """``n`` random RGB 16x16 images (their bytes name them) with ids ``first_id ..``."""
    g = np.random.default_rng(seed)
    images = g.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)
    labels = np.arange(n) % K if labeled else np.full(n, -1)
    return ImageSet(images, labels, first_id + np.arange(n), np.full(n, "micro"))


class Prepared:
    """A prepared folder of three tar splits and a ``selected.parquet`` with copies (full distributions)."""

    def __init__(self, root: Path) -> None:
        self.folder, self.selected = root / "prepared", root / "selected.parquet"
        self.labeled = _imageset(N_LABELED, 0, 0, labeled=True)
        self.pool = _imageset(N_UNLABELED, 1, 1000, labeled=False)
        save_imageset(self.folder / "labeled.wds", self.labeled, SHARD)
        save_imageset(self.folder / "unlabeled.wds", self.pool, SHARD)
        save_imageset(self.folder / "test.wds", _imageset(N_TEST, 2, 5000, labeled=True), SHARD)
        tars = read_info(self.folder / "unlabeled.wds").filenames
        self.probs = np.random.default_rng(3).dirichlet(np.ones(K), size=len(SELECTED)).astype(np.float32)
        parts = []
        for j in sorted(set(SELECTED // SHARD)):
            mine = SELECTED // SHARD == j
            rows = SELECTED[mine]
            table = prediction_table(
                self.pool.ids[rows], self.pool.source[rows], self.pool.labels[rows], self.probs[mine], tars[j]
            )
            parts.append(table.append_column("copies", pa.array(COPIES[mine].astype(np.int64))))
        pq.write_table(pa.concat_tables(parts), self.selected)

    def source(self, residency: str, workers: int = 0) -> TrainSource:
        """What a student of this folder trains on with ``data.residency: residency``, as the stage builds it."""
        params = Params(
            data=DataParams(residency=residency, workers=workers),
            student=StudentParams(optim=OptimParams(label_smoothing=SMOOTHING)),
            filter=FilterParams(confidence_threshold=0.0),
        )
        inputs, stats = student_inputs(self.folder, params, self.selected, K)
        assert stats["pseudo_labeled_rows"] == COPIES.sum() and stats["pseudo_labeled_unique"] == len(SELECTED)
        return inputs.train

    def expected(self) -> tuple[Counter[tuple[bytes, bytes]], Counter[tuple[bytes, bytes]]]:
        """One epoch's (image, target) pairs from the arrays written: labeled ones once, selected ``copies`` times."""
        images, targets = images_tensor(self.labeled.images), one_hot(self.labeled.labels, K, SMOOTHING)
        labeled = Counter(_pairs(images, targets))
        pool = images_tensor(self.pool.images[SELECTED])
        pseudo = Counter[tuple[bytes, bytes]]()
        for pair, copies in zip(_pairs(pool, torch.from_numpy(self.probs)), COPIES.tolist(), strict=True):
            pseudo[pair] += copies
        return labeled, pseudo


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    return Prepared(tmp_path_factory.mktemp("residency"))


def _pairs(images: torch.Tensor, targets: torch.Tensor) -> list[tuple[bytes, bytes]]:
    """uint8 ``(B, C, H, W)`` images and float32 ``(B, K)`` targets -> one (image bytes, target bytes) per row."""
    assert images.dtype == torch.uint8 and targets.dtype == torch.float32
    return [(x.contiguous().numpy().tobytes(), t.numpy().tobytes()) for x, t in zip(images, targets, strict=True)]


def _one_epoch(source: TrainSource) -> tuple[Counter[tuple[bytes, bytes]], Counter[tuple[bytes, bytes]]]:
    """The labeled and pseudo-labeled (image, target) pairs of epoch 0 of one process's batches."""
    plan = BatchPlan(BATCH, BATCH * RATIO)
    batches = source.batches(plan, World(), seed=0, device=torch.device("cpu"))
    labeled, pseudo = Counter[tuple[bytes, bytes]](), Counter[tuple[bytes, bytes]]()
    try:
        batches.begin_epoch(0, 0)
        for _ in range(STEPS):
            lab, unl = batches.next()
            assert lab is not None and unl is not None
            assert lab[0].shape == (BATCH, 3, 16, 16) and unl[0].shape == (BATCH * RATIO, 3, 16, 16)
            labeled.update(_pairs(*lab))
            pseudo.update(_pairs(*unl))
    finally:
        batches.close()
    return labeled, pseudo


@pytest.mark.parametrize("workers", [0, 2])
def test_memory_and_streamed_epochs_see_the_same_image_target_pairs(prepared: Prepared, workers: int) -> None:
    memory, streamed = prepared.source("memory"), prepared.source("stream", workers)
    assert isinstance(memory, TrainData) and isinstance(streamed, StreamedTrainData)
    assert memory.num_labeled == streamed.num_labeled == N_LABELED
    assert memory.has_unlabeled and streamed.has_unlabeled
    labeled, pseudo = prepared.expected()
    assert sum(labeled.values()) == N_LABELED and sum(pseudo.values()) == COPIES.sum()

    memory_labeled, memory_pseudo = _one_epoch(memory)
    streamed_labeled, streamed_pseudo = _one_epoch(streamed)
    # every labeled image once, with its smoothed one-hot target
    assert memory_labeled == labeled
    assert streamed_labeled == labeled
    # every selected pool image `copies` times, with its pseudo label (and no unselected image)
    assert memory_pseudo == pseudo
    assert streamed_pseudo == pseudo
