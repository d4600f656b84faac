"""The source images -> the labeled set, the unlabeled pool and the test set, and the folder they are written to.

``data.source: fashion_mnist`` splits the Fashion-MNIST release and mixes
out-of-domain images into the unlabeled pool; ``data.source: folders`` decodes
the user's ImageNet-style folders. Both produce a :class:`Prepared`, written by
:func:`write_prepared` as ``labeled.npz``, ``unlabeled.npz``, ``test.npz``
(:class:`~noisy_student.data.ImageSet`; with ``data.format: wds`` the folders
``labeled.wds`` etc. of WebDataset tar shards, :mod:`noisy_student.data.wds`)
and ``classes.json``; folders also write ``files.csv`` (id -> image file).
"""

from __future__ import annotations

import csv
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from noisy_student.config import Params
from noisy_student.data.fashion_mnist import CLASSES as FASHION_MNIST_CLASSES
from noisy_student.data.fashion_mnist import load_fashion_mnist
from noisy_student.data.folders import (
    FolderDataError,
    decode_images,
    scan_class_folders,
    scan_unlabeled_folder,
    subsample,
)
from noisy_student.data.imageset import ImageSet, save_classes, save_imageset
from noisy_student.data.out_of_domain import out_of_domain_images
from noisy_student.data.splits import split_labeled_unlabeled
from noisy_student.data.wds import split_path, write_wds
from noisy_student.io import atomic_path
from noisy_student.paths import LABELED, MANIFEST_FILE, TEST, UNLABELED
from noisy_student.seeds import seed_for

# ids: train image i -> i, test image i -> TEST_ID_OFFSET + i, out-of-domain j -> OOD_ID_OFFSET + j.
# Folders: labeled file i -> i, test file i -> TEST_ID_OFFSET + i, unlabeled file j -> OOD_ID_OFFSET + j
# (i, j: positions in the sorted file lists, so an id names the same file whatever the cap); folders of a
# million images or more move both offsets up (id_offsets).
TEST_ID_OFFSET = 1_000_000
OOD_ID_OFFSET = 2_000_000


def id_offsets(labeled: int, test: int) -> tuple[int, int]:
    """The first test id and the first unlabeled id of folders with ``labeled`` / ``test`` images.

    (TEST_ID_OFFSET, OOD_ID_OFFSET) while both splits hold fewer than a million images (every data set
    prepared so far keeps its ids); above, the next power of ten over the larger split and twice it
    (ImageNet's 1.28M labeled images: test ids from 10M, unlabeled from 20M), so ids never collide.
    """
    largest = max(labeled, test)
    if largest < TEST_ID_OFFSET:
        return TEST_ID_OFFSET, OOD_ID_OFFSET
    step = 10 ** len(str(largest))
    return step, 2 * step


# one manifest row: (id, split, label, path relative to that split's folder)
ManifestRow = tuple[int, str, int, str]


@dataclass
class Prepared:
    """The three splits of one source, their class names, metrics and (folders) the id -> file table.

    ``metrics`` is the stage's metrics JSON (image counts; ``seconds`` of wall time for folders);
    ``summary`` the one line the stage prints.
    """

    labeled: ImageSet
    unlabeled: ImageSet
    test: ImageSet
    classes: tuple[str, ...]
    metrics: dict[str, Any]
    summary: str
    # empty for Fashion-MNIST: its ids are positions in the release, not files
    manifest: list[ManifestRow] = field(default_factory=list)


def prepare_data(params: Params) -> Prepared:
    """Read and split the source ``params.data.source`` names; every input is read and checked here.

    Raises :class:`~noisy_student.data.fashion_mnist.DatasetMissingError` (a
    ``FileNotFoundError``) when the Fashion-MNIST files are missing and
    :class:`~noisy_student.data.folders.FolderDataError` (a ``ValueError``) for
    folders that do not match the expected layout.
    """
    return prepare_folders(params) if params.data.source == "folders" else prepare_fashion_mnist(params)


