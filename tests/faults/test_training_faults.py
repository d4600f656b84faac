"""Faults of the training stages: killed runs, two trainers, changed data, crafted states, leftovers, checkpoint bytes.

The process tests run the real `teacher` stage on a micro config and kill it with SIGKILL.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml

from noisy_student.config import ModelParams, OptimParams, StudentNoiseParams
from noisy_student.data import load_imageset, save_imageset
from noisy_student.io import atomic_path, remove_stale_temps
from noisy_student.models import create_classifier, save_checkpoint
from noisy_student.training.batches import TrainData, one_hot
from noisy_student.training.locks import remove_stale_states
from noisy_student.training.loop import train_classifier
from tests.conftest import FASHION_MNIST, ROOT, micro_params, run, stage_env

STEPS = 6  # 100 labeled images / batch 16 = 6 updates per epoch
EPOCHS = 50  # long enough (~20 s) for a second process to start while the first trains


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_identical_weights_give_identical_checkpoint_bytes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, spec = create_classifier(ModelParams(arch="test_resnet"), 3, 1, (0.5,), (0.25,))
    save_checkpoint(tmp_path / "a.pt", model, spec, {"name": "x"})
    save_checkpoint(tmp_path / "sub" / "b.pt", model, spec, {"name": "x"})
    # before: torch recorded the random temp-file name inside the archive, so the md5s differed
    assert _md5(tmp_path / "a.pt") == _md5(tmp_path / "sub" / "b.pt")


class _Payload:
    """Unpickling it would create the file ``marker``: what a crafted resume state would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (Path.touch, (self.marker,))


def test_a_crafted_resume_state_is_never_unpickled(tmp_path: Path) -> None:
    marker, state = tmp_path / "payload-ran", tmp_path / "state.pt"
    torch.save({"key": "k", "payload": _Payload(marker)}, state)
    torch.manual_seed(0)
    images = torch.randint(0, 256, (32, 1, 8, 8), dtype=torch.uint8)
    data = TrainData(images, one_hot(np.arange(32) % 2, 2))
    model, _ = create_classifier(ModelParams(arch="test_resnet"), 2, 1, (0.5,), (0.25,))
    optim = OptimParams(epochs=1, batch_size=16, warmup_epochs=0, eval_every=1)
    noise = StudentNoiseParams(randaugment_num_ops=0)
    _, history = train_classifier(
        model, data, optim, noise, device=torch.device("cpu"), seed=0, checkpoint_path=state, checkpoint_key="k"
    )
    assert not marker.exists(), "the resume state was unpickled with arbitrary code"
    assert len(history) == 1  # trained from the start instead


def test_leftover_temp_files_are_removed(tmp_path: Path) -> None:
    out = tmp_path / "models" / "teacher.pt"
    out.parent.mkdir()
    stale = out.parent / ".teacher.pt.abc123.tmp"  # what a writer killed mid-write leaves
    stale.write_bytes(b"half")
    other = out.parent / ".it1.pt.abc123.tmp"  # another output's temp file is not ours to remove
    other.write_bytes(b"half")
    with atomic_path(out) as tmp:
        tmp.write_bytes(b"whole")
    assert not stale.exists() and other.exists() and out.read_bytes() == b"whole"
    assert remove_stale_temps(out.parent / "it1.pt") == [other]


