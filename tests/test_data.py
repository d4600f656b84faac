from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from noisy_student.config import Params
from noisy_student.data import ImageSet, class_count, load_classes, load_imageset, save_classes, save_imageset
from noisy_student.data.fashion_mnist import DatasetMissingError, load_fashion_mnist, read_idx
from noisy_student.data.out_of_domain import out_of_domain_images
from noisy_student.data.prepare import prepare_fashion_mnist, write_prepared
from noisy_student.data.splits import OOD_ID_OFFSET, TEST_ID_OFFSET, split_labeled_unlabeled
from noisy_student.data.wds import read_info, split_path


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 IDX file the way the MNIST/Fashion-MNIST releases are laid out."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


def fake_release(folder: Path, n_train: int = 40, n_test: int = 10) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    write_idx(folder / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (n_train, 28, 28)))
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.arange(n_train) % 10)
    write_idx(folder / "t10k-images-idx3-ubyte", rng.integers(0, 256, (n_test, 28, 28)))
    write_idx(folder / "t10k-labels-idx1-ubyte", np.arange(n_test) % 10)


def test_idx_roundtrip_gz_and_raw(tmp_path: Path) -> None:
    fake_release(tmp_path)
    data = load_fashion_mnist(tmp_path)
    assert data["train_images"].shape == (40, 28, 28) and data["train_images"].dtype == np.uint8
    assert data["test_labels"].tolist() == list(range(10))


def test_idx_rejects_bad_magic_and_truncation(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="magic"):
        read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(bytes([0, 0, 8, 1]) + (5).to_bytes(4, "big") + b"\x00\x00")
    with pytest.raises(ValueError, match="header says"):
        read_idx(short)


def test_missing_dataset_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(DatasetMissingError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path / "absent")
    (tmp_path / "partial").mkdir()
    with pytest.raises(DatasetMissingError, match="train-images-idx3-ubyte"):
        load_fashion_mnist(tmp_path / "partial")


def test_split_is_disjoint_balanced_and_deterministic() -> None:
    labels = np.repeat(np.arange(10), 50)
    lab, unl = split_labeled_unlabeled(labels, per_class=7, seed=3)
    assert len(np.intersect1d(lab, unl)) == 0
    assert len(lab) + len(unl) == len(labels)
    assert np.bincount(labels[lab]).tolist() == [7] * 10
    lab2, unl2 = split_labeled_unlabeled(labels, per_class=7, seed=3)
    assert np.array_equal(lab, lab2) and np.array_equal(unl, unl2)
    lab3, _ = split_labeled_unlabeled(labels, per_class=7, seed=4)
    assert not np.array_equal(lab, lab3)
    _, sub = split_labeled_unlabeled(labels, per_class=7, seed=3, unlabeled_size=100)
    assert len(sub) == 100 and len(np.intersect1d(lab, sub)) == 0


def test_split_refuses_too_few_images() -> None:
    with pytest.raises(ValueError, match="fewer than labeled_per_class"):
        split_labeled_unlabeled(np.array([0, 0, 1]), per_class=2, seed=0)


def test_out_of_domain_images_are_real_and_seeded() -> None:
    images, sources = out_of_domain_images(30, ["digits", "photos"], 28, seed=5)
    assert images.shape == (30, 28, 28) and images.dtype == np.uint8
    assert set(sources) == {"digits", "photos"}
    assert images.std() > 10  # not blank
    again, _ = out_of_domain_images(30, ["digits", "photos"], 28, seed=5)
    assert np.array_equal(images, again)
    # more digits than exist: capped at 1,797, the rest from photos
    many, src = out_of_domain_images(4000, ["digits", "photos"], 28, seed=0)
    assert (src == "digits").sum() == 1797 and len(many) == 4000


def test_imageset_roundtrip(tmp_path: Path) -> None:
    data = ImageSet(np.zeros((3, 4, 4), np.uint8), np.array([0, 1, -1]), np.array([5, 6, 7]), np.array(["a", "b", "c"]))
    save_imageset(tmp_path / "x.wds", data)
    assert read_info(tmp_path / "x.wds").split == "x"  # the split is named after the folder
    back = load_imageset(tmp_path / "x.wds")
    assert back.ids.tolist() == [5, 6, 7] and back.source.tolist() == ["a", "b", "c"]
    with pytest.raises(FileNotFoundError, match="prepare"):
        load_imageset(tmp_path / "missing.wds")


def test_class_count_prefers_the_stored_names_then_the_largest_known_label(tmp_path: Path) -> None:
    labeled, pool = np.array([0, 3, 1]), np.array([-1, 5, -1])
    assert class_count(tmp_path, labeled) == 4  # no classes.json: largest label + 1
    assert class_count(tmp_path, labeled, pool) == 6  # over every given set
    assert class_count(tmp_path, np.array([], dtype=np.int64), np.array([-1, 2])) == 3  # empty and -1 are skipped
    save_classes(tmp_path, ["a", "b", "c", "d", "e", "f", "g"])
    assert class_count(tmp_path, labeled) == 7  # names cover classes no set holds
    with pytest.raises(ValueError, match="no known label"):
        class_count(tmp_path / "other", np.array([-1, -1]))


def _fake_params(release: Path, seed: int = 0) -> Params:
    return Params.model_validate(
        {
            "seed": seed,
            "data": {
                "fashion_mnist_dir": str(release),
                "labeled_per_class": 2,
                "unlabeled_size": 10,
                "test_size": 5,
                "ood_images": 3,
                "ood_sources": ["digits"],
            },
        }
    )


def test_prepare_fashion_mnist_splits_and_writes_the_folder(tmp_path: Path) -> None:
    fake_release(tmp_path / "release", n_train=60, n_test=20)
    prepared = prepare_fashion_mnist(_fake_params(tmp_path / "release"))
    assert len(prepared.labeled) == 20 and np.bincount(prepared.labeled.labels).tolist() == [2] * 10
    assert len(prepared.unlabeled) == 13 and (prepared.unlabeled.labels == -1).sum() == 3
    assert prepared.unlabeled.ids[-3:].tolist() == [OOD_ID_OFFSET + j for j in range(3)]
    assert len(prepared.test) == 5 and (prepared.test.ids >= TEST_ID_OFFSET).all()
    assert prepared.metrics["unlabeled_out_of_domain"] == 3
    out = tmp_path / "prepared"
    out.mkdir()
    (out / "files.csv").write_text("stale manifest of an earlier folders run")
    write_prepared(out, prepared, wds_shard_size=4)
    assert not (out / "files.csv").exists()  # Fashion-MNIST ids are positions in the release, not files
    assert sorted(p.name for p in out.iterdir()) == ["classes.json", "labeled.wds", "test.wds", "unlabeled.wds"]
    assert load_classes(out)[0] == "T-shirt/top"
    assert read_info(split_path(out, "unlabeled")).shard_lengths == (4, 4, 4, 1)
    again = load_imageset(split_path(out, "unlabeled"))
    assert np.array_equal(again.images, prepared.unlabeled.images) and np.array_equal(again.ids, prepared.unlabeled.ids)
    # seeded by params.seed: the same seed draws the same split, another seed another one
    assert np.array_equal(prepare_fashion_mnist(_fake_params(tmp_path / "release")).labeled.ids, prepared.labeled.ids)
    other = prepare_fashion_mnist(_fake_params(tmp_path / "release", 1))
    assert not np.array_equal(other.labeled.ids, prepared.labeled.ids)
