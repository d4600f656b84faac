"""The teacher labels the unlabeled pool, shard by shard: load it (with its training noise for the Table 6 ablation),
label each input shard into its output file, skip the shards already written, merge the metrics.

The paper's teacher is not noised when it labels (eval mode, clean images).
``pseudo_labels.noised_teacher`` is the ablation that labels with the noise
the teacher was trained with, read from its checkpoint: RandAugment + crop +
flip on the images, dropout and stochastic depth in the model.

The paper labels its 130M-image pool in independent shard jobs; so does this. Input shard ``j`` (the
j-th tar of ``unlabeled.wds``, :class:`~noisy_student.pseudo_labels.shards.TarShard`) becomes output file
``part-<j:05d>.parquet`` (with the tar's name, ``shard``, in every row). A :class:`ShardJob` says
which shards one process labels: ``--shard i/N`` those with ``j % N == i``; under ``torchrun``
(``noisy_student.distributed``) rank ``r`` of ``W`` takes every ``W``-th of them from the ``r``-th. A
shard whose file already holds what this run would write
(:func:`~noisy_student.pseudo_labels.shards.shard_is_current`) is skipped, so jobs run in any order,
concurrently into one folder, and rerun after a kill. The run that merges (no ``--shard``; rank 0 under
``torchrun``, once every rank is done) clears the folder of anything else and computes the metrics from the
files, so they cover the shards other jobs wrote too.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import torch.distributed as dist
from pydantic import ValidationError
from tqdm.auto import tqdm

from noisy_student.config import NoiseParams, PseudoLabelParams
from noisy_student.evaluation import images_tensor, predict_logits
from noisy_student.models import ImageClassifier, load_classifier
from noisy_student.noise import BatchAugment
from noisy_student.pseudo_labels.shards import (
    KEY_FORMAT,
    TarPool,
    TarShard,
    file_md5,
    load_pool,
    prediction_table,
    remove_other_files,
    shard_is_current,
    shard_metrics,
    shard_path,
    write_shard,
)
from noisy_student.pseudo_labels.targets import softmax


@dataclass
class PredictInputs:
    """Everything ``predict`` reads, loaded and checked before any work (or MLflow run) starts.

    ``pool``: the unlabeled images as a folder of tars (``unlabeled.wds``: its ``_info.json`` read, the
    tars read one at a time while labelling).
    ``noise`` is the teacher's training noise when it labels noised
    (``pseudo_labels.noised_teacher``), else None; ``teacher_md5`` the checkpoint file's md5
    (part of every shard's content key).
    """

    teacher: ImageClassifier
    noise: NoiseParams | None
    pool: TarPool
    teacher_md5: str


@dataclass(frozen=True)
class ShardJob:
    """Which input shards one process labels, and whether it merges the metrics.

    ``part``: ``(i, N)`` from ``--shard i/N`` (the shards with ``j % N == i``), None for all;
    ``rank`` / ``world``: this process among ``torchrun``'s, which split ``part``'s shards round robin.
    """

    part: tuple[int, int] | None = None
    rank: int = 0
    world: int = 1

    def shards(self, count: int) -> list[int]:
        """Indices of the input shards (of ``count``) this process labels."""
        i, n = self.part or (0, 1)
        return list(range(i, count, n))[self.rank :: self.world]

    @property
    def merges(self) -> bool:
        """Whether this process writes the metrics: a run without ``--shard``, rank 0 under ``torchrun``."""
        return self.part is None and self.rank == 0


@dataclass
class PredictResult:
    """What a run did: shards labelled (``written``) and found already written (``skipped``), images labelled.

    Counted over every rank under ``torchrun``. ``metrics``: the metrics JSON, only from the run that merges.
    """

    written: int
    skipped: int
    images: int
    metrics: dict[str, Any] | None = None


_SHARD = re.compile(r"([0-9]+)/([0-9]+)")


def parse_shard(text: str) -> tuple[int, int]:
    """``--shard i/N`` -> ``(i, N)``: job ``i`` of ``N`` independent jobs, ``0 <= i < N``; ``ValueError`` otherwise."""
    match = _SHARD.fullmatch(text.strip())
    if match and int(match[1]) < int(match[2]):
        return int(match[1]), int(match[2])
    raise ValueError(
        f"--shard: got '{text}'; expected i/N, job i of N independent jobs: two integers with 0 <= i < N "
        "(e.g. --shard 0/4 ... --shard 3/4)"
    )


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

    ``unlabeled``: a split folder (WebDataset tars + ``_info.json``; only the listing is read here).
    Raises ``FileNotFoundError`` for a missing file, folder or listed tar and ``ValueError`` for a
    checkpoint without its training noise
    (noised teacher only), a ``top_k`` above the number of classes or an unreadable ``_info.json``.
    """
    teacher, spec, meta = load_classifier(checkpoint)
    teacher_md5 = file_md5(checkpoint)
    noise = None
    if params.noised_teacher:
        noise = teacher_noise(checkpoint, meta)
        # rebuilt with its drop rates: they only act under model noise, so the un-noised teacher skips this
        teacher, spec, _ = load_classifier(checkpoint, drop_rate=noise.dropout, drop_path_rate=noise.stochastic_depth)
    pool = load_pool(unlabeled)
    k, classes = params.top_k, spec.num_classes
    if k is not None and k > classes:  # checked before the (long) prediction
        raise ValueError(f"pseudo_labels.top_k: got {k}; the teacher has {classes} classes (1..{classes})")
    return PredictInputs(teacher, noise, pool, teacher_md5)


def predict_pseudo_labels(
    inputs: PredictInputs,
    out: Path,
    params: PseudoLabelParams,
    device: torch.device,
    seed: int,
    job: ShardJob = ShardJob(),
    amp_dtype: torch.dtype | None = None,
) -> PredictResult:
    """Label ``job``'s input shards with the teacher's softmax at ``params.temperature`` into ``out``.

    Each shard whose output file is not already current (:func:`shard_key`) is labelled and written
    atomically; ``amp_dtype`` autocasts the teacher (``devices.inference_dtype``: CUDA only). Under
    ``torchrun`` every rank then waits for the others (an all-reduce of the counts). The run that
    merges (``job.merges``) checks every shard, removes everything else from ``out`` and returns the
    metrics of :func:`~noisy_student.pseudo_labels.shards.shard_metrics` with ``shards``,
    ``shards_written`` and ``shards_skipped``. Whichever jobs or ranks label them, the files are the
    same, byte for byte (each tar is labelled on its own: :func:`label_shard`).

    ``seed`` seeds the noised teacher's augmentation and dropout, per shard (:func:`shard_seed`);
    the un-noised teacher draws nothing.
    """
    start = time.perf_counter()
    model = inputs.teacher.to(device)
    shards = inputs.pool.shards
    mine = job.shards(len(shards))
    out.mkdir(parents=True, exist_ok=True)
    counts = [0, 0, 0]  # written, skipped, images labelled
    desc = "predict" if job.world == 1 else f"predict rank {job.rank}/{job.world}"

    def key(j: int) -> dict[str, Any]:
        return shard_key(inputs, shards[j], params, seed, amp_dtype)

    for j in tqdm(mine, desc=desc, unit="shard", mininterval=5.0):
        shard, path, content = shards[j], shard_path(out, j), key(j)
        if shard_is_current(path, content, len(shard)):
            counts[1] += 1
            continue
        write_shard(path, label_shard(model, inputs.noise, shard, params, device, seed, amp_dtype), content)
        counts[0] += 1
        counts[2] += len(shard)
    if job.world > 1:  # every rank waits here until all have written their shards
        total = torch.tensor(counts, dtype=torch.int64, device=device if device.type == "cuda" else "cpu")
        dist.all_reduce(total)
        counts = total.tolist()
    result = PredictResult(*counts)
    if not job.merges:
        return result
    others = sorted(set(range(len(shards))) - set(mine))  # written by the other ranks
    missing = [j for j in others if not shard_is_current(shard_path(out, j), key(j), len(shards[j]))]
    if missing:
        raise RuntimeError(f"{out}: shards {missing} are missing or stale after every rank finished")
    remove_other_files(out, len(shards))
    files = [shard_path(out, j) for j in range(len(shards))]
    result.metrics = shard_metrics(files, round(time.perf_counter() - start, 2), result.images)
    result.metrics.update(shards=len(shards), shards_written=result.written, shards_skipped=result.skipped)
    return result


def shard_key(
    inputs: PredictInputs, shard: TarShard, params: PseudoLabelParams, seed: int, amp_dtype: torch.dtype | None
) -> dict[str, Any]:
    """The content key of ``shard``'s output file: everything its bytes depend on.

    The input (:meth:`~noisy_student.pseudo_labels.shards.TarShard.content`: the tar's name, sample count
    and file md5), the teacher checkpoint's md5, the
    pseudo-label params that change the numbers (temperature, top_k, noised_teacher, batch_size: the
    batches), the autocast dtype and, for the noised teacher only, the seed. A file whose stored key
    differs is rewritten.
    """
    noised = inputs.noise is not None
    return {
        "format": KEY_FORMAT,
        **shard.content(),
        "teacher_md5": inputs.teacher_md5,
        "temperature": params.temperature,
        "top_k": params.top_k,
        "noised_teacher": noised,
        "batch_size": params.batch_size,
        "seed": seed if noised else None,
        "autocast": "float32" if amp_dtype is None else str(amp_dtype).removeprefix("torch."),
    }


def shard_seed(seed: int, index: int) -> int:
    """The seed of input shard ``index``'s random draws: a function of ``(seed, index)`` only.

    So a noised shard's augmentation and dropout do not depend on which job labelled it, nor on
    which shards it labelled before. (Before shards were independent jobs, one stream ran over the
    whole pool: the noised teacher's labels differ from that version's; the un-noised ones do not.)
    """
    return int.from_bytes(hashlib.sha256(f"predict shard {seed} {index}".encode()).digest()[:8], "little")


def label_shard(
    model: ImageClassifier,
    noise: NoiseParams | None,
    shard: TarShard,
    params: PseudoLabelParams,
    device: torch.device,
    seed: int,
    amp_dtype: torch.dtype | None,
) -> pa.Table:
    """The output table of one input shard: its rows and the teacher's softmax at ``params.temperature``.

    Batches are the tar's own (:meth:`~noisy_student.pseudo_labels.shards.TarShard.batches`), from its
    first sample: the batches of one pass over the whole pool when ``data.wds_shard_size`` is a
    multiple of ``batch_size``. ``noise`` labels with the teacher's training noise, drawn from
    :func:`shard_seed` in batch order.
    """
    torch.manual_seed(shard_seed(seed, shard.index))
    augment = BatchAugment(noise) if noise is not None else None
    logits, batches = [], []
    for batch in shard.batches(params.batch_size):
        images = images_tensor(batch.images)
        out = predict_logits(
            model,
            images,
            len(images),  # one batch per call: the shard's batches, not predict_logits', set the boundaries
            device,
            progress=False,
            augment=augment,
            model_noise=noise is not None,
            amp_dtype=amp_dtype,
        )
        logits.append(out)
        batches.append(batch)
    probs = softmax(np.concatenate(logits), params.temperature)

    def column(name: str) -> np.ndarray:
        return np.concatenate([getattr(b, name) for b in batches])

    # label: ground truth for reporting only; top_k=None keeps the full distribution
    return prediction_table(column("ids"), column("source"), column("labels"), probs, shard.file, params.top_k)