def test_stale_states_of_killed_runs_are_removed_but_live_ones_kept(tmp_path: Path) -> None:
    import fcntl

    (tmp_path / "teacher-dead.pt").write_bytes(b"")
    (tmp_path / "teacher-dead.lock").write_text("123")
    (tmp_path / "teacher-old.pt").write_bytes(b"")  # no lock file at all
    (tmp_path / ".teacher-dead.pt.x.tmp").write_bytes(b"")
    (tmp_path / "teacher-live.pt").write_bytes(b"")
    (tmp_path / "teacher-live-finetune.pt").write_bytes(b"")
    (tmp_path / "student-it1-x.pt").write_bytes(b"")  # another model's
    live = tmp_path / "teacher-live.lock"
    with open(live, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        remove_stale_states(tmp_path, "teacher")
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["student-it1-x.pt", "teacher-live-finetune.pt", "teacher-live.lock", "teacher-live.pt"]


# ------------------------------------------------------------------ real processes, killed


def _work(tmp_path: Path, name: str, epochs: int = EPOCHS) -> Path:
    work = tmp_path / name
    work.mkdir()
    p = micro_params(yaml.safe_load((ROOT / "params.yaml").read_text()))
    p["teacher"]["optim"].update(epochs=epochs, checkpoint_steps=1, eval_every=1)
    (work / "params.yaml").write_text(yaml.safe_dump(p))
    env = stage_env(work)
    prep = [sys.executable, "-m", "stages.prepare", "--out", "prepared", "--metrics", "prepare.json"]
    run([*prep, "--params", str(work / "params.yaml")], work, env=env)
    return work


def _teacher(work: Path) -> list[str]:
    return [
        *(sys.executable, "-m", "stages.teacher", "--params", str(work / "params.yaml")),
        *("--data", str(work / "prepared"), "--out", str(work / "models" / "teacher.pt")),
        *("--metrics", str(work / "metrics" / "teacher.json")),
    ]


def _start_and_wait_for_a_state(work: Path, min_updates: int = 9) -> subprocess.Popen:
    """Start the teacher and return once it has saved a resumable state at least ``min_updates`` in."""
    proc = subprocess.Popen(
        _teacher(work), cwd=ROOT, env={**os.environ, **stage_env(work)}, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        for found in (work / ".checkpoints").glob("teacher-*.pt"):
            try:
                state = torch.load(found, weights_only=True)
            except (EOFError, RuntimeError, OSError):
                continue
            if state["epoch"] * STEPS + state["step"] >= min_updates:
                return proc
        time.sleep(0.05)
    raise AssertionError(f"no resumable state before the teacher ended:\n{proc.stderr.read() if proc.stderr else ''}")


def _runs(work: Path) -> list[mlflow.entities.Run]:
    """The teacher stage's MLflow runs (prepare has its own)."""
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}")
    exp = client.get_experiment_by_name("noisy-student")
    return client.search_runs([exp.experiment_id], "attributes.run_name = 'teacher'") if exp else []


@pytest.mark.slow
def test_killed_teacher_one_trainer_one_continuous_run_no_leftovers(tmp_path: Path) -> None:
    if not FASHION_MNIST.is_dir():
        pytest.fail(f"{FASHION_MNIST} missing: the test setup installs dataset-fashion-mnist (make test)")
    work = _work(tmp_path, "w")
    first = _start_and_wait_for_a_state(work)
    # a second trainer of the same run (e.g. `dvc repro` while an orphaned stage still runs) is refused at once
    second = run(_teacher(work), ROOT, env=stage_env(work), check=False)
    assert second.returncode == 2, second.stderr
    assert "another process" in second.stderr and f"pid {first.pid}" in second.stderr, second.stderr
    assert len(_runs(work)) == 1, "the refused trainer must not open an MLflow run"
    first.send_signal(signal.SIGKILL)
    first.wait()
    killed = _runs(work)
    assert [r.info.status for r in killed] == ["RUNNING"]
    stale_tmp = work / "models" / ".teacher.pt.killed.tmp"  # as a kill during the final save leaves it
    stale_tmp.parent.mkdir(parents=True, exist_ok=True)
    stale_tmp.write_bytes(b"half")

    resumed = run(_teacher(work), ROOT, env=stage_env(work))
    assert "resuming from" in resumed.stderr, resumed.stderr
    runs = _runs(work)
    assert len(runs) == 1 and runs[0].info.run_id == killed[0].info.run_id, "the resumed stage continues its run"
    assert runs[0].info.status == "FINISHED"
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}")
    epochs = sorted({m.step for m in client.get_metric_history(runs[0].info.run_id, "train_loss")})
    assert epochs == list(range(1, EPOCHS + 1)), "the history covers every epoch, before and after the kill"
    assert not list((work / ".checkpoints").iterdir()), "a finished run leaves no state, lock or temp file"
    assert not stale_tmp.exists()


@pytest.mark.slow
def test_changed_training_data_is_not_resumed(tmp_path: Path) -> None:
    if not FASHION_MNIST.is_dir():
        pytest.fail(f"{FASHION_MNIST} missing: the test setup installs dataset-fashion-mnist (make test)")
    work = _work(tmp_path, "w", epochs=8)
    proc = _start_and_wait_for_a_state(work, min_updates=3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # swap the images of two classes: every count stays the same, the data does not
    path = work / "prepared" / "labeled.wds"
    data = load_imageset(path)
    labels = data.labels.copy()
    labels[data.labels == 0], labels[data.labels == 1] = 1, 0
    save_imageset(path, type(data)(data.images, labels, data.ids, data.source))
    rerun = run(_teacher(work), ROOT, env=stage_env(work))
    assert "resuming" not in rerun.stderr, rerun.stderr
    assert not list((work / ".checkpoints").iterdir()), "the killed run's state (other data) is removed too"
    assert {r.info.status for r in _runs(work)} == {"KILLED", "FINISHED"}