def prepare_fashion_mnist(params: Params) -> Prepared:
    """Split Fashion-MNIST: ``labeled_per_class`` per class labeled, the rest + out-of-domain images unlabeled."""
    d = params.data
    raw = load_fashion_mnist(d.fashion_mnist_dir)
    train_x, train_y = raw["train_images"], raw["train_labels"].astype(np.int64)
    lab_idx, unl_idx = split_labeled_unlabeled(
        train_y, d.labeled_per_class, seed_for(params.seed, "split"), d.unlabeled_size
    )
    size = train_x.shape[1]
    ood_x, ood_src = out_of_domain_images(d.ood_images, d.ood_sources, size, seed_for(params.seed, "out_of_domain"))

    labeled = ImageSet(train_x[lab_idx], train_y[lab_idx], lab_idx, np.full(len(lab_idx), "fashion_mnist"))
    # Unlabeled pool: true labels are stored only to report pseudo-label accuracy; training never reads them.
    unlabeled = ImageSet(
        np.concatenate([train_x[unl_idx], ood_x]),
        np.concatenate([train_y[unl_idx], np.full(len(ood_x), -1)]),
        np.concatenate([unl_idx, OOD_ID_OFFSET + np.arange(len(ood_x))]),
        np.concatenate([np.full(len(unl_idx), "fashion_mnist"), ood_src]),
    )
    test_x, test_y = raw["test_images"], raw["test_labels"].astype(np.int64)
    test_idx = np.arange(len(test_x))
    if d.test_size is not None and d.test_size < len(test_x):
        rng = np.random.default_rng(seed_for(params.seed, "test_subset"))
        test_idx = np.sort(rng.choice(len(test_x), d.test_size, replace=False))
    test = ImageSet(
        test_x[test_idx], test_y[test_idx], TEST_ID_OFFSET + test_idx, np.full(len(test_idx), "fashion_mnist")
    )
    metrics = {
        "labeled": len(labeled),
        "unlabeled": len(unlabeled),
        "unlabeled_in_domain": int(len(unl_idx)),
        "unlabeled_out_of_domain": int(len(ood_x)),
        "test": len(test),
        "image_size": int(size),
    }
    summary = (
        f"prepare: {len(labeled)} labeled, {len(unlabeled)} unlabeled ({len(ood_x)} out-of-domain), {len(test)} test"
    )
    return Prepared(labeled, unlabeled, test, FASHION_MNIST_CLASSES, metrics, summary)


