"""A real `teacher` stage process, killed mid-run, resumes and ends where an uninterrupted run does."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import FASHION_MNIST, ROOT, micro_params, run, stage_env


def _workdir(tmp_path: Path, name: str) -> Path:
    work = tmp_path / name
    work.mkdir()
    p = micro_params(yaml.safe_load((ROOT / "params.yaml").read_text()))
    # 100 labeled images / batch 16 = 6 updates per epoch, 48 in all, a checkpoint after each
    p["teacher"]["optim"].update(epochs=8, checkpoint_steps=1, eval_every=4)
    (work / "params.yaml").write_text(yaml.safe_dump(p))
    return work


def _teacher_cmd(work: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "stages.teacher",
        "--params",
        str(work / "params.yaml"),
        "--data",
        str(work / "prepared"),
        "--out",
        str(work / "teacher.pt"),
        "--metrics",
        str(work / "teacher.json"),
    ]


@pytest.mark.slow
def test_killed_teacher_stage_resumes_and_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    if not FASHION_MNIST.is_dir():
        pytest.fail(f"{FASHION_MNIST} missing: the test setup installs dataset-fashion-mnist (make test)")
    killed, clean = _workdir(tmp_path, "killed"), _workdir(tmp_path, "clean")
    prep = [sys.executable, "-m", "stages.prepare", "--out", "prepared", "--metrics", "prepare.json"]
    run([*prep, "--params", str(killed / "params.yaml")], killed, env=stage_env(killed))
    shutil.copytree(killed / "prepared", clean / "prepared")

    proc = subprocess.Popen(
        _teacher_cmd(killed), cwd=ROOT, env={**os.environ, **stage_env(killed)}, stderr=subprocess.PIPE, text=True
    )
    ckpts = killed / ".checkpoints"
    deadline = time.time() + 120
    state = None
    while time.time() < deadline and proc.poll() is None:
        found = list(ckpts.glob("teacher-*.pt")) if ckpts.is_dir() else []
        if found:
            try:
                state = torch.load(found[0], weights_only=False)
            except (EOFError, RuntimeError, OSError):
                state = None  # cannot happen with atomic writes, but never trust a half-read file
            if state is not None and state["epoch"] * 6 + state["step"] >= 9:
                break
        time.sleep(0.05)
    assert proc.poll() is None, f"the teacher finished before it could be killed:\n{proc.stderr.read()}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "teacher.pt").exists(), "a killed run must not leave a model behind"
    assert state is not None

    resumed = run(_teacher_cmd(killed), ROOT, env=stage_env(killed))
    assert "resuming from" in resumed.stderr, resumed.stderr
    assert not list(ckpts.glob("*.pt")), "a finished run removes its checkpoint"
    run(_teacher_cmd(clean), ROOT, env=stage_env(clean))

    a = torch.load(killed / "teacher.pt", weights_only=True)["state_dict"]
    b = torch.load(clean / "teacher.pt", weights_only=True)["state_dict"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key, rtol=0, atol=0)
