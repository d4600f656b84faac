"""bench/gpu_check.sh on a machine without a GPU, and its step / summary plumbing with a fake GPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT

SCRIPT = ROOT / "bench" / "gpu_check.sh"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: bench/gpu_check.sh checks it")
def test_without_a_gpu_it_says_so_in_one_line_and_exits_0() -> None:
    proc = subprocess.run(
        ["bash", str(SCRIPT)], env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: no CUDA GPU visible to torch"), proc.stdout


# stands in for the interpreter: torch sees two GPUs, the tests pass, the predict benchmark fails
FAKE_PYTHON = """#!/usr/bin/env bash
case "$*" in
  *device_count*) echo 2 ;;
  *torch.__version__*) echo "2.x CUDA 12.x" ;;
  "-c import torch") ;;
  *pytest*) echo "3 passed, 1 skipped in 9.0s" ;;
  *train_step.py*) echo "ratio real / bare = 0.931   (target >= 0.9)" ;;
  *predict.py*) echo "predict broke" >&2; exit 3 ;;
esac
"""


def test_with_a_gpu_every_step_lands_in_the_summary_and_a_failure_sets_the_exit_status(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = "#!/usr/bin/env bash\necho 'NVIDIA H200, 143771 MiB'\n"
    for name, text in (("python", FAKE_PYTHON), ("nvidia-smi", smi)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PYTHON": str(bin_dir / "python"), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    env["GPU_CHECK_OUT"] = str(tmp_path / "out")
    proc = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # predict failed
    table = proc.stdout.split("gpu_check on 2 GPU(s)")[1]
    rows = {line.split()[0]: line for line in table.splitlines()[2:]}
    assert set(rows) == {"nvidia-smi", "cuda-tests", "train-step", "predict"}, table
    assert "passed" in rows["nvidia-smi"] and "NVIDIA H200" in rows["nvidia-smi"]
    assert "3 passed, 1 skipped" in rows["cuda-tests"]
    assert "ratio real / bare = 0.931" in rows["train-step"]
    assert "FAILED (exit 3)" in rows["predict"]
    assert (tmp_path / "out" / "predict.log").read_text() == "predict broke\n"
