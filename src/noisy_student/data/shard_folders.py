"""ImageNet-style image folders -> one ``.wds`` split folder, streamed (the ``noisy-student shard`` command).

The images are scanned, numbered and decoded exactly as ``prepare`` does with ``data.source:
folders`` (:func:`noisy_student.data.prepare.prepare_folders`), so the shards hold the arrays,
labels and ids its ``.npz`` files would:

- ``labeled`` / ``test``: ``<src>/<class>/<image>``; file i of the sorted list gets id ``offset + i``
  (``offset`` 0 for labeled, :data:`~noisy_student.data.prepare.TEST_ID_OFFSET` for test), its
  label the index of its class folder in the class list (the sorted folder names, or a given
  ``classes.json``: a test split must use the labeled split's, the model's logit order);
- ``unlabeled``: any image tree; file j gets id ``OOD_ID_OFFSET + j``, label -1.

``max_images`` keeps a seeded uniform subsample (the stream of ``data.max_unlabeled``), ids still
the positions in the full sorted list. Decoding runs in a worker pool a bounded number of images
ahead of the tar writer: memory does not grow with the folder.
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from noisy_student.config import Params
from noisy_student.data.folders import (
    FolderDataError,
    decode_image,
    decode_workers,
    image_files,
    scan_class_folders,
    scan_unlabeled_folder,
    subsample,
)
from noisy_student.data.imageset import save_classes
from noisy_student.data.prepare import OOD_ID_OFFSET, TEST_ID_OFFSET, id_offsets
from noisy_student.data.wds import WDS_SUFFIX, WdsInfo, WdsSample, WdsWriter, split_path
from noisy_student.paths import CLASSES_FILE, MANIFEST_FILE
from noisy_student.seeds import seed_for

SPLITS = ("labeled", "unlabeled", "test")
DEFAULT_ID_OFFSETS = {"labeled": 0, "test": TEST_ID_OFFSET, "unlabeled": OOD_ID_OFFSET}
SOURCE = "folders"  # the ImageSet ``source`` of every image, as prepare_folders writes it
# images decoded per pool round; two rounds are in flight, bounding memory to 2 * CHUNK decoded images
CHUNK = 512
# below this many images a worker pool costs more (process start-up) than it saves
POOL_MIN_IMAGES = 256


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
) -> FolderSplit:
    """List the images of ``src`` as the split ``split``; every layout error is a :class:`FolderDataError`.

    ``classes_file``: a JSON list giving the label order (required for ``test`` unless ``classes``
    gives the list itself); ``exclude``: folders whose images are left out (e.g. the labeled and test
    folders, when the unlabeled tree contains them); ``id_offset``: the first id (default
    :data:`DEFAULT_ID_OFFSETS`); ``key``: how errors name ``src`` (``data.labeled_dir`` from ``prepare``).
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
            classes, given = tuple(classes), "the labeled classes"
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
        raise FolderDataError(f"{key}: every image under {root} lies in an excluded folder; expected further images")
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


def _decode_job(job: tuple[Path, int, int]) -> np.ndarray:
    return decode_image(*job)


def decode_stream(
    files: Sequence[Path],
    size: int,
    channels: int,
    workers: int | None = None,
    chunk: int = CHUNK,
    pool_min: int = POOL_MIN_IMAGES,
) -> Iterator[np.ndarray]:
    """Decode ``files`` in order, as :func:`~noisy_student.data.folders.decode_image` does, one array at a time.

    With ``workers`` > 1 (default :func:`~noisy_student.data.folders.decode_workers`) and at least
    ``pool_min`` files, a process pool decodes ``chunk`` files per round, one round ahead of the
    consumer: at most ``2 * chunk`` decoded images wait in memory.
    """
    jobs = [(Path(f), size, channels) for f in files]
    workers = decode_workers() if workers is None else workers
    if workers <= 1 or len(jobs) < pool_min:
        for job in jobs:
            yield _decode_job(job)
        return
    # fork: workers need only PIL + numpy and must not re-import the stage (torch), as spawn would
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
    per_task = max(1, chunk // (workers * 4))
    with ctx.Pool(workers) as pool:  # leaving the block (also on an error) terminates the workers
        rounds: deque[Iterator[np.ndarray]] = deque()
        for start in range(0, len(jobs), chunk):
            rounds.append(pool.imap(_decode_job, jobs[start : start + chunk], chunksize=per_task))
            if len(rounds) == 2:
                yield from rounds.popleft()
        while rounds:
            yield from rounds.popleft()


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


def prepare_folders_wds(params: Params, out: Path) -> tuple[dict[str, Any], str]:
    """``data.source: folders`` with ``data.format: wds``: each split streamed into ``<out>/<split>.wds``.

    The images, labels, ids and subsample are :func:`~noisy_student.data.prepare.prepare_folders`'s,
    but no split is ever held in memory (ImageNet's 1.28M images at 224 px would be 190 GB):
    each is decoded a chunk at a time straight into its tars. Ids follow
    :func:`~noisy_student.data.prepare.id_offsets`. ``classes.json`` is written into ``out``; each
    split folder holds its own ``files.csv``. Returns the stage's metrics and summary line.
    """
    d = params.data
    assert d.labeled_dir and d.unlabeled_dir and d.test_dir  # guaranteed by DataParams' validator
    start = time.perf_counter()
    lab_dir, test_dir = Path(d.labeled_dir), Path(d.test_dir)
    n_lab = len(scan_class_folders(lab_dir, "data.labeled_dir").files)
    n_test = len(scan_class_folders(test_dir, "data.test_dir", min_classes=1).files)
    test_offset, ood_offset = id_offsets(n_lab, n_test)
    lab = scan_split(lab_dir, "labeled", id_offset=0, key="data.labeled_dir")
    assert lab.classes is not None
    tst = scan_split(test_dir, "test", id_offset=test_offset, classes=lab.classes, key="data.test_dir")
    unl = scan_split(
        d.unlabeled_dir,
        "unlabeled",
        max_images=d.max_unlabeled,
        seed=params.seed,
        exclude=(lab_dir, test_dir),
        id_offset=ood_offset,
        key="data.unlabeled_dir",
    )
    out.mkdir(parents=True, exist_ok=True)
    for found in (lab, unl, tst):
        write_folder_split(found, split_path(out, found.split, "wds"), d.wds_shard_size, d.image_size, d.channels)
        split_path(out, found.split, "npz").unlink(missing_ok=True)  # one format in the folder
    save_classes(out, lab.classes)
    (out / MANIFEST_FILE).unlink(missing_ok=True)  # each split folder has its own
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
