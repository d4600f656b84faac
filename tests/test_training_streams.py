"""Training from streamed WebDataset shards: the labeled and pseudo-labeled streams, the loop, resume.

Shard folders are written here with webdataset's TarWriter in the layout ``prepare`` writes
(``<split>-000000.tar`` ..., ``_info.json``; samples keyed ``f"{id:010d}"`` with ``png``, ``cls``,
``json``), so these tests do not depend on the data package's writer.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import webdataset as wds
from PIL import Image

from noisy_student import distributed
from noisy_student.config import ModelParams, OptimParams, StudentNoiseParams
from noisy_student.distributed import World
from noisy_student.models import create_classifier
from noisy_student.pseudo_labels.targets import SelectedImages
from noisy_student.seeds import seed_everything
from noisy_student.training import streams
from noisy_student.training.batches import BatchPlan, MemoryBatches, TrainData, batches_per_epoch, one_hot
from noisy_student.training.loop import train_classifier
from noisy_student.training.streams import PseudoStream, StreamedBatches, StreamedTrainData

NOISE = StudentNoiseParams(randaugment_num_ops=1, randaugment_magnitude=5, dropout=0.1, stochastic_depth=0.1)
N_LABELED, N_UNLABELED, SHARD = 48, 40, 12  # 4 labeled tars, 4 unlabeled tars (the last one shorter)
BATCH, RATIO = 8, 2
SMOOTHING = 0.1
CPU = torch.device("cpu")


def _images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, 16, 16) uint8 grey images of two classes that differ in brightness, and their labels."""
    g = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    low = np.where(labels == 0, 0, 190)[:, None, None]
    return (low + g.integers(0, 60, (n, 16, 16))).astype(np.uint8), labels


def _png(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image, mode="L").save(out, format="PNG")
    return out.getvalue()


def write_split(folder: Path, split: str, images: np.ndarray, labels: np.ndarray, ids: np.ndarray) -> list[str]:
    """A ``<split>.wds``-style folder: tars of ``SHARD`` samples in id order and timm's ``_info.json``."""
    folder.mkdir(parents=True)
    names, lengths = [], []
    for j, start in enumerate(range(0, len(images), SHARD)):
        name = f"{split}-{j:06d}.tar"
        with wds.TarWriter(str(folder / name)) as tar:
            for image, label, id_ in zip(images[start : start + SHARD], labels[start:], ids[start:], strict=False):
                meta = {"id": int(id_), "label": int(label), "source": "test"}
                tar.write(
                    {
                        "__key__": f"{int(id_):010d}",
                        "png": _png(image),
                        "cls": str(int(label)).encode(),
                        "json": json.dumps(meta).encode(),
                    }
                )
        names.append(name)
        lengths.append(len(images[start : start + SHARD]))
    split_info = {"name": split, "num_samples": len(images), "filenames": names, "shard_lengths": lengths}
    info = {"name": split, "num_samples": len(images), "splits": {split: split_info}}
    (folder / "_info.json").write_text(json.dumps(info))
    return names


