"""Command `shard`: ImageNet-style image folders -> a ``.wds`` split folder (:mod:`noisy_student.data.shard_folders`).

Not a DVC stage: it converts data too large for ``prepare`` to hold in memory into the layout
``prepare`` writes with ``data.format: wds``, e.g. ::

    noisy-student shard imagenet/train data/prepared/labeled.wds --split labeled --image-size 224
    noisy-student shard imagenet/val data/prepared/test.wds --split test --image-size 224 \\
        --classes data/prepared/labeled.wds/classes.json
    noisy-student shard unlabeled/ data/prepared/unlabeled.wds --split unlabeled --image-size 224
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer

from noisy_student.data.folders import FolderDataError
from noisy_student.data.shard_folders import scan_split, write_folder_split
from noisy_student.data.wds import WDS_SUFFIX, WdsDataError
from stages._common import fail, friendly_errors


class Split(StrEnum):
    labeled = "labeled"
    unlabeled = "unlabeled"
    test = "test"


def main(
    src: Path = typer.Argument(
        ..., help="Image folder: <SRC>/<class>/<image> (labeled, test) or any tree of images (unlabeled)."
    ),
    out: Path = typer.Argument(..., help=f"Split folder to write, its name ending in {WDS_SUFFIX} (replaced)."),
    split: Split = typer.Option(..., help="Which split SRC holds: the tar names, ids and labels follow from it."),
    image_size: int = typer.Option(32, min=8, max=1024, help="Square side: shorter side resized, centre-cropped."),
    channels: int = typer.Option(3, help="1 (greyscale) or 3 (RGB)."),
    shard_size: int = typer.Option(10000, min=1, help="Images per tar file (data.wds_shard_size)."),
    max_images: int | None = typer.Option(None, min=1, help="A seeded uniform subsample of this many images."),
    classes: Path | None = typer.Option(
        None, help="classes.json giving the label order; required for test (the labeled split's classes.json)."
    ),
    exclude: list[Path] = typer.Option(
        [], metavar="DIR", help="A folder whose images are left out (repeatable), e.g. the labeled and test folders."
    ),
    id_offset: int | None = typer.Option(
        None, min=0, help="First image id (default: labeled 0, test 1,000,000, unlabeled 2,000,000, as prepare)."
    ),
    seed: int = typer.Option(0, help="Seed of the --max-images subsample (params.yaml's seed)."),
    workers: int | None = typer.Option(
        None, min=1, help="Decoding processes (default: NOISY_STUDENT_WORKERS, else the CPUs)."
    ),
) -> None:
    """Decode an image folder (resize + centre crop, as data.source: folders) into WebDataset tar shards."""
    if channels not in (1, 3):
        fail(f"--channels: {channels}; expected 1 (greyscale) or 3 (RGB)")
    if not out.name.endswith(WDS_SUFFIX):
        # the folder is replaced as a whole: the suffix guards against naming, say, data/prepared itself
        fail(f"OUT: {out}; expected a split folder whose name ends in {WDS_SUFFIX}, e.g. data/prepared/labeled.wds")
    with friendly_errors(FolderDataError, WdsDataError):
        found = scan_split(src, split.value, classes, max_images, seed, exclude, id_offset)
        info = write_folder_split(found, out, shard_size, image_size, channels, workers)
    typer.echo(
        f"shard: {info.num_samples} {split.value} images of {found.found} found in {src} -> {out} "
        f"({len(info.filenames)} tars, {image_size}x{image_size}x{channels})"
    )


if __name__ == "__main__":
    typer.run(main)
