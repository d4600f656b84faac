"""Readers for the released robustness benchmarks, returning uint8 tensors at the model's resolution.

Layouts (as distributed by Hendrycks et al.):

- ImageNet-style folder: ``root/<wnid>/<image>`` (``load_image_folder``);
- ImageNet-A: ``root/<wnid>/<image>.jpg`` for 200 of the 1000 ImageNet wnids, plus a README.txt
  that is ignored (``load_imagenet_a``);
- ImageNet-C: ``root/<corruption>/<severity 1..5>/<wnid>/<image>.JPEG`` (``iter_imagenet_c``);
- ImageNet-P: ``root/<perturbation>/<wnid>/<name>.mp4``, one short video per image
  (``iter_imagenet_p``); also accepted: the frames extracted as images,
  ``root/<perturbation>/<wnid>/<name>/<frame>.png`` (or .jpg), frames in natural order of name.

Video decoding: torchvision 0.29 has no video reader (``torchvision.io.read_video`` is gone; video
moved to the separate TorchCodec project), so ``.mp4`` files are decoded with PyAV when it is
installed (``pip install av``). Without it, reading an ``.mp4`` raises ``VideoDecodingError`` naming
the file and the two fixes: install PyAV, or extract the frames once, e.g.
``ffmpeg -i name.mp4 name/%03d.png``, into the frame-folder layout above.

Every reader decodes with ``noisy_student.data.images`` (EXIF orientation, 16-bit and transparency
handled there), converts to ``channels`` = 1 (PIL "L") or 3 ("RGB") and resizes to ``size`` (an int
for square, or (H, W): the model's input resolution) with PIL's antialiased bilinear filter,
returning uint8 ``(N, C, H, W)`` tensors. With ``crop_fraction`` (e.g. 0.875, the usual
Resize(256) + CenterCrop(224)) the shorter side is first resized to size / crop_fraction and the
centre is cropped; by default the image is resized straight to ``size``. Labels are int64 indices
into the class list (wnids) the caller's model was trained with.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image

from noisy_student.data.images import Fit, ImageSize, decode_image, image_hw, prepare_image
from noisy_student.paths import natural_key
from noisy_student.robustness.corruptions import CORRUPTIONS, SEVERITIES
from noisy_student.robustness.perturbations import EXTRA_PERTURBATIONS, PERTURBATIONS

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff"})
VIDEO_EXTENSIONS: frozenset[str] = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm"})
Size = ImageSize  # side of a square, or (height, width), in pixels


class LayoutError(FileNotFoundError):
    """The dataset folder does not have the expected layout; the message names path and layout."""


class VideoDecodingError(RuntimeError):
    """An ImageNet-P video could not be decoded; the message names the file and the fix."""


def _fit(crop_fraction: float | None) -> tuple[Fit, float]:
    """The decoder's fit for a ``crop_fraction`` param: None resizes straight to the size."""
    return ("stretch", 1.0) if crop_fraction is None else ("crop", crop_fraction)


def _channels_first(array: np.ndarray) -> np.ndarray:
    """uint8 ``(H, W)`` or ``(H, W, C)`` -> ``(C, H, W)``."""
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def read_image(path: Path, size: Size, channels: int, crop_fraction: float | None = None) -> np.ndarray:
    """Decode one image file to uint8 ``(C, H, W)`` (see the module docstring)."""
    try:
        return _channels_first(decode_image(path, size, channels, *_fit(crop_fraction)))
    except (OSError, SyntaxError) as err:
        raise OSError(f"{path}: cannot read image ({err})") from err


def _read_many(
    paths: Sequence[Path], size: Size, channels: int, crop_fraction: float | None, workers: int | None
) -> torch.Tensor:
    h, w = image_hw(size)
    if not paths:
        return torch.zeros((0, channels, h, w), dtype=torch.uint8)
    workers = workers or min(8, os.cpu_count() or 1)
    # PIL releases the GIL while decoding, so threads overlap the file reads and the decoding
    with ThreadPoolExecutor(max_workers=workers) as pool:
        arrays = list(pool.map(lambda p: read_image(p, size, channels, crop_fraction), paths))
    return torch.from_numpy(np.stack(arrays))