class Shards:
    """A labeled and an unlabeled shard folder, with the images written and a pseudo-label selection."""

    def __init__(self, root: Path) -> None:
        self.labeled_images, self.labels = _images(N_LABELED, 0)
        self.unlabeled_images, _ = _images(N_UNLABELED, 1)
        self.labeled_ids, self.unlabeled_ids = np.arange(N_LABELED), 100 + np.arange(N_UNLABELED)
        self.labeled = root / "labeled.wds"
        self.unlabeled = root / "unlabeled.wds"
        write_split(self.labeled, "labeled", self.labeled_images, self.labels, self.labeled_ids)
        unknown = -np.ones(N_UNLABELED, dtype=np.int64)
        tars = write_split(self.unlabeled, "unlabeled", self.unlabeled_images, unknown, self.unlabeled_ids)
        # every other image of the first three tars; the fourth holds no selected key and is deleted, so
        # reading it would fail: the stream must open only the tars the pseudo labels name
        rows = [i for i in range(3 * SHARD) if i % 2 == 0]
        g = np.random.default_rng(2)
        targets = g.dirichlet([1.0, 1.0], size=len(rows)).astype(np.float32)
        self.pseudo = SelectedImages(
            ids=self.unlabeled_ids[rows].astype(np.int64),
            shards=np.array([tars[i // SHARD] for i in rows]),
            targets=targets,
            copies=g.integers(1, 4, len(rows)).astype(np.int64),
        )
        self.pass_size = int(self.pseudo.copies.sum())  # pseudo-labeled samples per pass
        (self.unlabeled / tars[3]).unlink()
        # which image a batch row is: images are random, so their bytes name them
        self.pseudo_id_of = {
            img.tobytes(): int(id_) for img, id_ in zip(self.unlabeled_images, self.unlabeled_ids, strict=True)
        }
        self.id_of = {img.tobytes(): int(id_) for img, id_ in zip(self.labeled_images, self.labeled_ids, strict=True)}

    def copies(self) -> dict[int, int]:
        """Each selected id's copies per pass."""
        return dict(zip(self.pseudo.ids.tolist(), self.pseudo.copies.tolist(), strict=True))

    def data(self, workers: int = 0, pseudo: bool = True) -> StreamedTrainData:
        return StreamedTrainData(
            self.labeled,
            N_LABELED,
            channels=1,
            num_classes=2,
            label_smoothing=SMOOTHING,
            workers=workers,
            unlabeled=self.unlabeled if pseudo else None,
            pseudo=self.pseudo if pseudo else None,
            shuffle_buffer=16,
        )


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Shards:
    return Shards(tmp_path_factory.mktemp("shards"))


def _labeled_epoch(batches: StreamedBatches, epoch: int, shards: Shards) -> list[int]:
    """The labeled ids of this rank's epoch ``epoch`` (``BATCH`` a step), checking each target."""
    batches.begin_epoch(epoch, 0)
    ids = []
    for _ in range(batches_per_epoch(shards.data().num_labeled, BATCH * batches.world.size)):
        (x, t), pseudo = batches.next()
        assert pseudo is None
        assert x.dtype == torch.uint8 and x.shape == (BATCH, 1, 16, 16), "raw images: the loop augments them"
        batch_ids = [shards.id_of[img.numpy().tobytes()] for img in x[:, 0]]
        torch.testing.assert_close(t, one_hot(shards.labels[batch_ids], 2, SMOOTHING))
        ids += batch_ids
    return ids


def _labeled_batches(data: StreamedTrainData, world: World) -> StreamedBatches:
    """Labeled-only batches of ``BATCH`` images per rank."""
    return StreamedBatches(data, BatchPlan(BATCH * world.size), world, seed=0, pin_memory=False)


@pytest.mark.parametrize("workers", [0, 2])
def test_the_labeled_stream_reads_every_image_once_per_epoch_with_its_target(shards: Shards, workers: int) -> None:
    data = shards.data(workers, pseudo=False)
    batches = _labeled_batches(data, World())
    first, second = _labeled_epoch(batches, 0, shards), _labeled_epoch(batches, 1, shards)
    assert sorted(first) == sorted(second) == list(range(N_LABELED))
    assert first != second, "every epoch is shuffled anew"
    # an epoch's order is a function of the seed and the epoch: a rebuilt stream reads the same
    again = _labeled_batches(data, World())
    assert _labeled_epoch(again, 1, shards) == second


def _passes(stream: PseudoStream, shards: Shards, n: int = 1) -> list[list[int]]:
    """The ids of the stream's next ``n`` passes, read one sample at a time (checking each target);
    the stream is left one sample into the pass after them."""
    start, passes = stream.pass_, [[] for _ in range(n)]
    while True:
        image, target = stream.take(1)
        if stream.pass_ == start + n:
            return passes
        image_id = shards.pseudo_id_of[image[0, 0].numpy().tobytes()]
        row = shards.pseudo.ids.tolist().index(image_id)
        torch.testing.assert_close(target[0], torch.from_numpy(shards.pseudo.targets[row]))
        passes[stream.pass_ - start].append(image_id)


@pytest.mark.parametrize("workers", [0, 2])
def test_the_pseudo_stream_repeats_each_selected_image_copies_times_per_pass(shards: Shards, workers: int) -> None:
    stream = PseudoStream(shards.data(workers), BATCH, seed=0, world=World(), workers=workers)
    expected = shards.copies()
    first, second = _passes(stream, shards, 2)
    assert Counter(first) == Counter(second) == expected  # only selected ids, each `copies` times
    assert first != second, "pass p is shuffled with seed + p"
    images, targets = stream.take(3 * shards.pass_size)  # batches span passes
    assert images.shape == (3 * shards.pass_size, 1, 16, 16) and images.dtype == torch.uint8
    torch.testing.assert_close(targets.sum(1), torch.ones(len(targets)))


@pytest.mark.parametrize("workers", [0, 2])  # 2 ranks x 2 workers: fewer tars (3) than readers, split by sample
def test_ranks_read_disjoint_pseudo_labeled_images(shards: Shards, workers: int) -> None:
    passes = [_passes(PseudoStream(shards.data(workers), 4, 0, World(r, 2), workers), shards)[0] for r in range(2)]
    assert passes[0] and passes[1]
    assert not set(passes[0]) & set(passes[1])
    assert Counter(passes[0] + passes[1]) == shards.copies()


def test_a_resumed_pseudo_stream_continues_where_it_stopped(shards: Shards) -> None:
    stream = PseudoStream(shards.data(), BATCH, 0, World(), 0)
    stream.take(shards.pass_size + 5)  # into pass 1
    state = stream.state()
    assert state == {"pass": 1, "consumed": 5}
    rest = stream.take(2 * shards.pass_size)
    resumed = PseudoStream(shards.data(), BATCH, 0, World(), 0)
    resumed.load(state)
    for a, b in zip(rest, resumed.take(2 * shards.pass_size), strict=True):
        torch.testing.assert_close(a, b)


def _model() -> torch.nn.Module:
    seed_everything(0)
    model, _ = create_classifier(ModelParams(arch="test_resnet"), 2, 1, (0.5,), (0.3,), 0.1, 0.1)
    return model


def _train(  # noqa: ANN202
    data: StreamedTrainData | TrainData,
    path: Path | None = None,
    epochs: int = 3,
    on_epoch=None,  # noqa: ANN001
    device: torch.device = CPU,
    **kwargs,  # noqa: ANN003
):
    # 48 labeled / 8 = 6 updates per epoch; a checkpoint every 5 lands mid-epoch (and mid-pass)
    optim = OptimParams(epochs=epochs, batch_size=BATCH, lr=0.05, warmup_epochs=0, eval_every=2, checkpoint_steps=5)
    return train_classifier(
        _model(),
        data,
        optim,
        NOISE,
        unlabeled_ratio=RATIO,
        device=device,
        seed=0,
        checkpoint_path=path,
        checkpoint_key="k",
        on_epoch=on_epoch,
        eval_fn=lambda m: {"test_top1": 0.5},
        **kwargs,
    )


def test_streamed_training_takes_the_steps_of_the_same_data_in_memory(
    shards: Shards, monkeypatch: pytest.MonkeyPatch, one_thread: None
) -> None:
    memory = TrainData(
        torch.from_numpy(shards.labeled_images).unsqueeze(1), one_hot(shards.labels, 2, smoothing=SMOOTHING)
    )
    streamed = shards.data(pseudo=False)
    assert (
        batches_per_epoch(memory.num_labeled, BATCH)
        == batches_per_epoch(streamed.num_labeled, BATCH)
        == N_LABELED // BATCH
    )
    calls: Counter[str] = Counter()
    for cls in (MemoryBatches, StreamedBatches):
        original = cls.next

        def counted(self, original=original, name=cls.__name__):  # noqa: ANN001, ANN202
            calls[name] += 1
            return original(self)

        monkeypatch.setattr(cls, "next", counted)
    _, memory_history = _train(memory, epochs=2)
    _, streamed_history = _train(streamed, epochs=2)
    assert calls["MemoryBatches"] == calls["StreamedBatches"] == 2 * N_LABELED // BATCH
    assert [h["epoch"] for h in streamed_history] == [h["epoch"] for h in memory_history] == [1, 2]
    assert all(np.isfinite(h["train_loss"]) for h in streamed_history)


def test_pretraining_on_streamed_pseudo_labels_reads_no_labeled_image(
    shards: Shards, monkeypatch: pytest.MonkeyPatch, one_thread: None
) -> None:
    def no_labeled(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("Table 13's pretraining reads no labeled image")

    monkeypatch.setattr(streams, "labeled_loader", no_labeled)
    _, history = _train(shards.data(), epochs=1, labeled_in_batch=False)
    assert len(history) == 1 and np.isfinite(history[0]["train_loss"])


class _Killed(RuntimeError):
    pass


@pytest.mark.parametrize("workers", [0, 2])
def test_an_interrupted_streamed_run_resumes_to_the_same_weights(
    shards: Shards, tmp_path: Path, workers: int, monkeypatch: pytest.MonkeyPatch, one_thread: None
) -> None:
    data = shards.data(workers)
    ckpt = tmp_path / "state.pt"
    full, full_history = _train(data, ckpt)
    assert all(np.isfinite(h["train_loss"]) for h in full_history)
    assert not ckpt.exists()

    def die_after_two(record: dict) -> None:
        if record["epoch"] == 2:
            raise _Killed

    with pytest.raises(_Killed):
        _train(data, ckpt, on_epoch=die_after_two)
    # killed after update 12; the last state is update 10 = epoch 2, step 5 of 6, 160 pseudo-labeled images in
    state = torch.load(ckpt, weights_only=True)
    assert (state["epoch"], state["step"]) == (1, 4)
    assert len(state["ranks"]) == 1 and set(state["ranks"][0]) == {"batches", "rng"}
    position = state["ranks"][0]["batches"]
    assert position == {"workers": workers, "pass": position["pass"], "consumed": position["consumed"]}
    assert position["pass"] * shards.pass_size + position["consumed"] == 10 * BATCH * RATIO
    steps = Counter[int]()
    original = StreamedBatches.next

    def counted(self: StreamedBatches):  # noqa: ANN202
        steps[0] += 1
        return original(self)

    monkeypatch.setattr(StreamedBatches, "next", counted)
    resumed, history = _train(data, ckpt)
    assert steps[0] == 3 * 6 - 10, "the rerun resumed at update 10 (it did not start over)"
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)  # bit for bit
    for a, b in zip(full_history, history, strict=True):
        assert a == pytest.approx(b)


def _rank_job(rank: int, shards: Shards, tmp: str) -> None:
    """One of two gloo ranks: which labeled ids (one epoch) and pseudo-labeled ids (one pass) it reads, then
    a streamed run, the same run stopped on both ranks after update 12, and its resumed rerun."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=2)
    try:
        world = distributed.world()
        labeled = _labeled_epoch(_labeled_batches(shards.data(pseudo=False), world), 0, shards)
        pseudo = _passes(PseudoStream(shards.data(), BATCH, 0, world, 0), shards)[0]
        Path(f"{tmp}/reads.{rank}").write_text(json.dumps({"labeled": labeled, "pseudo": pseudo}))

        ckpt = Path(tmp) / "state.pt"
        full, _ = _train(shards.data(), ckpt)
        original, calls = StreamedBatches.next, Counter[int]()

        def dying(self: StreamedBatches):  # noqa: ANN202
            calls[0] += 1
            if calls[0] > 12:  # both ranks stop at the same step (one alone would leave the other waiting)
                raise _Killed
            return original(self)

        def counted(self: StreamedBatches):  # noqa: ANN202
            calls[0] += 1
            return original(self)

        StreamedBatches.next = dying  # type: ignore[method-assign]
        try:
            _train(shards.data(), ckpt)
        except _Killed:
            pass
        finally:
            StreamedBatches.next = original  # type: ignore[method-assign]
        dist.barrier()
        positions = [r["batches"] for r in torch.load(ckpt, weights_only=True)["ranks"]]
        dist.barrier()  # both read the state before rank 0's rerun finishes and removes it
        calls.clear()
        StreamedBatches.next = counted  # type: ignore[method-assign]
        try:
            resumed, _ = _train(shards.data(), ckpt)
        finally:
            StreamedBatches.next = original  # type: ignore[method-assign]
        assert calls[0] == 3 * 6 - 10, "the rerun resumed at update 10"
        if world.main:
            torch.save(
                {"full": full.state_dict(), "resumed": resumed.state_dict(), "positions": positions},
                ckpt.parent / "out.pt",
            )
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_read_disjoint_shards_and_resume_exactly(shards: Shards, tmp_path: Path) -> None:
    mp.spawn(_rank_job, args=(shards, str(tmp_path)), nprocs=2)
    reads = [json.loads((tmp_path / f"reads.{rank}").read_text()) for rank in range(2)]
    labeled = [set(r["labeled"]) for r in reads]
    assert len(labeled[0]) == len(labeled[1]) == N_LABELED // 2
    assert not labeled[0] & labeled[1] and labeled[0] | labeled[1] == set(range(N_LABELED))
    assert not set(reads[0]["pseudo"]) & set(reads[1]["pseudo"])
    assert Counter(reads[0]["pseudo"] + reads[1]["pseudo"]) == shards.copies()
    out = torch.load(tmp_path / "out.pt", weights_only=True)
    # the state holds each rank's pseudo-labeled position: 10 updates x 8 images, in passes over its own tars
    positions = out["positions"]
    assert len(positions) == 2 and positions[0] != positions[1]
    assert all(set(p) == {"workers", "pass", "consumed"} for p in positions)
    for key, value in out["full"].items():
        torch.testing.assert_close(out["resumed"][key], value, rtol=0, atol=0, msg=key)


def _content(data: StreamedTrainData) -> str:
    digest = hashlib.sha256()
    data.update_digest(digest)
    return digest.hexdigest()


def test_the_content_digest_changes_with_the_pseudo_labels(shards: Shards) -> None:
    data = shards.data()
    assert _content(data) == _content(shards.data(workers=2)), "loader workers are not content"
    more = SelectedImages(data.pseudo.ids, data.pseudo.shards, data.pseudo.targets, data.pseudo.copies + 1)
    other = StreamedTrainData(data.labeled, N_LABELED, 1, 2, SMOOTHING, unlabeled=data.unlabeled, pseudo=more)
    assert _content(other) != _content(data) != _content(shards.data(pseudo=False))


def test_every_reader_gets_a_labeled_tar_or_the_run_stops_early(tmp_path: Path) -> None:
    folder = tmp_path / "labeled.wds"
    assert streams._reader_count(4, World(0, 2), 2, folder) == 2
    assert streams._reader_count(4, World(0, 2), 8, folder) == 2  # a worker without a tar would read nothing
    assert streams._reader_count(4, World(), 0, folder) == 0
    with pytest.raises(ValueError, match="1 tar\\(s\\) for 2 training processes"):
        streams._reader_count(1, World(0, 2), 0, folder)
