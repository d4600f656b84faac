"""What ``dvc.lock`` says about the workspace a stage runs in: content hashes, and which results are current.

DVC runs every stage from the workspace root (a temporary copy for queued experiments) and rewrites
``dvc.lock`` after each stage; a stage reads it while running, so its own entry is still the previous run's.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

LOCK_FILE = Path("dvc.lock")
PARAMS_FILE = "params.yaml"
_MISSING = object()


@dataclass(frozen=True)
class LockedStage:
    """One stage's entry: dependency and output paths -> md5 (``.dir`` hashes for folders), params read."""

    deps: dict[str, str] = field(default_factory=dict)
    outs: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)


def read_lock(path: Path = LOCK_FILE) -> dict[str, LockedStage]:
    """Stage name (``eval@it1``) -> its entry; empty when there is no ``dvc.lock`` yet (a first run)."""
    try:
        # libyaml's loader where PyYAML has it: ~8x faster on a default dvc.lock (90 KB), read by every stage
        raw = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}
    except (OSError, yaml.YAMLError):
        return {}

    def hashes(entries: list[dict[str, Any]] | None) -> dict[str, str]:
        return {str(e["path"]): str(e["md5"]) for e in entries or [] if "md5" in e}

    return {
        name: LockedStage(hashes(e.get("deps")), hashes(e.get("outs")), (e.get("params") or {}).get(PARAMS_FILE, {}))
        for name, e in (raw.get("stages") or {}).items()
    }


_MD5_CACHE: dict[tuple[str, int, int], str] = {}


def file_md5(path: Path) -> str:
    """DVC 3's hash of a file (``hash: md5``: the md5 of its bytes); remembered per size and mtime."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _MD5_CACHE:
        digest = hashlib.md5()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _MD5_CACHE[key] = digest.hexdigest()
    return _MD5_CACHE[key]


def path_md5(path: Path) -> str | None:
    """DVC 3's hash of a file, or of a folder (``<md5>.dir``: the md5 of the JSON list of its files' md5 and
    relative paths, sorted by path, as dvc-data computes it); None when ``path`` is neither."""
    if path.is_file():
        return file_md5(path)
    if not path.is_dir():
        return None
    files = sorted((p.relative_to(path).as_posix(), p) for p in path.rglob("*") if p.is_file())
    entries = [{"md5": file_md5(p), "relpath": rel} for rel, p in files]
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode("utf-8")).hexdigest() + ".dir"


def digest(lock: dict[str, LockedStage], path: str) -> str | None:
    """The content hash of a pipeline file or folder as DVC records it, None for a folder DVC does not track.

    The producing stage's output entry is current (DVC writes it before running any consumer); the
    consumer's own dependency entry is not (it is the previous run's). A path without an entry (a file or
    split folder inside an output folder, or anything before the first ``dvc.lock``) is hashed here the way
    DVC hashes it (:func:`path_md5`), so both routes give the same digest.
    """
    for entry in lock.values():
        if path in entry.outs:
            return entry.outs[path]
    return path_md5(Path(path))


def lookup(data: dict[str, Any], dotted: str) -> Any:
    """``data["a"]["b"]`` for ``"a.b"`` (how ``dvc.lock`` names params); a sentinel when absent."""
    value: Any = data
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


class Currency:
    """Which stages' recorded results (their metrics files) belong to the workspace as it is now.

    A stage is current when it is the stage running now, or when ``dvc.lock`` shows that it last ran
    with today's params and with the outputs its producers have now, and those producers are current
    too. This is DVC's own up-to-date test restricted to params and pipeline data (source code is left
    out). It tells an experiment's fresh results from those it inherited from its baseline: a result
    whose stage did not rerun (excluded by targets, or not reached yet) is not current when its inputs
    changed.
    """

    def __init__(self, lock: dict[str, LockedStage], running: str, params: dict[str, Any]) -> None:
        self.lock, self.running, self.params = lock, running, params
        self.producers = {out: name for name, entry in lock.items() for out in entry.outs}
        self._memo: dict[str, bool] = {}

    def is_current(self, stage: str) -> bool:
        if stage == self.running:
            return True
        if stage not in self._memo:
            self._memo[stage] = False  # a cycle (impossible in a DVC graph) ends as not current
            self._memo[stage] = self._check(stage)
        return self._memo[stage]

    def _check(self, stage: str) -> bool:
        entry = self.lock.get(stage)
        if entry is None:
            return False
        if any(lookup(self.params, key) != value for key, value in entry.params.items()):
            return False
        return all(self._dep_current(path, md5) for path, md5 in entry.deps.items())

    def _dep_current(self, path: str, md5: str) -> bool:
        producer = self.producers.get(path)
        if producer is None:  # a path inside an output folder (data/prepared/test.wds), or a source file
            folder = next((out for out in self.producers if path.startswith(out.rstrip("/") + "/")), None)
            if folder is None:
                return True
            return self.is_current(self.producers[folder]) and path_md5(Path(path)) == md5
        if producer == self.running:
            # the running stage has just rewritten this output and its lock entry is still the old one:
            # compare with the file itself (a folder's DVC hash is not recomputed here: not current)
            file = Path(path)
            return file.is_file() and file_md5(file) == md5
        return self.lock[producer].outs[path] == md5 and self.is_current(producer)
