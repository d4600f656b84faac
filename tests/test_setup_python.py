"""scripts/setup.sh picks its interpreter: $PYTHON, else the newest python3.13 / 3.12 / 3.11 that runs."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BASH = shutil.which("bash") or "/bin/bash"


def fake_path(tmp_path: Path, *pythons: str) -> Path:
    """A PATH directory with stub interpreters ``pythons`` and only the tools the script needs before choosing.

    Nothing else: the real python3.11 (pyenv shims, /usr/bin) must not be found.
    """
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "dirname").symlink_to(shutil.which("dirname") or "/usr/bin/dirname")
    for name in pythons:
        stub = bin_dir / name
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(0o755)
    return bin_dir


def choose(path: Path, python: str | None = None) -> subprocess.CompletedProcess:
    env = {"PATH": str(path), "HOME": os.environ.get("HOME", "/")}
    if python is not None:
        env["PYTHON"] = python
    return subprocess.run(
        [BASH, str(ROOT / "scripts" / "setup.sh"), "--print-python"], env=env, capture_output=True, text=True
    )


@pytest.mark.parametrize(
    ("found", "chosen"),
    [(["python3.12"], "python3.12"), (["python3.11", "python3.13"], "python3.13"), (["python3.11"], "python3.11")],
)
def test_newest_supported_python_on_path(tmp_path: Path, found: list[str], chosen: str) -> None:
    result = choose(fake_path(tmp_path, *found))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == chosen


def test_broken_newer_python_is_skipped(tmp_path: Path) -> None:
    # like a pyenv shim of an installed but unselected version: on PATH, fails when run
    bin_dir = fake_path(tmp_path, "python3.11")
    (bin_dir / "python3.13").write_text("#!/bin/sh\necho 'pyenv: python3.13: command not found' >&2\nexit 127\n")
    (bin_dir / "python3.13").chmod(0o755)
    result = choose(bin_dir)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "python3.11"


def test_python_variable_wins(tmp_path: Path) -> None:
    bin_dir = fake_path(tmp_path, "python3.13")
    mine = tmp_path / "my-python"
    mine.write_text("#!/bin/sh\nexit 0\n")
    mine.chmod(0o755)
    result = choose(bin_dir, python=str(mine))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(mine)


def test_python_variable_that_does_not_run(tmp_path: Path) -> None:
    result = choose(fake_path(tmp_path, "python3.13"), python=str(tmp_path / "missing"))
    assert result.returncode == 1
    assert "PYTHON=" in result.stderr and "missing" in result.stderr


def test_no_supported_python(tmp_path: Path) -> None:
    result = choose(fake_path(tmp_path, "python3.10", "python3"))
    assert result.returncode == 1
    assert result.stdout == ""
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1
    assert "3.11-3.13" in message and "PYTHON=/path/to/python" in message
