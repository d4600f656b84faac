"""`noisy-student ui` on a real port: SIGTERM must take down mlflow ui and every worker it started."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path

import psutil
import pytest
import yaml

STARTUP_S = 60  # mlflow imports a lot; on a small shared CPU the first answer takes a while
# mlflow's job runner and its huey consumers notice their server is gone by polling once a second, but a consumer
# still importing when the signal comes polls only afterwards: 15 s was once too short on a loaded 2-core box, and
# 30 s for mlflow ui's own exit once too short in CI; the bound only costs time when something really is left
STOP_S = 120


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def session_processes(sid: int) -> list[psutil.Process]:
    """Every process of session ``sid``: the command and whatever it started, however deep."""
    found = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == sid:
                found.append(proc)
        except ProcessLookupError:
            pass
    return found


def running(procs: Iterable[psutil.Process]) -> list[psutil.Process]:
    """Those still running: a zombie has exited already and only waits for its parent (or init) to reap it."""
    alive = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
        except psutil.NoSuchProcess:
            pass
    return alive


def describe(procs: Iterable[psutil.Process]) -> str:
    lines = []
    for proc in procs:
        try:
            lines.append(f"{proc.pid} (parent {proc.ppid()}): {' '.join(proc.cmdline())[:200]}")
        except psutil.NoSuchProcess:
            pass
    return "\n".join(lines)


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except (urllib.error.URLError, OSError):
        return False


# SIGTERM only: with exec, SIGINT reaches the same mlflow process the same way, and each case costs a UI start-up
@pytest.mark.parametrize("signum", [signal.SIGTERM], ids=["SIGTERM"])
def test_signal_leaves_no_process(tmp_path: Path, signum: signal.Signals) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"device": "cpu"}))
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "NOISY_STUDENT_ROOT": str(tmp_path),
    }
    port = free_port()
    log = tmp_path / "ui.log"
    command = [str(Path(sys.executable).parent / "noisy-student"), "ui", "--port", str(port), "--params", str(params)]
    # its own session: everything it starts is findable by session id, and nothing leaks into ours
    with log.open("w") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    sid = proc.pid
    seen: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + STARTUP_S
        while not answers(f"http://127.0.0.1:{port}/"):
            assert proc.poll() is None, f"ui exited with {proc.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"no HTTP answer on port {port} in {STARTUP_S} s:\n{log.read_text()}"
            time.sleep(0.5)
        # also the descendants: a worker that left the session would still be a leak
        seen = session_processes(sid) + psutil.Process(proc.pid).children(recursive=True)
        assert len(running(seen)) > 1, "mlflow ui started no worker process: nothing to check"
        proc.send_signal(signum)
        # mlflow ui itself counts too: after uvicorn has gone, its interpreter still spends seconds in the final
        # garbage collection (py-spy: gc_collect_main), 8 s idle and 16 s under load on a 2-core box
        deadline = time.monotonic() + STOP_S
        while (left := running(seen + session_processes(sid))) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not left, f"left running after {signum.name}:\n{describe(left)}\n{log.read_text()}"
    finally:
        for leftover in running(seen + session_processes(sid)):
            try:
                leftover.kill()
            except psutil.NoSuchProcess:
                pass
        if proc.poll() is None:
            proc.kill()
            proc.wait()
