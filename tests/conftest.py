"""Shared fixtures: a micro copy of this project in a temporary git repository."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
PROJECT_FILES = ("src", "stages", "dvc.yaml", "params.yaml", "pyproject.toml", ".dvcignore")

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two pytest workers on the 2-core box: one torch thread each (in these processes and
    # in the stages they start, unless a test sets its own count), or they oversubscribe the cores
    os.environ.setdefault("NOISY_STUDENT_THREADS", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def micro_params(base: dict[str, Any]) -> dict[str, Any]:
    """Shrink the default params to a seconds-long run: tiny arch, few hundred images, one epoch."""
    p = yaml.safe_load(yaml.safe_dump(base))
    p["precision"] = "fp32"  # tests compare against float32 references; bf16 has its own tests
    # one iteration keeps the suite short; tests of iterating add it2 themselves
    p["iterations"] = {"it1": {"teacher": "teacher"}}
    p["evaluate"] = ["teacher", "it1"]
    # 128 images per tar: the pool is three tars (three predict shards), the test set two
    p["data"].update(labeled_per_class=10, unlabeled_size=300, test_size=200, ood_images=40, wds_shard_size=128)
    for section in ("teacher", "student"):
        p[section]["model"] = {"arch": "test_resnet", "small_image": True}
        p[section]["optim"].update(epochs=1, batch_size=16, eval_every=1, warmup_epochs=0, compile=False)
    p["student"]["unlabeled_ratio"] = 2
    p["filter"].update(confidence_threshold=0.0, images_per_class=20)
    p["robustness"].update(
        reference_train_images=2000, c_images=20, p_images=10, p_frames=4, attack_images=40, fgsm_epsilons=[0, 4, 16]
    )
    return p


def _env(env: dict[str, str] | None) -> dict[str, str]:
    full_env = {**os.environ, **(env or {})}
    # the project's venv first, so `python` in dvc.yaml is the one that has the package
    full_env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{full_env.get('PATH', '')}"
    return full_env


def run(
    cmd: list[str], cwd: Path, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=_env(env), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def run_queue(repo: Path, jobs: int, env: dict[str, str] | None = None, timeout: float = 900) -> str:
    """``dvc queue start -j jobs``, wait until nothing is queued or running, stop the workers; the last
    ``dvc queue status``.

    The workers outlive ``dvc queue start`` and inherit its stdout / stderr: with pipes (:func:`run`) the
    call would wait until they exit, which can be never (seen: a suite hung 10 minutes on an idle worker).
    So their output goes to a file, and they are stopped here rather than left to the next test.
    """
    dvc = [sys.executable, "-m", "dvc"]
    with (repo.parent / "queue-workers.log").open("a") as log:
        start = subprocess.run(
            [*dvc, "queue", "start", "-j", str(jobs)], cwd=repo, env=_env(env), stdout=log, stderr=log
        )
    assert start.returncode == 0, (repo.parent / "queue-workers.log").read_text()
    deadline = time.time() + timeout
    try:
        while True:
            status = run([*dvc, "queue", "status"], repo, env=env).stdout
            if "Queued" not in status and "Running" not in status:
                return status
            # a loaded CI box can be slow; when it is too slow, say so
            assert time.time() < deadline, f"queue still busy after {timeout} s:\n{status}"
            time.sleep(3)
    finally:
        run([*dvc, "queue", "stop", "--kill"], repo, env=env, check=False)


def stage_env(work: Path) -> dict[str, str]:
    """Environment of a stage run by hand in the folder ``work``: its own project root and MLflow store, one thread."""
    return {
        "NOISY_STUDENT_ROOT": str(work),
        "NOISY_STUDENT_THREADS": "1",
        "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
        "PYTHONPATH": str(ROOT),
    }


@pytest.fixture(autouse=True)
def _tracking_uri_restored() -> Iterator[None]:
    """Undo a test's ``mlflow.set_tracking_uri``: it also sets MLFLOW_TRACKING_URI in this process's environment,
    which every later stage this worker starts would inherit, logging to that test's store (seen: queued
    experiments' runs went to another test's copy)."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if os.environ.get("MLFLOW_TRACKING_URI") != before and "mlflow" in sys.modules:
        import mlflow

        mlflow.set_tracking_uri(before)  # None unsets both mlflow's global and the variable


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Torch on one thread for a module: on a small shared CPU, intra-op threads contend and small ops crawl."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_project(tmp_path: Path, params: dict[str, Any]) -> Path:
    """A committed git + DVC repository at ``tmp_path/repo`` holding this project with ``params``.

    The default remote is a local directory, ``tmp_path/remote``.
    """
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in PROJECT_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, repo / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        elif src.exists():
            shutil.copy2(src, repo / name)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (repo / ".gitignore").write_text("mlflow.db\nmlartifacts/\n.checkpoints/\n")
    run(["git", "init", "-q", "-b", "main"], repo)
    run(["git", "config", "user.email", "ci@example.com"], repo)
    run(["git", "config", "user.name", "CI"], repo)
    run([sys.executable, "-m", "dvc", "init", "-q"], repo)
    run([sys.executable, "-m", "dvc", "config", "core.analytics", "false"], repo)
    run([sys.executable, "-m", "dvc", "remote", "add", "-d", "local", str(tmp_path / "remote")], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", "project"], repo)
    return repo


@pytest.fixture
def micro_project(tmp_path: Path) -> Path:
    """A git + DVC repository holding this project with micro params, committed."""
    if not FASHION_MNIST.is_dir():
        pytest.fail(f"{FASHION_MNIST} missing: the test setup installs dataset-fashion-mnist (make test)")
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    return make_project(tmp_path, micro_params(base))


# the end-to-end tests that start from one reproduced micro pipeline run in one xdist group (`make test` runs
# `pytest --dist loadgroup`): one worker builds the pipeline once and runs them all, the other worker takes
# every other test meanwhile. pytest 9.2 silently breaks the grouping (pytest-xdist#1386: the "@group" suffix
# xdist adds to node ids no longer takes), so constraints.txt pins pytest 9.1 and reproduced_micro checks it.
GROUP = "reproduced-micro"
REPRODUCED = pytest.mark.xdist_group(GROUP)


@pytest.fixture(scope="session")
def _reproduced_micro(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The micro project after one real ``dvc repro`` (the default iteration it1), and that repro's output."""
    if not FASHION_MNIST.is_dir():
        pytest.fail(f"{FASHION_MNIST} missing: the test setup installs dataset-fashion-mnist (make test)")
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    repo = make_project(tmp_path_factory.mktemp("reproduced"), micro_params(base))
    # system metrics sampled every 0.2 s: micro trainings take about a second (tests/test_tracking_e2e.py)
    sampling = {"MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "0.2"}
    out = run([sys.executable, "-m", "dvc", "repro"], repo, env=sampling).stdout
    return repo, out


@pytest.fixture
def reproduced_micro(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, str]:
    """A private copy of the reproduced micro project (outputs, DVC cache, git history, MLflow store) and the
    output of the ``dvc repro`` that built it; its default remote is ``tmp_path/remote``.

    The copy's MLflow experiment keeps the original's artifact folder (MLflow stores it as an absolute URI):
    runs logged in the copy put their artifacts there, under their own run ids.
    """
    if getattr(request.config.option, "loadgroup", False) and not request.node.nodeid.endswith(f"@{GROUP}"):
        # checked before building: a split group would build the project once per worker, minutes each
        pytest.fail(f"pytest-xdist did not group {request.node.nodeid} (--dist loadgroup, pytest-xdist#1386)")
    original, out = request.getfixturevalue("_reproduced_micro")
    repo = tmp_path / "repo"
    shutil.copytree(original, repo, symlinks=True)
    # --local: .dvc/config.local (git-ignored), so the copy's committed tree stays as the original's
    run([sys.executable, "-m", "dvc", "remote", "modify", "--local", "local", "url", str(tmp_path / "remote")], repo)
    return repo, out


def wait_for_state(
    folder: Path, run: str, updates_per_epoch: int, at_least: int, proc: subprocess.Popen, timeout: float = 180
) -> dict[str, Any]:
    """The resume state of training run ``run`` in ``folder`` once it is ``at_least`` updates in, while ``proc``
    still runs; ``{}`` if ``proc`` ended or ``timeout`` passed first (the caller's assertion says which)."""
    import torch  # here: most test files that import conftest need no torch

    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        for found in folder.glob(f"{run}-*.pt") if folder.is_dir() else []:
            try:
                state = torch.load(found, weights_only=True)
            except (EOFError, RuntimeError, OSError):  # being written
                continue
            if state["epoch"] * updates_per_epoch + state["step"] >= at_least:
                return state
        time.sleep(0.05)
    return {}
