"""Training batches streamed from the prepared WebDataset tars (``data.residency: stream``) instead of memory.

The labeled images come through timm's wds reader (``create_dataset("wds/<split>", ...)``) in a
torch ``DataLoader`` with ``workers`` processes per rank; timm shuffles the tars with a seed shared
by every rank, gives each of the ``ranks x workers`` readers its own tars (no overlap) and shuffles
samples in a buffer. The pseudo-labeled images are read with webdataset from the unlabeled tars that
hold a selected image (:class:`~noisy_student.pseudo_labels.targets.SelectedImages`, joined by id: a
sample's key is its zero-padded id), each selected image
``copies`` times per pass, with its dense target row. Epochs are still counted on the labeled set:
``num_labeled // batch_size`` steps, as for the in-memory :class:`~noisy_student.training.batches.TrainData`.

Resume (``optim.checkpoint_steps``) is exact. Every epoch's labeled order is a function of
``(seed, epoch, rank, workers)`` only (the reader is built afresh each epoch), so a resumed run
rebuilds the saved epoch's stream and skips the batches already trained on; the pseudo-labeled
stream is endless in passes whose order is a function of ``(seed, pass, rank, workers)``, and its
state is ``(pass, samples consumed)`` per rank. The DataLoader hands batches out round-robin over
its workers in a fixed order, so this holds with ``workers > 0`` too (tested with 0 and 2). Skipping
re-reads and decodes the skipped part: resuming costs up to one epoch's labeled reading and one
pass's pseudo-labeled reading. A resume with another ``workers`` count continues, but its
remaining epoch and pass are not the ones an uninterrupted run would have read (a warning says so).

Coverage: with the tars split evenly over the ``ranks x workers`` readers, every labeled image is
read once per epoch. timm makes every reader yield the same number of samples
(``ceil(N / readers)``, rounded up to whole batches), so with uneven tars some images repeat and some
wait for the next epoch. A rank's pseudo-labeled pass covers its tars (tars of pass ``p`` are shared
out after a shuffle seeded by ``(seed, p)``); ranks move to their next pass independently.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from timm.data import create_dataset
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm.auto import tqdm

from noisy_student.data.wds import INFO_FILE, iter_tar, read_info, sample_key
from noisy_student.distributed import World
from noisy_student.pseudo_labels.targets import SelectedImages
from noisy_student.training.batches import BatchPlan, HostBatch, one_hot

PIL_MODES = {1: "L", 3: "RGB"}
# random streams of one run, mixed with its seed so the two never share a generator
_LABELED, _PSEUDO = 1, 2


@dataclass(frozen=True)
class StreamedTrainData:
    """Training data read from ``.wds`` shard folders while training (the in-memory twin is ``TrainData``).

    ``labeled``: the labeled shard folder (its ``_info.json`` lists split ``labeled_split``'s tars);
    ``num_labeled``: its sample count, which sets the steps per epoch; ``channels``: 1 (grey, PIL
    mode ``L``) or 3 (RGB); labeled targets are one-hot over ``num_classes`` with ``label_smoothing``.
    ``unlabeled`` + ``pseudo``: the unlabeled shard folder and the selected images with their targets and
    copies (a student; None for a teacher). ``workers``: DataLoader processes per rank for each of the
    two streams (0: read in the training process). ``shuffle_buffer``: samples each reader shuffles
    in (decoded images for the pseudo-labeled stream, so it bounds memory: buffer x image bytes).
    """

    labeled: Path
    num_labeled: int
    channels: int
    num_classes: int
    label_smoothing: float = 0.0
    workers: int = 0
    labeled_split: str = "labeled"
    unlabeled: Path | None = None
    pseudo: SelectedImages | None = None
    shuffle_buffer: int = 2048

    def __post_init__(self) -> None:
        if self.channels not in PIL_MODES:
            raise ValueError(f"StreamedTrainData.channels must be 1 or 3, got {self.channels}")
        if self.num_labeled < 1:
            raise ValueError(f"StreamedTrainData.num_labeled must be >= 1, got {self.num_labeled} ({self.labeled})")
        if self.workers < 0 or self.shuffle_buffer < 1:
            raise ValueError(f"workers must be >= 0 and shuffle_buffer >= 1, got {self.workers}, {self.shuffle_buffer}")
        if (self.unlabeled is None) != (self.pseudo is None):
            raise ValueError("StreamedTrainData needs unlabeled (the shard folder) and pseudo (the images), or neither")

    @property
    def has_unlabeled(self) -> bool:
        return self.pseudo is not None and len(self.pseudo) > 0

    def batches(self, plan: BatchPlan, world: World, seed: int, device: torch.device) -> StreamedBatches:
        return StreamedBatches(self, plan, world, seed, pin_memory=device.type == "cuda")

    def labeled_only(self) -> StreamedTrainData:
        return replace(self, unlabeled=None, pseudo=None)

    def labeled_tars(self) -> list[str]:
        """The labeled split's tar names, in ``_info.json`` order."""
        return list(read_info(self.labeled, self.labeled_split).filenames)

    def update_digest(self, digest: Any) -> None:
        """Feed what this data trains on into ``digest``, for resume keys: the labeled ``_info.json``, every tar
        read (name, size, modification time: rewritten shards give a new key without reading them), the
        pseudo labels (ids, tars, targets, copies), channels, classes and smoothing."""
        digest.update(json.dumps([self.num_labeled, self.channels, self.num_classes, self.label_smoothing]).encode())
        digest.update((self.labeled / INFO_FILE).read_bytes())
        tars = [(self.labeled, name) for name in self.labeled_tars()]
        if self.pseudo is not None and self.unlabeled is not None:
            tars += [(self.unlabeled, name) for name in sorted(set(self.pseudo.shards.tolist()))]
            for array in (self.pseudo.ids, self.pseudo.shards):
                digest.update("\n".join(map(str, array.tolist())).encode())
            digest.update(np.ascontiguousarray(self.pseudo.targets, dtype=np.float32).tobytes())
            digest.update(np.ascontiguousarray(self.pseudo.copies, dtype=np.int64).tobytes())
        for folder, name in tars:
            stat = (folder / name).stat()
            digest.update(f"{folder.name}/{name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())


def _mix(*values: int) -> int:
    """One 32-bit seed from several integers (run seed, purpose, epoch / pass, rank, reader)."""
    return int(np.random.SeedSequence([v & 0xFFFFFFFF for v in values]).generate_state(1)[0])


def image_tensor(image: Image.Image | np.ndarray) -> torch.Tensor:
    """A decoded image (PIL mode ``L`` / ``RGB``, or uint8 ``(H, W)`` / ``(H, W, 3)``) -> uint8 ``(C, H, W)``."""
    array = np.array(image)  # a writable copy: torch.from_numpy warns on PIL's read-only buffer
    if array.ndim == 2:
        return torch.from_numpy(array).unsqueeze(0)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def _reader_count(tars: int, world: World, workers: int, folder: Path) -> int:
    """The workers each rank can use: every reader (rank x worker) needs a tar of its own (timm's reader
    yields nothing for a reader without one, and its rank would run short of batches); fewer workers
    than asked when the tars are few."""
    if tars < world.size:
        raise ValueError(f"{folder} has {tars} tar(s) for {world.size} training processes: write smaller shards")
    if workers > tars // world.size:
        usable = tars // world.size
        tqdm.write(f"{folder}: {tars} tar(s) over {world.size} process(es) x {workers} workers; using {usable} workers")
        return usable
    return workers


def labeled_loader(
    data: StreamedTrainData, epoch: int, batch: int, seed: int, world: World, workers: int, pin_memory: bool = False
) -> DataLoader:
    """Epoch ``epoch``'s labeled batches of this rank: uint8 ``(batch, C, H, W)`` and int64 ``(batch,)`` classes.

    timm's wds reader (training mode: shard shuffle shared by the ranks, sample shuffle per reader) built
    afresh for the epoch, so the epoch's order depends on ``(seed, epoch, rank, workers)`` only. Yields at
    least ``num_labeled // (batch x ranks)`` batches.
    """
    dataset = create_dataset(
        f"wds/{data.labeled_split}",
        root=str(data.labeled),
        split=data.labeled_split,
        is_training=True,
        batch_size=batch,
        num_samples=data.num_labeled,
        seed=_mix(seed, _LABELED, epoch),
        input_img_mode=PIL_MODES[data.channels],
        transform=image_tensor,
        sample_shuffle_size=data.shuffle_buffer,
        sample_initial_size=data.shuffle_buffer,
    )
    dataset.set_epoch(epoch)
    dataset.set_loader_cfg(num_workers=workers)
    return DataLoader(
        dataset,
        batch_size=batch,
        num_workers=workers,
        drop_last=True,
        pin_memory=pin_memory,
        # the workers' seeds come from here, not from torch's global generator (augmentation draws from it)
        generator=torch.Generator().manual_seed(_mix(seed, _LABELED, epoch, world.rank)),
    )


class _PseudoPass(IterableDataset):
    """One pass of this rank's pseudo-labeled samples: ``(uint8 (C, H, W) image, int row of SelectedImages)``.

    The selected tars are shuffled with ``(seed, pass)`` (the same order on every rank) and dealt out to
    the ``ranks x workers`` readers; with fewer tars than readers every reader reads them all and keeps
    every ``readers``-th selected sample instead. A reader decodes each of its selected images once
    (:func:`~noisy_student.data.wds.iter_tar`, the data package's tar reader), emits it ``copies`` times
    and shuffles in webdataset's buffer of ``buffer`` samples (so repeats spread out), seeded by
    ``(seed, pass, reader)``. A selected image missing from its tar is an error.
    """

    def __init__(self, stream: PseudoStream, pass_: int) -> None:
        assert stream.data.unlabeled is not None
        self.folder, self.channels = stream.data.unlabeled, stream.data.channels
        self.seed, self.pass_, self.world, self.buffer = stream.seed, pass_, stream.world, stream.data.shuffle_buffer
        self.rows, self.shards, self.copies = stream.rows, stream.shards, stream.copies

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        reader, readers = self.world.rank * workers + worker, self.world.size * workers
        order = sorted(set(self.shards.tolist()))
        random.Random(_mix(self.seed, _PSEUDO, self.pass_)).shuffle(order)
        by_tar = len(order) >= readers
        mine = order[reader::readers] if by_tar else order
        expected = int(np.isin(self.shards, mine).sum()) if by_tar else len(self.rows)
        selected = self._selected(mine, reader, 1 if by_tar else readers, expected)
        shuffle_rng = random.Random(_mix(self.seed, _PSEUDO, self.pass_, reader))
        return iter(wds.shuffle(self.buffer, initial=self.buffer, rng=shuffle_rng)(self._repeated(selected)))

    def _selected(self, tars: list[str], reader: int, readers: int, expected: int) -> Iterator[tuple[np.ndarray, int]]:
        """The selected images with their rows; with ``readers > 1`` only every ``readers``-th, from ``reader``."""
        seen = 0

        def mine(key: str) -> bool:  # decides before decoding: other images are skipped undecoded
            nonlocal seen
            if key not in self.rows:
                return False
            seen += 1
            return (seen - 1) % readers == reader % readers

        for name in tars:
            for sample in iter_tar(self.folder / name, select=mine):
                channels = 1 if sample.image.ndim == 2 else sample.image.shape[-1]
                if channels != self.channels:
                    raise ValueError(
                        f"{self.folder / name}: sample {sample.key} has {channels} channel(s); expected "
                        f"{self.channels}, as the labeled split's images"
                    )
                yield sample.image, self.rows[sample.key]
        if seen != expected:
            raise ValueError(
                f"{self.folder}: tars {tars} hold {seen} of the {expected} selected images the pseudo labels put there"
            )

    def _repeated(self, selected: Iterator[tuple[np.ndarray, int]]) -> Iterator[tuple[torch.Tensor, int]]:
        for array, row in selected:
            image = image_tensor(array)
            for _ in range(int(self.copies[row])):
                yield image, row


class PseudoStream:
    """This rank's endless pseudo-labeled stream: passes over its selected images, each ``copies`` times.

    :meth:`take` returns uint8 ``(k, C, H, W)`` images and their float ``(k, K)`` targets; a batch may
    span two passes. The state is ``(pass, samples of it consumed)``: a new stream that loads it
    rebuilds the pass and skips that many samples.
    """

    def __init__(self, data: StreamedTrainData, batch: int, seed: int, world: World, workers: int) -> None:
        if data.pseudo is None or data.unlabeled is None:
            raise ValueError("PseudoStream needs StreamedTrainData.unlabeled and .pseudo")
        self.data, self.batch, self.seed, self.world, self.workers = data, batch, seed, world, workers
        self.targets = torch.from_numpy(np.ascontiguousarray(data.pseudo.targets, dtype=np.float32))
        # what the readers need, built once (not per pass): key -> row, each row's tar and copies
        self.rows = {sample_key(image_id): row for row, image_id in enumerate(data.pseudo.ids.tolist())}
        self.shards = np.asarray(data.pseudo.shards).astype(str)
        self.copies = np.asarray(data.pseudo.copies, dtype=np.int64)
        if len(self.rows) != len(data.pseudo):
            repeats = len(data.pseudo) - len(self.rows)
            raise ValueError(f"pseudo labels of {data.unlabeled}: {repeats} ids appear more than once")
        if (self.copies < 1).any():
            raise ValueError(f"pseudo labels for {data.unlabeled}: copies must be >= 1")
        self.pass_, self.consumed = 0, 0
        self._batches: Iterator[list[torch.Tensor]] | None = None
        self._chunk: tuple[torch.Tensor, torch.Tensor] | None = None  # a fetched batch not yet handed out

    def _open(self) -> None:
        """Start pass ``pass_`` and skip its ``consumed`` samples."""
        dataset = _PseudoPass(self, self.pass_)
        generator = torch.Generator().manual_seed(_mix(self.seed, _PSEUDO, self.pass_, self.world.rank))
        loader = DataLoader(dataset, batch_size=self.batch, num_workers=self.workers, generator=generator)
        self._batches, self._chunk = iter(loader), None
        skip = self.consumed
        while skip:
            part = self._pull(skip)
            if part is None:
                raise RuntimeError(f"{self.data.unlabeled}: pass {self.pass_} ended before its {self.consumed} samples")
            skip -= len(part[1])

    def _pull(self, k: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Up to ``k`` samples (images, rows) of the current pass; None at its end."""
        assert self._batches is not None
        if self._chunk is None:
            try:
                images, rows = next(self._batches)
            except StopIteration:
                return None
            self._chunk = (images, rows)
        images, rows = self._chunk
        self._chunk = (images[k:], rows[k:]) if len(rows) > k else None
        return images[:k], rows[:k]

    def take(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The next ``k`` images uint8 ``(k, C, H, W)`` and targets float ``(k, K)``."""
        images, rows = [], []
        while k > 0:
            if self._batches is None:
                self._open()
            part = self._pull(k)
            if part is None:
                if self.consumed == 0:
                    raise ValueError(
                        f"{self.data.unlabeled}: rank {self.world.rank} of {self.world.size} got no pseudo-labeled "
                        f"image in pass {self.pass_} ({len(self.targets)} selected images)"
                    )
                self.pass_, self.consumed, self._batches = self.pass_ + 1, 0, None
                continue
            images.append(part[0])
            rows.append(part[1])
            self.consumed += len(part[1])
            k -= len(part[1])
        row = torch.cat(rows)
        return torch.cat(images), self.targets[row]

    def state(self) -> dict[str, int]:
        return {"pass": self.pass_, "consumed": self.consumed}

    def load(self, state: dict[str, Any]) -> None:
        self.pass_, self.consumed, self._batches = int(state["pass"]), int(state["consumed"]), None


class StreamedBatches:
    """:class:`~noisy_student.training.batches.Batches` of a :class:`StreamedTrainData`: each rank reads
    ``1 / ranks`` of every global batch from its own tars (labeled: timm's reader, a fresh loader per
    epoch; pseudo-labeled: :class:`PseudoStream`). Its state is this rank's pseudo-labeled position."""

    def __init__(self, data: StreamedTrainData, plan: BatchPlan, world: World, seed: int, pin_memory: bool) -> None:
        self.data, self.plan, self.world, self.seed, self.pin_memory = data, plan, world, seed, pin_memory
        self.workers = data.workers
        self.labeled_workers = _reader_count(len(data.labeled_tars()), world, data.workers, data.labeled)
        self.pseudo = (
            PseudoStream(data, plan.unlabeled_batch // world.size, seed, world, data.workers)
            if data.has_unlabeled and plan.unlabeled_batch > 0
            else None
        )
        self._labeled: Iterator[list[torch.Tensor]] | None = None
        self._epoch = 0

    def begin_epoch(self, epoch: int, step: int) -> None:
        """Read epoch ``epoch``'s labeled stream from step ``step`` on (its first ``step`` batches skipped)."""
        self._labeled, self._epoch = None, epoch  # the last epoch's loader (and its workers) goes
        if not self.plan.labeled_in_batch:
            return  # Table 13's pretraining: epochs count labeled steps, no labeled image is read
        batch = self.plan.batch_size // self.world.size
        loader = labeled_loader(self.data, epoch, batch, self.seed, self.world, self.labeled_workers, self.pin_memory)
        self._labeled = iter(loader)
        for _ in range(step):
            self._next_labeled()

    def _next_labeled(self) -> HostBatch:
        assert self._labeled is not None, "begin_epoch() comes before next()"
        try:
            images, labels = next(self._labeled)
        except StopIteration:
            raise RuntimeError(
                f"{self.data.labeled} ran out of labeled batches in epoch {self._epoch + 1}: "
                f"num_labeled {self.data.num_labeled} is more than its tars hold"
            ) from None
        k = self.data.num_classes
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= k):
            raise ValueError(f"{self.data.labeled}: labeled classes {labels.tolist()}, expected 0..{k - 1}")
        return images, one_hot(labels.numpy(), k, smoothing=self.data.label_smoothing)

    def next(self) -> tuple[HostBatch | None, HostBatch | None]:
        labeled = self._next_labeled() if self.plan.labeled_in_batch else None
        unlabeled = self.pseudo.take(self.plan.unlabeled_batch // self.world.size) if self.pseudo else None
        return labeled, unlabeled

    def state_dict(self) -> dict[str, int]:
        return {"workers": self.workers, **(self.pseudo.state() if self.pseudo is not None else {})}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state.get("workers", self.workers)) != self.workers:
            tqdm.write(
                f"resuming with {self.workers} loader workers, saved with {state['workers']}: the rest of this epoch "
                "and pass read other images than the interrupted run would have"
            )
        if self.pseudo is not None:
            self.pseudo.load(state)

    def close(self) -> None:
        """Stop the loaders' worker processes."""
        self._labeled = None
        if self.pseudo is not None:
            self.pseudo._batches = None
