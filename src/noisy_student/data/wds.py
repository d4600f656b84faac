"""Prepared splits as WebDataset tar shards, the one on-disk format of every split: writing, listing, reading.

One split is a folder ``<split>.wds`` (e.g. ``data/prepared/labeled.wds``)::

    <split>-000000.tar, <split>-000001.tar, ...   shards of ``shard_size`` samples (the last may hold fewer)
    _info.json                                    timm's wds info: the split's tar names and sample counts

Each sample of a tar holds, under the key ``f"{id:010d}"`` (the prepared image id):

- ``png``: the uint8 image, lossless (PIL mode ``L`` for ``(H, W)``, ``RGB`` for ``(H, W, 3)``), so
  decoding returns the array that was written, bit for bit;
- ``cls``: the ASCII class index, ``-1`` when unknown;
- ``json``: ``{"id": int, "label": int, "source": str}``.

Samples keep the order they were written in (a split's order is its ImageSet's row order), and tar
j of a split is the j-th name in ``_info.json``. timm reads the folder with
``create_dataset("wds/<split>", root=<folder>, split="<split>")`` (streamed training); :func:`iter_tar`
reads one tar in file order (labelling: timm's reader may duplicate or skip samples when evaluating
distributed), :func:`load_imageset` a whole split into memory (test sets, in-memory training).

Tars carry a fixed mtime and owner and PNGs are encoded by the installed PIL, so writing the same
images twice gives the same bytes (DVC sees no change).
"""

from __future__ import annotations

import io
import json
import mmap
import os
import shutil
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from noisy_student.data.imageset import ImageSet

INFO_FILE = "_info.json"
WDS_SUFFIX = ".wds"
DEFAULT_SHARD_SIZE = 10240  # data.wds_shard_size's default
# ids are written as 10 zero-padded digits: every key of a split has the same length and sorts as its id
KEY_DIGITS = 10
_PNG_MODES = {1: "L", 3: "RGB"}
# fixed tar metadata: the bytes of a tar depend on its samples only
_TAR_MTIME = 0  # an int: a float mtime makes tarfile add a PAX header (1 KiB) to every member
_TAR_OWNER = "noisy-student"


class WdsDataError(ValueError):
    """A ``.wds`` split folder or one of its tars is not what was written; the message names the file."""


@dataclass(frozen=True)
class WdsInfo:
    """The content of a split folder's ``_info.json``.

    ``filenames``: the tar files (names inside the folder) in sample order;
    ``shard_lengths``: the samples in each, summing to ``num_samples``.
    """

    split: str
    num_samples: int
    filenames: tuple[str, ...]
    shard_lengths: tuple[int, ...]

    def paths(self, folder: str | Path) -> list[Path]:
        """The tar files of the split folder ``folder``, in sample order."""
        return [Path(folder) / name for name in self.filenames]

    def to_json(self) -> dict[str, Any]:
        """timm's wds info format (``timm.data.readers.reader_wds``): one split named like the dataset."""
        split = {
            "name": self.split,
            "num_samples": self.num_samples,
            "filenames": list(self.filenames),
            "shard_lengths": list(self.shard_lengths),
        }
        return {"name": self.split, "num_samples": self.num_samples, "splits": {self.split: split}}


@dataclass(frozen=True)
class WdsSample:
    """One image of a split: ``image`` uint8 ``(H, W)`` or ``(H, W, 3)``; ``label`` -1 when unknown."""

    key: str
    image: np.ndarray
    label: int
    id: int
    source: str

    @classmethod
    def of(cls, image: np.ndarray, label: int, id: int, source: str) -> WdsSample:
        """A sample keyed by its id (:func:`sample_key`)."""
        return cls(sample_key(id), image, int(label), int(id), str(source))


def sample_key(image_id: int) -> str:
    """The ``__key__`` of an image id: ``7`` -> ``"0000000007"``; ValueError outside 0 .. 10**10 - 1."""
    image_id = int(image_id)
    if not 0 <= image_id < 10**KEY_DIGITS:
        raise ValueError(f"image id {image_id}: expected 0 <= id < {10**KEY_DIGITS:,} to form a {KEY_DIGITS}-digit key")
    return f"{image_id:0{KEY_DIGITS}d}"