def prepare_folders(params: Params) -> Prepared:
    """Decode ``data.labeled_dir`` / ``test_dir`` (class folders) and ``unlabeled_dir`` (any images).

    Unlabeled images get label -1 (unknown): their true class is not known, so
    pseudo-label accuracy cannot be measured on them. Files of the labeled or
    test folder that also lie under ``unlabeled_dir`` are left out of the pool,
    so no test image is ever trained on. Raises :class:`FolderDataError` naming
    the path and what was expected.
    """
    d = params.data
    assert d.labeled_dir and d.unlabeled_dir and d.test_dir  # guaranteed by DataParams' validator
    start = time.perf_counter()
    lab = scan_class_folders(d.labeled_dir, "data.labeled_dir")
    tst = scan_class_folders(d.test_dir, "data.test_dir", min_classes=1)
    unknown = [c for c in tst.classes if c not in lab.classes]
    if unknown:
        raise FolderDataError(
            f"data.test_dir: class folder {tst.root / unknown[0]} has no counterpart in data.labeled_dir "
            f"({lab.root}); expected test classes to be a subset of the labeled classes {list(lab.classes)} "
            f"({len(unknown)} unknown: {unknown[:5]})"
        )
    test_offset, ood_offset = id_offsets(len(lab.files), len(tst.files))
    # test labels in the labeled folder's class order (the model's logit order)
    to_labeled = np.array([lab.classes.index(c) for c in tst.classes], dtype=np.int64)
    test_labels = to_labeled[tst.labels]

    unl_root = Path(d.unlabeled_dir)
    found = scan_unlabeled_folder(unl_root, "data.unlabeled_dir")
    taken = {p.resolve() for p in (*lab.files, *tst.files)}
    candidates = np.array([i for i, p in enumerate(found) if p.resolve() not in taken], dtype=np.int64)
    if len(candidates) == 0:
        raise FolderDataError(
            f"data.unlabeled_dir: every image under {unl_root} is also in data.labeled_dir or data.test_dir; "
            "expected a folder of further, unlabeled images"
        )
    unl_idx = candidates[subsample(len(candidates), d.max_unlabeled, seed_for(params.seed, "unlabeled_subsample"))]
    unl_files = [found[i] for i in unl_idx]

    size, ch = d.image_size, d.channels
    lab_x = decode_images(lab.files, size, ch, "decode labeled")
    test_x = decode_images(tst.files, size, ch, "decode test")
    unl_x = decode_images(unl_files, size, ch, "decode unlabeled")

    lab_ids = np.arange(len(lab.files), dtype=np.int64)
    test_ids = test_offset + np.arange(len(tst.files), dtype=np.int64)
    unl_ids = ood_offset + unl_idx
    labeled = ImageSet(lab_x, lab.labels, lab_ids, np.full(len(lab_ids), "folders"))
    unlabeled = ImageSet(unl_x, np.full(len(unl_ids), -1, dtype=np.int64), unl_ids, np.full(len(unl_ids), "folders"))
    test = ImageSet(test_x, test_labels, test_ids, np.full(len(test_ids), "folders"))

    manifest = [
        *_manifest_rows("labeled", lab_ids, lab.labels, lab.files, lab.root),
        *_manifest_rows("unlabeled", unl_ids, unlabeled.labels, unl_files, unl_root),
        *_manifest_rows("test", test_ids, test_labels, tst.files, tst.root),
    ]
    per_class = np.bincount(lab.labels, minlength=len(lab.classes))
    metrics = {
        "labeled": len(labeled),
        "unlabeled": len(unlabeled),
        "test": len(test),
        "classes": len(lab.classes),
        "labeled_min_per_class": int(per_class.min()),
        "labeled_max_per_class": int(per_class.max()),
        "unlabeled_found": len(found),
        "unlabeled_overlap_excluded": int(len(found) - len(candidates)),
        "image_size": int(size),
        "channels": int(ch),
        "seconds": round(time.perf_counter() - start, 2),
    }
    summary = (
        f"prepare: {len(lab.classes)} classes, {len(labeled)} labeled, {len(unlabeled)} unlabeled "
        f"(of {len(found)} found), {len(test)} test, {size}x{size}x{ch}"
    )
    return Prepared(labeled, unlabeled, test, lab.classes, metrics, summary, manifest)


def _manifest_rows(
    split: str, ids: np.ndarray, labels: np.ndarray, files: Sequence[Path], root: Path
) -> list[ManifestRow]:
    """Manifest rows; paths relative to the split's folder so the table does not depend on where it lies."""
    return [(int(i), split, int(y), p.relative_to(root).as_posix()) for i, y, p in zip(ids, labels, files, strict=True)]


def write_prepared(folder: Path, prepared: Prepared, data_format: str = "npz", wds_shard_size: int = 10000) -> None:
    """Write the three splits, ``classes.json`` and (folders) ``files.csv`` into ``folder``, each atomically.

    ``data_format`` (``data.format``): ``npz`` writes ``labeled.npz`` etc.; ``wds`` writes the split
    folders ``labeled.wds`` etc. of :mod:`noisy_student.data.wds`, ``wds_shard_size`` images per tar.
    The other format's splits, left by an earlier run, are removed: the folder holds one format.
    """
    splits = ((LABELED.stem, prepared.labeled), (UNLABELED.stem, prepared.unlabeled), (TEST.stem, prepared.test))
    for name, split in splits:
        if data_format == "wds":
            write_wds(split_path(folder, name, "wds"), name, split, wds_shard_size)
            split_path(folder, name, "npz").unlink(missing_ok=True)
        else:
            save_imageset(split_path(folder, name, "npz"), split)
            stale = split_path(folder, name, "wds")
            if stale.is_dir():
                shutil.rmtree(stale)
    save_classes(folder, prepared.classes)
    manifest = folder / MANIFEST_FILE
    if prepared.manifest:
        with atomic_path(manifest) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(("id", "split", "label", "path"))
            writer.writerows(prepared.manifest)
    else:
        manifest.unlink(missing_ok=True)  # a stale one from an earlier folders run would name the wrong files
