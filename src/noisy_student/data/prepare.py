"""Fashion-MNIST -> the labeled set, the unlabeled pool and the test set, and the folder they are written to.

``data.source: fashion_mnist``: :func:`prepare_fashion_mnist` splits the release and mixes out-of-domain
images into the unlabeled pool, in memory (70,000 images of 28 px); :func:`write_prepared` writes the
result as the split folders ``labeled.wds``, ``unlabeled.wds``, ``test.wds`` (WebDataset tars,
:mod:`noisy_student.data.wds`) and ``classes.json``. ``data.source: folders`` is decoded a chunk at a
time straight into the same layout by :func:`noisy_student.data.shard_folders.prepare_folders`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from noisy_student.config import Params
from noisy_student.data.fashion_mnist import CLASSES as FASHION_MNIST_CLASSES
from noisy_student.data.fashion_mnist import load_fashion_mnist
from noisy_student.data.imageset import ImageSet, save_classes
from noisy_student.data.out_of_domain import out_of_domain_images
from noisy_student.data.splits import OOD_ID_OFFSET, TEST_ID_OFFSET, split_labeled_unlabeled
from noisy_student.data.wds import DEFAULT_SHARD_SIZE, save_imageset, split_path
from noisy_student.paths import MANIFEST_FILE
from noisy_student.seeds import seed_for


@dataclass
class Prepared:
    """The three splits of Fashion-MNIST, their class names and metrics.

    ``metrics`` is the stage's metrics JSON (image counts); ``summary`` the one line the stage prints.
    """

    labeled: ImageSet
    unlabeled: ImageSet
    test: ImageSet
    classes: tuple[str, ...]
    metrics: dict[str, Any]
    summary: str


def prepare_fashion_mnist(params: Params) -> Prepared:
    """Split Fashion-MNIST: ``labeled_per_class`` per class labeled, the rest + out-of-domain images unlabeled.

    Every input is read and checked here; raises
    :class:`~noisy_student.data.fashion_mnist.DatasetMissingError` (a ``FileNotFoundError``) when
    the release files are missing. Ids: train image i -> i, test image i -> ``TEST_ID_OFFSET + i``,
    out-of-domain image j -> ``OOD_ID_OFFSET + j`` (:mod:`noisy_student.data.splits`).
    """
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


def write_prepared(folder: Path, prepared: Prepared, wds_shard_size: int = DEFAULT_SHARD_SIZE) -> None:
    """Write the three splits and ``classes.json`` into ``folder``, each atomically.

    Each split is a folder of WebDataset tars (``labeled.wds`` etc., :mod:`noisy_student.data.wds`),
    ``wds_shard_size`` images per tar.
    """
    for split, data in (("labeled", prepared.labeled), ("unlabeled", prepared.unlabeled), ("test", prepared.test)):
        save_imageset(split_path(folder, split), data, wds_shard_size)
    save_classes(folder, prepared.classes)
    # an id -> file table lies in each split folder of a folders source; one beside the splits is an old layout's
    (Path(folder) / MANIFEST_FILE).unlink(missing_ok=True)
