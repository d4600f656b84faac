"""A stage's input files as MLflow datasets: path, DVC content hash as digest, row count; no data uploaded.

MLflow's Dataset column then says which version of the data a run used: two runs with the same digest
read the same bytes (the md5 ``dvc.lock`` records), whatever their experiment.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.meta_dataset import MetaDataset

from noisy_student.tracking.dvclock import digest, read_lock

_ROW_ARRAYS = ("labels", "ids")  # image sets and robustness sets: one label per image, whatever the image axes


class DvcDatasetSource(DatasetSource):
    """A file or folder of a DVC pipeline: its path in the repository and the git commit of the workspace."""

    def __init__(self, path: str, rev: str | None = None) -> None:
        self.path, self.rev = path, rev

    @staticmethod
    def _get_source_type() -> str:
        return "dvc"

    def load(self) -> str:
        """The local path (``dvc pull`` / ``dvc checkout`` at ``rev`` brings the bytes back)."""
        if not Path(self.path).exists():
            raise FileNotFoundError(f"{self.path}: not in this workspace (dvc pull at {self.rev or 'its commit'})")
        return self.path

    @staticmethod
    def _can_resolve(raw_source: Any) -> bool:
        return False  # only built explicitly here: MLflow's resolution of plain paths stays as it was

    @classmethod
    def _resolve(cls, raw_source: Any) -> DvcDatasetSource:
        return cls(str(raw_source))

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, **({"rev": self.rev} if self.rev else {})}

    @classmethod
    def from_dict(cls, source_dict: dict[Any, Any]) -> DvcDatasetSource:
        return cls(str(source_dict["path"]), source_dict.get("rev"))


class DvcDataset(MetaDataset):
    """Metadata only (name, digest, source) plus a profile with the row count."""

    def __init__(self, source: DvcDatasetSource, name: str, digest: str | None, rows: int | None) -> None:
        self._rows = rows
        super().__init__(source, name=name, digest=digest)

    @property
    def profile(self) -> dict[str, int] | None:
        return {"num_rows": self._rows} if self._rows is not None else None

    def to_dict(self) -> dict[str, str]:
        config = super().to_dict()
        if self.profile is not None:
            config["profile"] = json.dumps(self.profile)
        return config


def count_rows(path: Path) -> int | None:
    """Records in an image set (``.npz``: its labels, read from the array header only; a ``.wds`` folder: its
    ``_info.json`` count), a Parquet file or a folder of Parquet shards; None for anything else."""
    if path.is_dir() and (path / "_info.json").is_file():  # a WebDataset split folder: its sample count
        return int(json.loads((path / "_info.json").read_text()).get("num_samples", 0)) or None
    if path.is_dir():
        shards = sorted(path.glob("*.parquet"))
        return sum(pq.ParquetFile(s).metadata.num_rows for s in shards) if shards else None
    if path.suffix == ".parquet":
        return pq.ParquetFile(path).metadata.num_rows
    if path.suffix == ".npz":
        with zipfile.ZipFile(path) as archive:
            members = [m.removesuffix(".npy") for m in archive.namelist()]
            member = next((m for m in _ROW_ARRAYS if m in members), members[0] if members else None)
            if member is None:
                return None
            with archive.open(f"{member}.npy") as handle:
                version = np.lib.format.read_magic(handle)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, _, _ = read(handle)  # the header only: the data is not read
            return int(shape[0]) if shape else None
    return None


def dataset_for(path: Path, rev: str | None = None) -> DvcDataset:
    """``path`` (relative to the workspace root for pipeline files) as an MLflow dataset.

    Name: the path as ``dvc.yaml`` writes it; digest: the DVC md5 (``.dir`` hash for an output folder),
    None for a folder outside the pipeline (e.g. a released benchmark, which is not hashed: MLflow then
    derives a digest from name and source).
    """
    relative = os.path.relpath(path) if not path.is_absolute() or path.is_relative_to(Path.cwd()) else str(path)
    name = Path(relative).as_posix()
    return DvcDataset(DvcDatasetSource(name, rev), name, digest(read_lock(), name), count_rows(path))
