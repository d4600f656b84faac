"""Stage `prepare`: Fashion-MNIST -> labeled / unlabeled (+ out-of-domain) / test image sets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from noisy_student.data import ImageSet, save_imageset
from noisy_student.data.fashion_mnist import load_fashion_mnist
from noisy_student.data.out_of_domain import out_of_domain_images
from noisy_student.data.splits import split_labeled_unlabeled
from stages._common import PARAMS_OPTION, friendly_errors, params_or_exit, stage_run, write_metrics

# ids: train image i -> i, test image i -> TEST_ID_OFFSET + i, out-of-domain j -> OOD_ID_OFFSET + j
TEST_ID_OFFSET = 1_000_000
OOD_ID_OFFSET = 2_000_000


def main(
    params_file: Path = PARAMS_OPTION,
    out: Path = typer.Option(Path("data/prepared"), help="Folder for labeled/unlabeled/test .npz files."),
    metrics: Path = typer.Option(Path("metrics/prepare.json"), help="Split statistics (DVC metric)."),
) -> None:
    """Split Fashion-MNIST into a small labeled set and a large unlabeled pool with out-of-domain images."""
    params = params_or_exit(params_file)
    with friendly_errors():
        raw = load_fashion_mnist(params.data.fashion_mnist_dir)
    d = params.data
    train_x, train_y = raw["train_images"], raw["train_labels"].astype(np.int64)
    lab_idx, unl_idx = split_labeled_unlabeled(train_y, d.labeled_per_class, params.seed, d.unlabeled_size)
    size = train_x.shape[1]
    ood_x, ood_src = out_of_domain_images(d.ood_images, d.ood_sources, size, params.seed + 1)

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
        test_idx = np.sort(np.random.default_rng(params.seed + 2).choice(len(test_x), d.test_size, replace=False))
    test = ImageSet(
        test_x[test_idx], test_y[test_idx], TEST_ID_OFFSET + test_idx, np.full(len(test_idx), "fashion_mnist")
    )

    with stage_run("prepare", params, ("data",)):
        for name, split in (("labeled", labeled), ("unlabeled", unlabeled), ("test", test)):
            save_imageset(out / f"{name}.npz", split)
        write_metrics(
            metrics,
            {
                "labeled": len(labeled),
                "unlabeled": len(unlabeled),
                "unlabeled_in_domain": int(len(unl_idx)),
                "unlabeled_out_of_domain": int(len(ood_x)),
                "test": len(test),
                "image_size": int(size),
            },
        )
    typer.echo(
        f"prepare: {len(labeled)} labeled, {len(unlabeled)} unlabeled ({len(ood_x)} out-of-domain), {len(test)} test"
    )


if __name__ == "__main__":
    typer.run(main)
