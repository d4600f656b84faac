"""Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package (IDX files)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
INSTALL_HINT = (
    "install it with: sudo apt-get install dataset-fashion-mnist "
    "(Debian/Ubuntu; 'dpkg -L dataset-fashion-mnist' lists the files), "
    "or set data.fashion_mnist_dir in params.yaml to a folder holding the four IDX files"
)
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DatasetMissingError(FileNotFoundError):
    """The dataset files are not where params say; the message says how to install them."""


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into an array of its declared shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - offset != expected:
        raise ValueError(f"{path}: header says {dims} ({expected} bytes) but {len(raw) - offset} bytes follow")
    return np.frombuffer(raw, dtype=dtype, offset=offset).reshape(dims).astype(dtype.newbyteorder("="))


def _find(folder: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    raise DatasetMissingError(f"Fashion-MNIST file '{stem}[.gz]' not found in {folder}: {INSTALL_HINT}")


def load_fashion_mnist(folder: str | Path) -> dict[str, np.ndarray]:
    """Return ``train_images (60000,28,28) uint8``, ``train_labels``, ``test_images``, ``test_labels``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetMissingError(f"Fashion-MNIST folder {folder} does not exist: {INSTALL_HINT}")
    out = {key: read_idx(_find(folder, stem)) for key, stem in _FILES.items()}
    for split in ("train", "test"):
        if len(out[f"{split}_images"]) != len(out[f"{split}_labels"]):
            raise ValueError(f"{folder}: {split} images and labels differ in count")
    return out
