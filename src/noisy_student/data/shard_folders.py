"""ImageNet-style image folders -> ``.wds`` split folders, streamed: ``prepare`` (``data.source: folders``)
and the ``noisy-student shard`` command.

Each split is listed, numbered and then decoded a chunk at a time
(:func:`~noisy_student.data.folders.decode_stream`) straight into its tars: no split is ever held
in memory (ImageNet's 1.28M images at 224 px would be 190 GB).

- ``labeled`` / ``test``: ``<src>/<class>/<image>``; file i of the sorted list gets id ``offset + i``
  (``offset`` 0 for labeled, :data:`~noisy_student.data.splits.TEST_ID_OFFSET` for test), its
  label the index of its class folder in the class list (the sorted folder names, or a given
  ``classes.json``: a test split must use the labeled split's, the model's logit order);
- ``unlabeled``: any image tree; file j gets id ``OOD_ID_OFFSET + j``, label -1 (unknown).

``max_images`` keeps a seeded uniform subsample (the stream of ``data.max_unlabeled``), ids still
the positions in the full sorted list. Every split folder holds ``files.csv`` (id -> image file).
:func:`prepare_folders` writes the three splits of ``data.labeled_dir`` / ``unlabeled_dir`` /
``test_dir`` exactly as three ``noisy-student shard`` calls with the same settings would.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from noisy_student.config import Params
from noisy_student.data.folders import (
    FolderDataError,
    decode_stream,
    image_files,
    scan_class_folders,
    scan_unlabeled_folder,
    subsample,
)
from noisy_student.data.imageset import save_classes
from noisy_student.data.splits import OOD_ID_OFFSET, TEST_ID_OFFSET, id_offsets
from noisy_student.data.wds import (
    WDS_SUFFIX,
    WdsDataError,
    WdsInfo,
    WdsSample,
    WdsWriter,
    check_replaceable,
    split_path,
)
from noisy_student.paths import CLASSES_FILE, MANIFEST_FILE
from noisy_student.seeds import seed_for

SPLITS = ("labeled", "unlabeled", "test")
DEFAULT_ID_OFFSETS = {"labeled": 0, "test": TEST_ID_OFFSET, "unlabeled": OOD_ID_OFFSET}
SOURCE = "folders"  # the ImageSet ``source`` of every image of a folders split


@dataclass(frozen=True)
class FolderSplit:
    """The files of one split in sample order, with their labels and ids.

    ``files``, ``labels`` (int64, -1 unknown) and ``ids`` (int64) are ``(N,)``; ``classes`` is the
    class list labels index (None for unlabeled); ``found`` counts the image files under ``root``.
    """

    root: Path
    split: str
    files: tuple[Path, ...]
    labels: np.ndarray
    ids: np.ndarray
    classes: tuple[str, ...] | None
    found: int
    excluded: int = 0  # images left out because they lie in an excluded folder


def _read_class_list(path: Path) -> tuple[str, ...]:
    try:
        names = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FolderDataError(f"--classes: {path} not found; expected a classes.json (a JSON list of names)") from None
    except (OSError, ValueError) as exc:
        raise FolderDataError(f"--classes: {path} is unreadable ({exc}); expected a JSON list of class names") from None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise FolderDataError(f"--classes: {path}: expected a non-empty JSON list of class names")
    return tuple(names)


def scan_split(
    src: str | Path,
    split: str,
    classes_file: Path | None = None,
    max_images: int | None = None,
    seed: int = 0,
    exclude: Sequence[Path] = (),
    id_offset: int | None = None,
    classes: Sequence[str] | None = None,
    key: str = "SRC",
    classes_from: str = "the labeled classes",
) -> FolderSplit:
    """List the images of ``src`` as the split ``split``; every layout error is a :class:`FolderDataError`.

    ``classes_file``: a JSON list giving the label order (required for ``test`` unless ``classes``
    gives the list itself); ``exclude``: folders whose images are left out (e.g. the labeled and test
    folders, when the unlabeled tree contains them); ``id_offset``: the first id (default
    :data:`DEFAULT_ID_OFFSETS`); ``key``: how errors name ``src`` (``data.labeled_dir`` from ``prepare``);
    ``classes_from``: how errors name where ``classes`` came from.
    """
    if split not in SPLITS:
        raise FolderDataError(f"--split: {split!r}; expected one of {', '.join(SPLITS)}")
    root = Path(src)
    if split == "unlabeled":
        found = scan_unlabeled_folder(root, key)
        labels_all = np.full(len(found), -1, dtype=np.int64)
        classes = None
    else:
        if split == "test" and classes_file is None and classes is None:
            raise FolderDataError(
                "--classes: required with --split test: the labeled split's classes.json (e.g. "
                f"data/prepared/labeled{WDS_SUFFIX}/{CLASSES_FILE}), so test labels follow the model's class order"
            )
        scanned = scan_class_folders(root, key, min_classes=1 if split == "test" else 2)
        found = list(scanned.files)
        if classes is not None:
            classes, given = tuple(classes), classes_from
        elif classes_file is not None:
            classes, given = _read_class_list(classes_file), f"--classes {classes_file}"
        else:
            classes, given = scanned.classes, ""
        unknown = [c for c in scanned.classes if c not in classes]
        if unknown:
            raise FolderDataError(
                f"{key}: class folder {root / unknown[0]} is not in {given}; expected the "
                f"class folders to be a subset of {list(classes)[:10]}{'...' if len(classes) > 10 else ''}"
            )
        labels_all = np.array([classes.index(c) for c in scanned.classes], dtype=np.int64)[scanned.labels]
    offset = DEFAULT_ID_OFFSETS[split] if id_offset is None else id_offset
    if id_offset is None and split != "unlabeled" and len(found) >= TEST_ID_OFFSET:
        # the ids would run into the next split's default range
        raise FolderDataError(
            f"{key}: {root} holds {len(found):,} images; expected fewer than {TEST_ID_OFFSET:,} with the default ids "
            f"of --split {split}, or pass --id-offset so the ids of every split stay distinct"
        )
    taken = {p.resolve() for folder in exclude for p in image_files(Path(folder))}
    candidates = np.array([i for i, p in enumerate(found) if p.resolve() not in taken], dtype=np.int64)
    if len(candidates) == 0:
        raise FolderDataError(
            f"{key}: every image under {root} also lies in {' or '.join(str(f) for f in exclude)}; "
            "expected further images than those of the excluded folders"
        )
    keep = candidates[subsample(len(candidates), max_images, seed_for(seed, "unlabeled_subsample"))]
    return FolderSplit(
        root,
        split,
        tuple(found[i] for i in keep),
        labels_all[keep],
        (offset + keep).astype(np.int64),
        classes,
        len(found),
        len(found) - len(candidates),
    )


def write_folder_split(
    found: FolderSplit,
    out: str | Path,
    shard_size: int,
    size: int,
    channels: int,
    workers: int | None = None,
) -> WdsInfo:
    """Decode ``found``'s images and write them as the split folder ``out`` (atomically; an earlier one is replaced).

    Beside the tars and ``_info.json``, ``out`` gets ``files.csv`` (``id,split,label,path``, the
    path relative to the source folder, as ``prepare`` writes it) and, for labeled and test,
    ``classes.json`` (the class list the labels index).
    """
    out = Path(out)
    bar = tqdm(total=len(found.files), desc=f"shard {found.split}", unit="img", mininterval=5.0)
    try:
        with WdsWriter(out, found.split, shard_size) as writer:
            if found.classes is not None:
                save_classes(writer.tmp, found.classes)
            with open(writer.tmp / MANIFEST_FILE, "w", newline="", encoding="utf-8") as fh:
                manifest = csv.writer(fh)
                manifest.writerow(("id", "split", "label", "path"))
                images = decode_stream(found.files, size, channels, workers)
                for path, label, image_id, image in zip(found.files, found.labels, found.ids, images, strict=True):
                    writer.write(WdsSample.of(image, int(label), int(image_id), SOURCE))
                    manifest.writerow((int(image_id), found.split, int(label), path.relative_to(found.root).as_posix()))
                    bar.update()
    finally:
        bar.close()
    assert writer.info is not None
    return writer.info


def scan_folders(params: Params) -> tuple[FolderSplit, FolderSplit, FolderSplit]:
    """The labeled, unlabeled and test splits of ``data.labeled_dir`` / ``unlabeled_dir`` / ``test_dir``.

    Test labels follow the labeled folder's class order (the model's logit order); files of the
    labeled or test folder that also lie under ``unlabeled_dir`` are left out of the pool, so no
    test image is ever trained on; ``data.max_unlabeled`` subsamples the rest (seeded by ``seed``).
    Ids follow :func:`~noisy_student.data.splits.id_offsets`. Every layout error is a
    :class:`FolderDataError` naming the params key, the path and what was expected.
    """
    d = params.data
    assert d.labeled_dir and d.unlabeled_dir and d.test_dir  # guaranteed by DataParams' validator
    lab_dir, test_dir = Path(d.labeled_dir), Path(d.test_dir)
    lab = scan_split(lab_dir, "labeled", id_offset=0, key="data.labeled_dir")
    assert lab.classes is not None
    tst = scan_split(
        test_dir,
        "test",
        id_offset=0,
        classes=lab.classes,
        key="data.test_dir",
        classes_from=f"data.labeled_dir ({lab_dir})",
    )
    test_offset, ood_offset = id_offsets(lab.found, tst.found)
    tst = replace(tst, ids=tst.ids + test_offset)
    unl = scan_split(
        d.unlabeled_dir,
        "unlabeled",
        max_images=d.max_unlabeled,
        seed=params.seed,
        exclude=(lab_dir, test_dir),
        id_offset=ood_offset,
        key="data.unlabeled_dir",
    )
    return lab, unl, tst


def prepare_folders(params: Params, out: str | Path, workers: int | None = None) -> tuple[dict[str, Any], str]:
    """``data.source: folders``: each split streamed into ``<out>/<split>.wds``; returns the metrics and summary line.

    The folders are scanned first (:func:`scan_folders`), so a layout error stops everything before
    a single image is decoded. The splits are then written into a temporary folder beside ``out`` and
    moved into ``out`` only once all three are complete: an image that cannot be decoded leaves
    ``out`` as it was (nothing half-written, no mix of old and new splits). Each split folder holds
    its ``files.csv`` (id -> image file) and, labeled and test, ``classes.json``; the labeled class
    list is also written as ``<out>/classes.json``. ``workers``: decoding processes
    (default :func:`~noisy_student.data.folders.decode_workers`).
    """
    d = params.data
    start = time.perf_counter()
    found = scan_folders(params)
    lab, unl, tst = found
    assert lab.classes is not None
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise WdsDataError(f"{out}: exists and is not a folder; expected the prepared folder (or nothing there)")
    for split in found:
        check_replaceable(split_path(out, split.split))  # before hours of decoding, not after
    staging = _staging_folder(out)
    try:
        for split in found:
            write_folder_split(
                split, split_path(staging, split.split), d.wds_shard_size, d.image_size, d.channels, workers
            )
        out.mkdir(parents=True, exist_ok=True)
        trash = staging / ".replaced"
        trash.mkdir()
        for split in found:
            folder = split_path(out, split.split)
            if folder.exists():  # two renames: the old split leaves in one step, the new one arrives in one
                os.replace(folder, trash / folder.name)
            os.replace(split_path(staging, split.split), folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    save_classes(out, lab.classes)
    (out / MANIFEST_FILE).unlink(missing_ok=True)  # each split folder has its own; one here is an old layout's
    per_class = np.bincount(lab.labels, minlength=len(lab.classes))
    metrics = {
        "labeled": len(lab.files),
        "unlabeled": len(unl.files),
        "test": len(tst.files),
        "classes": len(lab.classes),
        "labeled_min_per_class": int(per_class.min()),
        "labeled_max_per_class": int(per_class.max()),
        "unlabeled_found": unl.found,
        "unlabeled_overlap_excluded": unl.excluded,
        "image_size": int(d.image_size),
        "channels": int(d.channels),
        "seconds": round(time.perf_counter() - start, 2),
    }
    summary = (
        f"prepare: {len(lab.classes)} classes, {len(lab.files)} labeled, {len(unl.files)} unlabeled "
        f"(of {unl.found} found), {len(tst.files)} test, {d.image_size}x{d.image_size}x{d.channels}, "
        f"as WebDataset shards of {d.wds_shard_size}"
    )
    return metrics, summary


def _staging_folder(out: Path) -> Path:
    """A new temporary folder beside ``out`` (same file system: moving out of it is a rename).

    One ``prepare`` writes a folder at a time: staging folders of ``out`` left by a killed run are removed.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{out.name}.staging."
    for stale in out.parent.glob(f"{prefix}*"):
        shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(dir=out.parent, prefix=prefix))