def _subdirs(path: Path) -> list[Path]:
    return sorted((p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def _files(path: Path, extensions: frozenset[str]) -> list[Path]:
    return sorted(
        (p for p in path.iterdir() if p.is_file() and p.suffix.lower() in extensions),
        key=lambda p: natural_key(p.name),
    )


def class_index(wnids: Sequence[str]) -> dict[str, int]:
    """``{wnid: position}`` for the model's class list; raises on duplicates."""
    index = {wnid: i for i, wnid in enumerate(wnids)}
    if len(index) != len(wnids):
        raise ValueError("the class list (wnids) has duplicates")
    return index


def read_class_list(path: str | Path) -> list[str]:
    """The model's class ids (WordNet ids for ImageNet) in logit order, from a class index file.

    Accepted formats, so the usual ImageNet files work unchanged:

    - JSON list of ids: ``["n01440764", "n01443537", ...]``;
    - JSON object index -> id or index -> [id, name] (``imagenet_class_index.json`` of Keras and
      torchvision examples): ``{"0": ["n01440764", "tench"], ...}``, ordered by the integer index;
    - text, one class per line, the id as the first word (``LOC_synset_mapping.txt``:
      ``n01440764 tench, Tinca tinca``); blank lines and lines starting with ``#`` are skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: class index file not found")
    text = path.read_text()
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from err
        if isinstance(data, dict):
            try:
                items = sorted(((int(k), v) for k, v in data.items()), key=lambda kv: kv[0])
            except ValueError as err:
                raise ValueError(f"{path}: JSON object keys must be integer class indices ({err})") from err
            if [k for k, _ in items] != list(range(len(items))):
                raise ValueError(f"{path}: class indices must be 0..{len(items) - 1} without gaps")
            data = [v[0] if isinstance(v, list) and v else v for _, v in items]
        if not isinstance(data, list) or not all(isinstance(w, str) and w for w in data):
            raise ValueError(f"{path}: expected a JSON list of class ids or an object index -> id / [id, name]")
        wnids = list(data)
    else:
        lines = (line.strip() for line in text.splitlines())
        wnids = [line.split()[0] for line in lines if line and not line.startswith("#")]
    if not wnids:
        raise ValueError(f"{path}: no class ids found")
    try:
        class_index(wnids)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    return wnids


def _image_files(folder: Path) -> list[Path]:
    return _files(folder, IMAGE_EXTENSIONS)


# what a class folder of an image benchmark holds, and the error when it holds none of it
_IMAGES: tuple[Callable[[Path], list[Path]], str] = (
    _image_files,
    f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}); layout",
)


def _class_folder_samples(
    root: Path,
    wnids: Sequence[str] | None,
    layout: str,
    max_per_class: int | None,
    members: tuple[Callable[[Path], list[Path]], str] = _IMAGES,
) -> tuple[list[Path], list[int], list[str]]:
    """Sample paths, labels and the class list of a ``root/<wnid>/<sample>`` folder.

    ``members``: the function listing the samples of one class folder (images by default; videos
    and frame folders for ImageNet-P) and the error text for a class folder without any.
    """
    if not root.is_dir():
        raise LayoutError(f"{root}: folder not found; expected layout {layout}")
    folders = _subdirs(root)
    if not folders:
        raise LayoutError(f"{root}: no class folders; expected layout {layout}")
    classes = list(wnids) if wnids is not None else [f.name for f in folders]
    index = class_index(classes)
    list_members, missing = members
    paths: list[Path] = []
    labels: list[int] = []
    for folder in folders:
        if folder.name not in index:
            raise LayoutError(
                f"{folder}: class folder '{folder.name}' is not in the given class list "
                f"({len(classes)} wnids); expected layout {layout}"
            )
        files = list_members(folder)
        if not files:
            raise LayoutError(f"{folder}: {missing} {layout}")
        files = files[:max_per_class] if max_per_class is not None else files
        paths += files
        labels += [index[folder.name]] * len(files)
    return paths, labels, classes


def _benchmark_sets(
    root: Path,
    names: Sequence[str] | None,
    benchmark: str,
    layout: str,
    standard: Sequence[str],
    extra: Sequence[str] = (),
) -> list[str]:
    """The set folders of a benchmark to read under ``root``: ``names``, else every known one present.

    ``standard`` (the benchmark's own sets, named in the error when none is present) and ``extra``
    (optional ones) are searched in that order; ``benchmark`` names them in errors.
    """
    if not root.is_dir():
        raise LayoutError(f"{root}: folder not found; expected layout {layout}")
    if names is not None:
        return list(names)
    present = [name for name in (*standard, *extra) if (root / name).is_dir()]
    if not present:
        found = [p.name for p in _subdirs(root)][:10]
        raise LayoutError(
            f"{root}: none of the {benchmark} folders ({', '.join(standard)}) found "
            f"(found: {found}); expected layout {layout}"
        )
    return present


def load_image_folder(
    root: str | Path,
    size: Size,
    channels: int = 3,
    wnids: Sequence[str] | None = None,
    crop_fraction: float | None = None,
    max_per_class: int | None = None,
    workers: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Read an ImageNet-style folder ``root/<wnid>/<image>``.

    ``wnids``: the model's class list (label = position in it); default: the sorted folder names,
    the usual ImageNet index. ``max_per_class``: keep the first k files (natural name order) of each
    class. Returns images uint8 ``(N, C, H, W)``, labels int64 ``(N,)`` and the class list used.
    """
    layout = "root/<wnid>/<image>"
    paths, labels, classes = _class_folder_samples(Path(root), wnids, layout, max_per_class)
    images = _read_many(paths, size, channels, crop_fraction, workers)
    return images, torch.tensor(labels, dtype=torch.int64), classes


def load_imagenet_a(
    root: str | Path,
    model_wnids: Sequence[str],
    size: Size,
    channels: int = 3,
    crop_fraction: float | None = None,
    max_per_class: int | None = None,
    workers: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Read ImageNet-A (``root/<wnid>/<image>.jpg``, 200 wnids; README.txt and other files ignored).

    ``model_wnids``: the model's 1000-class wnid list, in logit order. Returns images uint8
    ``(N, C, H, W)``; labels int64 ``(N,)`` as positions in the subset (0..199); and
    ``class_indices``: the model's logit index of each subset class (subset = the dataset's wnids,
    sorted). ``metrics.masked_topk(logits, class_indices)`` then gives logits whose columns match
    the labels, for ``evaluation.topk_accuracy``.
    """
    layout = "root/<wnid>/<image>.jpg with wnids from the model's class list"
    root = Path(root)
    if not root.is_dir():
        raise LayoutError(f"{root}: folder not found; expected layout {layout}")
    subset = [f.name for f in _subdirs(root)]
    model_index = class_index(model_wnids)
    unknown = [w for w in subset if w not in model_index]
    if unknown:
        raise LayoutError(
            f"{root}: class folders {unknown[:5]}{'...' if len(unknown) > 5 else ''} are not in the model's "
            f"{len(model_wnids)}-class wnid list; expected layout {layout}"
        )
    paths, labels, _ = _class_folder_samples(root, subset, layout, max_per_class)
    images = _read_many(paths, size, channels, crop_fraction, workers)
    return images, torch.tensor(labels, dtype=torch.int64), [model_index[w] for w in subset]


def iter_imagenet_c(
    root: str | Path,
    size: Size,
    channels: int = 3,
    wnids: Sequence[str] | None = None,
    corruptions: Sequence[str] | None = None,
    severities: Sequence[int] = SEVERITIES,
    crop_fraction: float | None = None,
    max_per_class: int | None = None,
    workers: int | None = None,
) -> Iterator[tuple[str, int, torch.Tensor, torch.Tensor]]:
    """Yield ``(corruption, severity, images, labels)`` from ``root/<corruption>/<severity>/<wnid>/<image>``.

    ``corruptions``: default all the 15 benchmark corruptions that are present under ``root``
    (extra ones, e.g. speckle_noise, only when named); each named one must exist. ``wnids``: the
    model's class list; default the sorted wnid folders of the first set read. Images uint8
    ``(N, C, H, W)``, labels int64 ``(N,)``; one (corruption, severity) set in memory at a time.
    """
    layout = "root/<corruption>/<severity 1..5>/<wnid>/<image>.JPEG"
    root = Path(root)
    for corruption in _benchmark_sets(root, corruptions, "ImageNet-C corruption", layout, CORRUPTIONS):
        for severity in severities:
            paths, labels, wnids = _class_folder_samples(
                root / corruption / str(severity), wnids, layout, max_per_class
            )
            images = _read_many(paths, size, channels, crop_fraction, workers)
            yield corruption, severity, images, torch.tensor(labels, dtype=torch.int64)


def _pyav_frames(path: Path) -> list[Image.Image]:
    """Decode every frame of the first video stream with PyAV; raise VideoDecodingError without it."""
    try:
        # optional dependency: imported only when a video is actually read
        import av
    except ImportError as err:
        raise VideoDecodingError(
            f"{path}: cannot decode the video: torchvision {torchvision.__version__} has no video reader "
            "(torchvision.io.read_video is gone; video moved to TorchCodec) and PyAV is not installed. "
            "Fix: `pip install av` (PyAV, bundles FFmpeg), or extract the frames once into "
            f"{path.with_suffix('')}/ (e.g. `ffmpeg -i {path.name} {path.stem}/%03d.png`), which this "
            "reader accepts in place of the .mp4."
        ) from err
    try:
        with av.open(str(path)) as container:
            return [frame.to_image() for frame in container.decode(video=0)]
    except Exception as err:  # PyAV raises its own error classes (av.error.*) for broken files
        raise VideoDecodingError(f"{path}: PyAV failed to decode the video: {err}") from err


def read_sequence(
    path: Path, size: Size, channels: int, crop_fraction: float | None = None, workers: int | None = None
) -> torch.Tensor:
    """One ImageNet-P sequence, a video file or a folder of frame images, as uint8 ``(T, C, H, W)``."""
    if path.is_dir():
        frames = _files(path, IMAGE_EXTENSIONS)
        if not frames:
            raise LayoutError(f"{path}: frame folder without image files")
        return _read_many(frames, size, channels, crop_fraction, workers)
    images = _pyav_frames(path)
    if not images:
        raise VideoDecodingError(f"{path}: the video has no frames")
    frames = [_channels_first(prepare_image(im, size, channels, *_fit(crop_fraction))) for im in images]
    return torch.from_numpy(np.stack(frames))


def _sequences(class_folder: Path) -> list[Path]:
    """Videos and frame folders of one class; a frame folder replaces the video it was extracted from."""
    by_stem: dict[str, Path] = {}
    for path in class_folder.iterdir():
        if path.is_dir():
            by_stem[path.name] = path
        elif path.suffix.lower() in VIDEO_EXTENSIONS and path.stem not in by_stem:
            by_stem[path.stem] = path
    return sorted(by_stem.values(), key=lambda p: natural_key(p.name))


_VIDEOS: tuple[Callable[[Path], list[Path]], str] = (_sequences, "no videos or frame folders; expected layout")


def iter_imagenet_p(
    root: str | Path,
    size: Size,
    channels: int = 3,
    wnids: Sequence[str] | None = None,
    perturbations: Sequence[str] | None = None,
    crop_fraction: float | None = None,
    max_per_class: int | None = None,
    workers: int | None = None,
) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
    """Yield ``(perturbation, videos, labels)`` from ``root/<perturbation>/<wnid>/<name>.mp4``.

    Each sequence is an ``.mp4`` (needs PyAV, see the module docstring) or a folder of frame images
    ``<name>/<frame>.png``. ``perturbations``: default all benchmark and extra perturbations present.
    ``wnids``: the model's class list (default: sorted wnid folders of the first perturbation).
    ``videos``: uint8 ``(N, T, C, H, W)``; all sequences of one perturbation must have the same T.
    ``labels``: int64 ``(N,)``.
    """
    layout = "root/<perturbation>/<wnid>/<name>.mp4 (or root/<perturbation>/<wnid>/<name>/<frame>.png)"
    root = Path(root)
    found = _benchmark_sets(root, perturbations, "ImageNet-P perturbation", layout, PERTURBATIONS, EXTRA_PERTURBATIONS)
    for perturbation in found:
        sequences, labels, wnids = _class_folder_samples(root / perturbation, wnids, layout, max_per_class, _VIDEOS)
        videos: list[torch.Tensor] = []
        for sequence in sequences:
            clip = read_sequence(sequence, size, channels, crop_fraction, workers)
            if videos and clip.shape[0] != videos[0].shape[0]:
                raise ValueError(
                    f"{sequence}: {clip.shape[0]} frames, but earlier sequences of '{perturbation}' have "
                    f"{videos[0].shape[0]}; sequences must have equal length"
                )
            videos.append(clip)
        yield perturbation, torch.stack(videos), torch.tensor(labels, dtype=torch.int64)
