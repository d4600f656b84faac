"""The user's own images in ImageNet-style folders: listing them, and decoding them with PIL into uint8 arrays.

Layout: a labeled (or test) folder holds one sub-folder per class,
``<dir>/<class>/<image>`` (images may sit deeper inside a class folder); the
sorted class folder names are the class indices. An unlabeled folder is any
tree of image files; its sub-folder names carry no meaning.

Every image is decoded by ``data.images`` (EXIF orientation, transparency and
16-bit handled there), converted to greyscale or RGB, its shorter side resized
to ``size`` and centre-cropped to ``size x size`` (:func:`decode_image`).
:func:`decode_stream` decodes a list of files in order, in a worker pool a bounded
number of images ahead of its consumer (:mod:`noisy_student.data.shard_folders`
writes them into tars), so memory does not grow with the folder.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from noisy_student.data import images

# What PIL decodes out of the box; other files (README, .DS_Store, CSVs) are skipped.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm"}
)
_EXT_LIST = "/".join(sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS))
# images decoded per pool round; two rounds are in flight, bounding memory to 2 * CHUNK decoded images
CHUNK = 512
# below this many images a worker pool costs more (process start-up) than it saves
POOL_MIN_IMAGES = 256


class FolderDataError(ValueError):
    """The image folders do not match the expected layout; the message names the path and what was expected."""


@dataclass(frozen=True)
class ClassFolders:
    """The image files of a ``<dir>/<class>/<image>`` tree.

    ``files`` ``(N,)`` are sorted by class, then by path inside the class;
    ``labels`` ``(N,)`` int64 index ``classes`` (sorted folder names).
    """

    root: Path
    classes: tuple[str, ...]
    files: tuple[Path, ...]
    labels: np.ndarray


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def image_files(root: Path) -> list[Path]:
    """Every image file under ``root`` (recursive, symlinks followed), sorted by relative path.

    Hidden files and folders (``.name``) and files without an image extension are skipped.
    Sorting by the relative POSIX path makes the order, and so ids and subsamples,
    independent of the file system's listing order.
    """
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                found.append(Path(dirpath) / name)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _require_dir(root: Path, key: str, layout: str) -> None:
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise FolderDataError(f"{key}: {root} {what}; expected a folder laid out as {layout}")


def scan_class_folders(root: str | Path, key: str, min_classes: int = 2) -> ClassFolders:
    """List a ``<root>/<class>/<image>`` tree; ``key`` (e.g. ``data.labeled_dir``) names it in errors.

    Raises :class:`FolderDataError` when ``root`` is missing, has fewer than
    ``min_classes`` class folders (a classifier needs two; a test folder may
    cover fewer classes), has image files outside any class folder, or a class folder
    holds no image.
    """
    root = Path(root)
    layout = f"{root}/<class>/<image>"
    _require_dir(root, key, layout)
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    loose = [p for p in root.iterdir() if p.is_file() and not _hidden(p, root) and p.suffix.lower() in IMAGE_EXTENSIONS]
    if loose:
        # they would silently belong to no class
        raise FolderDataError(
            f"{key}: {sorted(loose)[0]} lies directly in {root} ({len(loose)} such images); "
            f"expected every image inside a class folder: {layout}"
        )
    if len(class_dirs) < min_classes:
        raise FolderDataError(
            f"{key}: {root} has {len(class_dirs)} class folder(s); "
            f"expected at least {min_classes}, laid out as {layout}"
        )
    files: list[Path] = []
    labels: list[int] = []
    for index, folder in enumerate(class_dirs):
        members = image_files(folder)
        if not members:
            raise FolderDataError(
                f"{key}: class folder {folder} holds no image; expected at least one {_EXT_LIST} file"
            )
        files += members
        labels += [index] * len(members)
    return ClassFolders(root, tuple(p.name for p in class_dirs), tuple(files), np.array(labels, dtype=np.int64))


def scan_unlabeled_folder(root: str | Path, key: str) -> list[Path]:
    """Every image file under ``root`` (see :func:`image_files`); an error when there is none."""
    root = Path(root)
    _require_dir(root, key, f"{root}/[any/sub/folders/]<image>")
    files = image_files(root)
    if not files:
        raise FolderDataError(f"{key}: {root} holds no image file; expected {_EXT_LIST} files (searched recursively)")
    return files


def decode_image(path: Path, size: int, channels: int) -> np.ndarray:
    """One file -> ``(size, size)`` (channels 1) or ``(size, size, 3)`` uint8.

    :func:`noisy_student.data.images.decode_image` with the ``"square"`` fit: EXIF orientation
    applied, the shorter side resized to ``size`` (bilinear, antialiased) and the centre square
    kept, in one resampling; JPEGs are drafted (decoded at a reduced scale) for speed. Raises
    :class:`FolderDataError` naming the file when it cannot be decoded or is too small
    (shorter side below :data:`~noisy_student.data.images.MIN_IMAGE_SIDE` px).
    """
    try:
        return images.decode_image(path, size, channels, fit="square", draft=True)
    except images.ImageTooSmallError as exc:  # decodable, but not a real image: its message names file and size
        raise FolderDataError(f"{exc} (delete or replace it)") from None
    except Exception as exc:  # any decoder failure is a property of the user's file: report it with its path
        raise FolderDataError(
            f"{path}: cannot read this image ({type(exc).__name__}: {exc}); "
            "expected a valid image file PIL can decode (delete or replace it)"
        ) from None


def _decode_job(job: tuple[Path, int, int]) -> np.ndarray:
    return decode_image(*job)


def decode_workers() -> int:
    """Worker processes: ``NOISY_STUDENT_WORKERS`` when set, else the CPUs this process may use."""
    if os.environ.get("NOISY_STUDENT_WORKERS"):
        return max(1, int(os.environ["NOISY_STUDENT_WORKERS"]))
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def decode_stream(
    files: Sequence[Path],
    size: int,
    channels: int,
    workers: int | None = None,
    chunk: int = CHUNK,
    pool_min: int = POOL_MIN_IMAGES,
) -> Iterator[np.ndarray]:
    """Decode ``files`` in order, as :func:`decode_image` does, one array at a time.

    With ``workers`` > 1 (default :func:`decode_workers`) and at least ``pool_min`` files, a process
    pool decodes ``chunk`` files per round, one round ahead of the consumer: at most ``2 * chunk``
    decoded images wait in memory. Results come back in file order, so the output never depends on
    the worker count. The first unreadable file stops everything with its path (:class:`FolderDataError`).
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


def subsample(count: int, cap: int | None, seed: int) -> np.ndarray:
    """Sorted indices of a seeded uniform subsample of ``cap`` out of ``count`` (all when ``cap`` is None or larger)."""
    if cap is None or cap >= count:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, size=cap, replace=False))