def tar_name(split: str, index: int) -> str:
    """Tar ``index`` of a split: ``("labeled", 3)`` -> ``"labeled-000003.tar"``."""
    return f"{split}-{index:06d}.tar"


def split_path(prepared: str | Path, split: str) -> Path:
    """Where ``prepare`` writes a split: ``("data/prepared", "labeled")`` -> ``data/prepared/labeled.wds``."""
    return Path(prepared) / f"{split}{WDS_SUFFIX}"


# --- writing ---------------------------------------------------------------------------------------


def encode_png(image: np.ndarray) -> bytes:
    """A uint8 ``(H, W)`` or ``(H, W, 3)`` array as lossless PNG bytes (mode ``L`` or ``RGB``)."""
    if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"image: expected uint8 (H, W) or (H, W, 3), got {image.dtype} {image.shape}")
    mode = _PNG_MODES[1 if image.ndim == 2 else 3]
    with io.BytesIO() as buf:
        Image.fromarray(np.ascontiguousarray(image), mode).save(buf, format="PNG")
        return buf.getvalue()


def _temp_prefix(folder: Path) -> str:
    return f".{folder.name}."


def _remove_stale_temps(folder: Path) -> None:
    # one writer per folder at a time (a DVC stage, or one shard command): older temps are a killed run's
    for stale in folder.parent.glob(f"{_temp_prefix(folder)}*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)


def check_replaceable(folder: Path) -> None:
    """Refuse to replace anything but an earlier split folder (a typo must not delete someone's folder)."""
    if not folder.exists():
        return
    if not folder.is_dir():
        raise WdsDataError(f"{folder}: exists and is not a folder; expected a {WDS_SUFFIX} split folder to replace")
    if any(folder.iterdir()) and not (folder / INFO_FILE).is_file():
        raise WdsDataError(
            f"{folder}: a non-empty folder without {INFO_FILE}; expected nothing there or an earlier "
            f"{WDS_SUFFIX} split folder (refusing to replace it)"
        )


@contextmanager
def _atomic_folder(folder: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``folder``; on success it replaces ``folder`` (an earlier one is removed)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    check_replaceable(folder)
    _remove_stale_temps(folder)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=_temp_prefix(folder), suffix=".tmp"))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700 folders; give it a plain mkdir's mode
        if folder.exists():
            # two renames: the old folder leaves in one step, so readers see the old or the new split, not a mix
            old = Path(tempfile.mkdtemp(dir=folder.parent, prefix=_temp_prefix(folder), suffix=".tmp"))
            os.replace(folder, old / folder.name)
            os.replace(tmp, folder)
            shutil.rmtree(old)
        else:
            os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class WdsWriter:
    """Stream samples into a split folder: ``with WdsWriter(folder, split, shard_size) as w: w.write(s)``.

    Tars are written into a temporary folder beside ``folder`` (:attr:`tmp`, where callers may add
    files of their own, e.g. ``classes.json``); leaving the block without an error writes
    ``_info.json`` and renames the temporary folder to ``folder``, replacing an earlier split folder.
    An error leaves ``folder`` as it was. Only one tar is open at a time: memory does not grow with
    the split. Every sample must have the first one's image shape; keys must be unique.
    """

    def __init__(self, folder: str | Path, split: str, shard_size: int) -> None:
        if not split or "/" in split or split != split.strip():
            raise ValueError(f"split {split!r}: expected a plain name such as 'labeled'")
        if shard_size < 1:
            raise ValueError(f"data.wds_shard_size: {shard_size}; expected at least 1 sample per tar")
        self.folder, self.split, self.shard_size = Path(folder), split, shard_size
        self.tmp: Path = self.folder  # set by __enter__
        self._context: Any = None
        self._tar: Any = None
        self._lengths: list[int] = []
        self._keys: set[str] = set()
        self._shape: tuple[int, ...] | None = None
        self.info: WdsInfo | None = None  # set on a successful exit

    def __enter__(self) -> WdsWriter:
        self._context = _atomic_folder(self.folder)
        self.tmp = self._context.__enter__()
        return self

    def write(self, sample: WdsSample) -> None:
        """Append one sample to the current tar (a new tar starts every ``shard_size`` samples)."""
        if sample.key in self._keys:
            raise ValueError(f"{self.folder}: key {sample.key} (id {sample.id}) written twice; expected unique ids")
        if self._shape is None:
            self._shape = sample.image.shape
        elif sample.image.shape != self._shape:
            raise ValueError(
                f"{self.folder}: image {sample.key} has shape {sample.image.shape}; "
                f"expected every image of the split to have the first one's {self._shape}"
            )
        if self._tar is None or self._lengths[-1] == self.shard_size:
            self._next_tar()
        meta = {"id": int(sample.id), "label": int(sample.label), "source": str(sample.source)}
        self._tar.write(
            {
                "__key__": sample.key,
                "png": encode_png(sample.image),
                "cls": str(int(sample.label)).encode("ascii"),
                "json": json.dumps(meta, sort_keys=True).encode("utf-8"),
            }
        )
        self._keys.add(sample.key)
        self._lengths[-1] += 1

    def _next_tar(self) -> None:
        import webdataset  # imported here: readers of the tars never need it

        self._close_tar()
        path = self.tmp / tar_name(self.split, len(self._lengths))
        # encoder=False: every field is already bytes, encoded above exactly as documented
        self._tar = webdataset.TarWriter(
            open(path, "wb"), encoder=False, mtime=_TAR_MTIME, user=_TAR_OWNER, group=_TAR_OWNER
        )
        self._lengths.append(0)

    def _close_tar(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar.stream.close()  # TarWriter closes only files it opened itself
            self._tar = None

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            self._close_tar()
            if exc_type is None:
                self._finish()
        except BaseException:
            self._context.__exit__(*sys.exc_info())  # discards the temporary folder
            raise
        self._context.__exit__(exc_type, exc, tb)

    def _finish(self) -> None:
        if not self._lengths:
            raise ValueError(f"{self.folder}: no sample to write; expected at least one image")
        names = tuple(tar_name(self.split, j) for j in range(len(self._lengths)))
        info = WdsInfo(self.split, sum(self._lengths), names, tuple(self._lengths))
        (self.tmp / INFO_FILE).write_text(json.dumps(info.to_json(), indent=2) + "\n")
        self.info = info


def save_imageset(folder: str | Path, data: ImageSet, shard_size: int = DEFAULT_SHARD_SIZE) -> WdsInfo:
    """Write an in-memory split as the folder ``folder`` (``<split>-NNNNNN.tar`` + ``_info.json``), atomically.

    The split is named after the folder (``data/prepared/labeled.wds`` holds split ``labeled``); samples
    keep the rows' order.
    """
    with WdsWriter(folder, Path(folder).stem, shard_size) as writer:
        for image, label, image_id, source in zip(data.images, data.labels, data.ids, data.source, strict=True):
            writer.write(WdsSample.of(image, int(label), int(image_id), str(source)))
    assert writer.info is not None
    return writer.info


# --- reading ---------------------------------------------------------------------------------------


def read_info(folder: str | Path, split: str | None = None) -> WdsInfo:
    """The ``_info.json`` of a split folder, checked: counts add up and every listed tar exists.

    ``split``: which split of the file to read; None takes the only one. Raises
    ``FileNotFoundError`` for a missing folder, ``_info.json`` or tar, :class:`WdsDataError` for
    content that is not what :class:`WdsWriter` writes; messages name the file.
    """
    folder = Path(folder)
    path = folder / INFO_FILE
    if not path.is_file():
        what = f"{folder} does not exist" if not folder.exists() else f"{path} not found"
        raise FileNotFoundError(
            f"{what}: expected a {WDS_SUFFIX} split folder with {INFO_FILE} "
            "(written by the 'prepare' stage: dvc repro prepare, or by `noisy-student shard`)"
        )
    try:
        raw = json.loads(path.read_text())
        splits = raw["splits"]
        if split is None:
            if len(splits) != 1:
                raise WdsDataError(f"{path}: {len(splits)} splits {sorted(splits)}; expected one, or name the split")
            split = next(iter(splits))
        if split not in splits:
            raise WdsDataError(f"{path}: no split {split!r} (have {sorted(splits)})")
        entry = splits[split]
        info = WdsInfo(
            str(entry.get("name", split)),
            int(entry["num_samples"]),
            tuple(str(f) for f in entry["filenames"]),
            tuple(int(n) for n in entry["shard_lengths"]),
        )
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        if isinstance(exc, WdsDataError):
            raise
        raise WdsDataError(
            f"{path}: unreadable ({type(exc).__name__}: {exc}); expected timm's wds info: "
            '{"name", "num_samples", "splits": {"<split>": {"name", "num_samples", "filenames", "shard_lengths"}}}'
        ) from None
    if len(info.filenames) != len(info.shard_lengths) or sum(info.shard_lengths) != info.num_samples:
        raise WdsDataError(
            f"{path}: split {split!r} lists {len(info.filenames)} tars with shard_lengths {list(info.shard_lengths)} "
            f"and num_samples {info.num_samples}; expected one length per tar, summing to num_samples"
        )
    for tar in info.paths(folder):
        if not tar.is_file():
            raise FileNotFoundError(f"{tar}: listed in {path} but missing; expected the split's tar file")
    return info


def check_tars(folder: str | Path, tars: Sequence[str] | None = None, unique_keys: bool = True) -> None:
    """Check a split folder's tars by their headers alone (no image is read): what streaming would find late.

    Each of ``tars`` (names in ``_info.json``; None: all of them) must be complete (every member's data
    inside the file: a truncated copy fails here), hold as many samples as ``_info.json`` lists and
    each key once; with ``unique_keys`` no key may be in two tars either. timm's wds reader skips a
    damaged tar with a warning and repeats others to fill its epoch, so training checks before it
    starts. Raises :class:`WdsDataError` naming the tar (``FileNotFoundError`` for a missing one).
    """
    folder = Path(folder)
    info = read_info(folder)
    lengths = dict(zip(info.filenames, info.shard_lengths, strict=True))
    owner: dict[str, str] = {}  # key -> the tar it was first seen in
    for name in info.filenames if tars is None else tars:
        owner = owner if unique_keys else {}
        path = folder / name
        size, keys, last = path.stat().st_size, 0, None
        try:
            with tarfile.open(path, mode="r:") as tar:  # seeks from header to header
                for member in tar:
                    if member.offset_data + member.size > size:
                        raise WdsDataError(f"{path}: truncated inside {member.name} ({size} bytes); copy it again")
                    base = member.name.rsplit("/", 1)[-1].partition(".")[0]
                    if not member.isfile() or base == last:
                        continue
                    keys, last = keys + 1, base
                    if base in owner:
                        where = "twice in this tar" if owner[base] == name else f"also in {folder / owner[base]}"
                        raise WdsDataError(f"{path}: sample {base} is {where}; expected each key once in the split")
                    owner[base] = name
        except tarfile.TarError as exc:
            raise WdsDataError(f"{path}: not a readable tar file ({exc})") from None
        if keys != lengths.get(name, keys):
            listed = f"{folder / INFO_FILE} lists {lengths[name]}"
            raise WdsDataError(f"{path}: {keys} samples but {listed}: a truncated or rewritten tar; copy it again")


def decode_png(data: bytes, where: str) -> np.ndarray:
    """PNG bytes -> uint8 ``(H, W)`` (mode ``L``) or ``(H, W, 3)`` (``RGB``); ``where`` names the sample in errors."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.mode not in ("L", "RGB"):
                raise ValueError(f"PIL mode {img.mode}")
            return np.array(img, dtype=np.uint8)
    except Exception as exc:  # a damaged member: name it rather than surface PIL's anonymous error
        raise WdsDataError(f"{where}: cannot decode the png ({exc}); expected a mode L or RGB PNG") from None


def _sample(path: Path, key: str, fields: dict[str, bytes]) -> WdsSample:
    where = f"{path}: sample {key}"
    missing = [f for f in ("png", "cls", "json") if f not in fields]
    if missing:
        raise WdsDataError(f"{where} has no {'/'.join(missing)} member; expected {key}.png, {key}.cls, {key}.json")
    try:
        meta = json.loads(fields["json"])
        label, image_id, source = int(meta["label"]), int(meta["id"]), str(meta["source"])
        cls = int(fields["cls"])
    except (ValueError, KeyError, TypeError) as exc:
        raise WdsDataError(f"{where}: bad cls/json ({exc}); expected an integer cls and id/label/source") from None
    if cls != label or sample_key(image_id) != key:
        raise WdsDataError(f"{where}: cls {cls}, json {meta}; expected cls == json label and key == the zero-padded id")
    return WdsSample(key, decode_png(fields["png"], where), label, image_id, source)


def iter_tar(path: str | Path, select: Callable[[str], bool] | None = None) -> Iterator[WdsSample]:
    """The samples of one tar in file order, decoded (``image`` uint8 ``(H, W)`` or ``(H, W, 3)``).

    tarfile walks the headers; member bytes are sliced from a memory map of the file, which is
    about half the cost of tarfile's per-member file objects and still holds one sample at a
    time. A member name is ``<key>.<field>``; a sample's members are consecutive, as
    :class:`WdsWriter` writes them. ``select``: called once per key, in file order; samples it
    refuses are skipped without being read or checked. Raises :class:`WdsDataError` naming the
    tar and key for anything else.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: tar file not found; expected a shard of a {WDS_SUFFIX} split folder")
    key: str | None = None
    fields: dict[str, bytes] = {}
    seen: set[str] = set()
    wanted = False
    try:
        with open(path, "rb") as file, tarfile.open(fileobj=file, mode="r:") as tar:
            size = os.fstat(file.fileno()).st_size
            with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) if size else nullcontext(b"") as data:
                for member in tar:
                    if not member.isfile():
                        continue
                    name = member.name.rsplit("/", 1)[-1]
                    base, dot, field = name.partition(".")
                    if not dot:
                        raise WdsDataError(f"{path}: member {member.name} has no extension; expected <key>.<field>")
                    if base != key:
                        if key is not None and wanted:
                            yield _sample(path, key, fields)
                        if base in seen:
                            raise WdsDataError(f"{path}: sample {base} appears twice; expected each key once")
                        seen.add(base)
                        key, fields, wanted = base, {}, select is None or select(base)
                    if wanted:
                        end = member.offset_data + member.size
                        if end > size:
                            raise WdsDataError(f"{path}: truncated inside {member.name} ({size} bytes); copy it again")
                        fields[field] = data[member.offset_data : end]
                if key is not None and wanted:
                    yield _sample(path, key, fields)
    except tarfile.TarError as exc:
        raise WdsDataError(f"{path}: not a readable tar file ({exc})") from None


