"""Faults of streamed training (``data.residency: stream``): damaged tars, colliding keys, a killed loader worker.

timm's wds reader, which streams the labeled tars, logs a damaged tar and carries on with the others
(repeating them to fill its epoch), so the training stages check every tar's headers before they start
(:func:`noisy_student.data.wds.check_tars`). A loader worker killed mid-epoch ends the stage with one
line and the rerun resumes. (A rank or a whole node killed while streaming: tests/test_multinode.py.)
"""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import yaml

from noisy_student.data import ImageSet, save_imageset
from noisy_student.data.wds import WdsDataError, check_tars
from noisy_student.distributed import dead_loader_worker
from tests.conftest import ROOT, micro_params, run, wait_for_state
from tests.test_multinode import _env, _runs, _stage


def _split(folder: Path, n: int = 30, shard: int = 10) -> list[Path]:
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 255, (n, 8, 8), dtype=np.uint8), rng.integers(0, 3, n)
    save_imageset(folder, ImageSet(images, labels, np.arange(n), np.array(["x"] * n)), shard_size=shard)
    return sorted(folder.glob("*.tar"))


def test_check_tars_names_a_truncated_a_short_and_a_missing_tar(tmp_path: Path) -> None:
    tars = _split(tmp_path / "labeled.wds")
    check_tars(tmp_path / "labeled.wds")  # as written: fine
    data = tars[1].read_bytes()
    named = f"{tars[1]}: (truncated inside|[0-9]+ samples but .* lists 10|not a readable tar)"
    for cut in (len(data) // 2 + 100, 700, 2100):  # somewhere in the middle, in the first sample, in the second
        tars[1].write_bytes(data[:cut])
        with pytest.raises(WdsDataError, match=named):
            check_tars(tmp_path / "labeled.wds")
    tars[1].write_bytes(data)
    tars[2].unlink()
    with pytest.raises(FileNotFoundError, match=f"{tars[2]}: listed in .* but missing"):
        check_tars(tmp_path / "labeled.wds")


def test_check_tars_refuses_a_key_in_two_tars_or_twice_in_one(tmp_path: Path) -> None:
    tars = _split(tmp_path / "labeled.wds")
    shutil.copy(tars[0], tars[1])  # same count, other tar's keys: streaming would train on tar 0 twice
    with pytest.raises(WdsDataError, match=f"{tars[1]}: sample 0000000000 is also in {tars[0]}"):
        check_tars(tmp_path / "labeled.wds")
    # the pseudo-labeled pool is joined by (id, tar): across tars a repeat is allowed, within one it is not
    check_tars(tmp_path / "labeled.wds", [t.name for t in tars], unique_keys=False)
    with tarfile.open(tars[0]) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]
    with tarfile.open(tars[2], "w") as tar:
        for member, payload in [*members[:3], *members[3:6], *members[:3], *members[6:30]]:  # sample 0 twice
            tar.addfile(member, io.BytesIO(payload))
    with pytest.raises(WdsDataError, match=f"{tars[2]}: sample 0000000000 is twice in this tar"):
        check_tars(tmp_path / "labeled.wds", [tars[2].name], unique_keys=False)


def test_a_dead_loader_worker_is_found_also_when_a_library_wrapped_it() -> None:
    killed = RuntimeError("DataLoader worker (pid 23571) is killed by signal: Killed. ")
    assert dead_loader_worker(killed) == "DataLoader worker (pid 23571) is killed by signal: Killed."
    try:
        try:
            raise killed
        except RuntimeError as inner:
            raise ValueError("mlflow: failed to log metrics") from inner  # MLflow wraps what it was interrupted by
    except ValueError as wrapped:
        assert dead_loader_worker(wrapped) == "DataLoader worker (pid 23571) is killed by signal: Killed."
    assert dead_loader_worker(RuntimeError("CUDA out of memory")) is None


def _streamed(work: Path, workers: int, epochs: int = 2) -> Path:
    _split(work / "prepared" / "labeled.wds", n=96, shard=24)
    _split(work / "prepared" / "test.wds", n=20, shard=20)
    p = micro_params(yaml.safe_load((ROOT / "params.yaml").read_text()))
    p["data"].update(residency="stream", workers=workers)
    p["teacher"]["optim"].update(epochs=epochs, checkpoint_steps=1, eval_every=epochs)
    (work / "params.yaml").write_text(yaml.safe_dump(p))
    return work


@pytest.mark.slow
def test_the_teacher_refuses_colliding_labeled_tars_before_training(tmp_path: Path) -> None:
    work = _streamed(tmp_path / "w", workers=0)
    tars = sorted((work / "prepared" / "labeled.wds").glob("*.tar"))
    shutil.copy(tars[0], tars[2])
    proc = run(_stage(work, "teacher"), ROOT, env=_env(work), check=False)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert f"{tars[2]}: sample 0000000000 is also in {tars[0]}" in lines[0]
    assert "Traceback" not in proc.stderr and not (work / "teacher.pt").exists()
    assert not (work / "mlflow.db").exists() or not _runs(work)  # refused before an MLflow run opened


@pytest.mark.slow
def test_a_killed_loader_worker_stops_the_teacher_in_one_line_and_the_rerun_resumes(tmp_path: Path) -> None:
    work = _streamed(tmp_path / "w", workers=2, epochs=30)  # 96 / 16 = 6 updates an epoch, a state after each
    stage = subprocess.Popen(_stage(work, "teacher"), cwd=ROOT, env=_env(work), stderr=subprocess.PIPE, text=True)
    assert wait_for_state(work / ".checkpoints", "teacher", 6, 8, stage), "the teacher ended before a state"
    deadline = time.time() + 180
    # the loaders are built afresh every epoch: their workers come and go, and a worker killed while its epoch's
    # loader is being discarded is only reported by torch as an ignored exception (no batch of it is lost), so
    # kill workers until a kill lands in a loader still serving batches and the stage stops
    killed: set[int] = set()
    while stage.poll() is None and time.time() < deadline:
        for proc in psutil.Process(stage.pid).children():
            try:
                if proc.pid not in killed and proc.name() == "pt_data_worker":
                    os.kill(proc.pid, signal.SIGKILL)
                    killed.add(proc.pid)
                    break
            except (psutil.Error, ProcessLookupError):
                continue
        time.sleep(0.01)
    assert killed, "the teacher ended before the kill"
    _, err = stage.communicate(timeout=120)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert stage.returncode == 1 and len(lines) == 1, err
    # torch names the worker either way, depending on whether its signal handler or its status check saw it first;
    # the status check lists every worker found dead, and more than one may have been killed by then
    worker = r"DataLoader worker \(pid(?:\(s\))? ([\d, ]+)\) (?:is killed by signal|exited unexpectedly)"
    named = re.search(worker, lines[0])
    assert lines[0].startswith("error: [teacher] ") and named, lines[0]
    assert {int(pid) for pid in named.group(1).split(",")} <= killed, (lines[0], killed)
    assert lines[0].endswith("run the stage again to resume") and "Traceback" not in err
    assert not (work / "teacher.pt").exists()

    resumed = run(_stage(work, "teacher"), ROOT, env=_env(work))
    assert "[teacher] resuming from" in resumed.stderr, resumed.stderr
    assert (work / "teacher.pt").exists()