def load_imageset(folder: str | Path) -> ImageSet:
    """Decode a whole split folder into memory, in sample order: the ImageSet that was written, array for array.

    Checks each tar's sample count against ``_info.json`` (a :class:`WdsDataError` names the tar).
    Memory: ``num_samples * H * W * C`` bytes.
    """
    folder = Path(folder)
    info = read_info(folder)
    images: np.ndarray | None = None
    labels = np.empty(info.num_samples, dtype=np.int64)
    ids = np.empty(info.num_samples, dtype=np.int64)
    sources: list[str] = []
    row = 0
    for tar, expected in zip(info.paths(folder), info.shard_lengths, strict=True):
        count = 0
        for sample in iter_tar(tar):
            if row >= info.num_samples:
                raise WdsDataError(f"{tar}: more samples than {folder / INFO_FILE} lists ({info.num_samples} in all)")
            if images is None:
                images = np.empty((info.num_samples, *sample.image.shape), dtype=np.uint8)
            elif sample.image.shape != images.shape[1:]:
                raise WdsDataError(
                    f"{tar}: sample {sample.key} is {sample.image.shape}; expected {images.shape[1:]} like the first"
                )
            images[row], labels[row], ids[row] = sample.image, sample.label, sample.id
            sources.append(sample.source)
            row += 1
            count += 1
        if count != expected:
            raise WdsDataError(f"{tar}: {count} samples; expected {expected} (shard_lengths in {folder / INFO_FILE})")
    if images is None:
        raise WdsDataError(f"{folder / INFO_FILE}: no samples; expected a split of at least one image")
    return ImageSet(images, labels, ids, np.array(sources, dtype=str))
