"""Two machines simulated on this one: two torchrun launches ("nodes"), one rank each, on 127.0.0.1, streaming.

Node 0 is the stage as DVC (or a user) starts it with ``distributed.nodes: 2``: it prints the command
node 1 runs, and the test runs exactly that line. The micro teacher, predict and student of two nodes
must equal those of one launch with two ranks (same weights, same pseudo labels), log one MLflow run
per stage, and node 1 must write nothing but its own predict shards. Node 1 is killed (its whole
process group, as when a machine dies) during the teacher: node 0 stops with a clear last line and
the rerun of both nodes resumes to the weights of the uninterrupted launch.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from noisy_student.data import ImageSet, save_imageset
from tests.conftest import ROOT, micro_params, run, stage_env, wait_for_state

JOIN = re.compile(r"^distributed: node 1 of 2 runs: (.+)$", re.MULTILINE)
# installed in node 1's processes (PYTHONPATH): every file it opens for writing, renames into place or
# opens as a SQLite store (MLflow) inside the project folder goes to $WRITE_AUDIT, one path a line
AUDIT = """
import os, sys

_log, _root = os.environ.get("WRITE_AUDIT"), os.environ.get("WRITE_AUDIT_ROOT", "")
if _log:
    _fd, _busy = os.open(_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT), [False]
    _writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND

    def _hook(event, args):
        if _busy[0]:
            return
        path = None
        if event == "open" and args[0] is not None and not isinstance(args[0], int):
            mode, flags = args[1], args[2]
            if (mode and any(c in mode for c in "wax+")) or (mode is None and flags & _writing):
                path = args[0]
        elif event in ("os.rename", "os.replace"):
            path = args[1]
        elif event == "sqlite3.connect":
            path = args[0]
        if path is not None and os.fsdecode(path).startswith(_root):
            _busy[0] = True
            try:
                os.write(_fd, (f"{event} {os.fsdecode(path)}\\n").encode())
            finally:
                _busy[0] = False

    sys.addaudithook(_hook)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _project(work: Path, processes: int, nodes: int, endpoint: str = "") -> Path:
    """Synthetic tars (4 classes of 16-px images, the pool in 3 tars) and micro params for the layout."""
    rng = np.random.default_rng(0)
    for split, n in (("labeled", 96), ("unlabeled", 120), ("test", 40)):
        labels = rng.integers(0, 4, n)
        images = (rng.integers(0, 60, (n, 16, 16, 3)) + 60 * labels[:, None, None, None]).astype(np.uint8)
        data = ImageSet(images, labels, np.arange(n), np.array(["x"] * n))
        save_imageset(work / "prepared" / f"{split}.wds", data, shard_size=48)
    p = micro_params(yaml.safe_load((ROOT / "params.yaml").read_text()))
    # teacher: 96 labeled / batch 16 = 6 updates an epoch, 48 in all, a checkpoint after each
    p["teacher"]["optim"].update(epochs=8, checkpoint_steps=1, eval_every=4)
    p["student"]["optim"].update(epochs=2)
    p["filter"]["confidence_threshold"] = 0.0  # keep the pool: the student sees pseudo labels
    # streamed, as a job that needs several machines would be (in memory, 2 ranks: tests/test_distributed.py)
    p["data"]["residency"] = "stream"
    p["distributed"] = {"processes": processes, "nodes": nodes, "rdzv_endpoint": endpoint, "sync_batchnorm": False}
    (work / "params.yaml").write_text(yaml.safe_dump(p))
    return work


def _stage(work: Path, stage: str, params: str = "params.yaml") -> list[str]:
    args = {
        "teacher": {"--data": "prepared", "--out": "teacher.pt", "--metrics": "teacher.json"},
        "predict": {
            "--iteration": "it1",
            "--teacher": "teacher.pt",
            "--unlabeled": "prepared/unlabeled.wds",
            "--out": "predictions",
            "--metrics": "predict.json",
        },
        "filter_balance": {
            "--iteration": "it1",
            "--predictions": "predictions",
            "--out": "selected.parquet",
            "--metrics": "filter.json",
            "--plot": "confidence.png",
            "--classes-csv": "classes.csv",
            "--bins-csv": "bins.csv",
        },
        "student": {
            "--iteration": "it1",
            "--teacher": "teacher.pt",
            "--selected": "selected.parquet",
            "--data": "prepared",
            "--out": "it1.pt",
            "--metrics": "student.json",
        },
    }[stage]
    files = {k: v if k == "--iteration" else str(work / v) for k, v in args.items()}
    return [sys.executable, "-m", f"stages.{stage}", "--params", str(work / params), *sum(files.items(), ())]


def _env(work: Path) -> dict[str, str]:
    # one thread per rank in both layouts (two ranks on one machine get half of its 2 each), so the
    # same kernels sum in the same order
    return {**os.environ, **stage_env(work), "NOISY_STUDENT_THREADS": "1"}


class _Nodes:
    """A stage started on node 0 (as DVC would) and the line it prints run as node 1."""

    def __init__(self, work: Path, stage: str, audit: Path) -> None:
        attempt = len(list(work.glob(f"{stage}-*-node0.log")))
        self.work, self.log = work, work / f"{stage}-{attempt}-node0.log"
        with open(self.log, "w") as err:
            self.node0 = subprocess.Popen(_stage(work, stage), cwd=ROOT, env=_env(work), stderr=err, text=True)
        deadline, join = time.time() + 120, None
        while join is None and time.time() < deadline and self.node0.poll() is None:
            join = JOIN.search(self.log.read_text())
            time.sleep(0.1)
        assert join is not None, f"node 0 printed no join command:\n{self.log.read_text()}"
        # the audit hook goes first on the PYTHONPATH the line carries (node 0's)
        self.command = re.sub(r"\bPYTHONPATH=", f"PYTHONPATH={audit.parent / 'audit_site'}:", join.group(1))
        hooks = audit.parent / "audit_site"
        hooks.mkdir(exist_ok=True)
        (hooks / "sitecustomize.py").write_text(AUDIT)
        # node 1 is another machine: only what the printed line sets, plus the audit hook
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NOISY_STUDENT", "MLFLOW", "PYTHONPATH"))}
        env.update(PYTHONPATH=str(hooks), WRITE_AUDIT=str(audit), WRITE_AUDIT_ROOT=str(work), NOISY_STUDENT_THREADS="1")
        self.node1_log = work / f"{stage}-{attempt}-node1.log"
        with open(self.node1_log, "w") as out:
            self.node1 = subprocess.Popen(
                ["bash", "-c", f"{self.command} 2>&1 | sed -u 's/^/[node 1] /'"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: killed as a whole, like a machine
            )

    def wait(self, timeout: float = 300) -> tuple[int, int]:
        codes = self.node0.wait(timeout=timeout), self.node1.wait(timeout=timeout)
        return codes

    def logs(self) -> str:
        return self.log.read_text() + self.node1_log.read_text()


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=0, msg=key)


def _runs(work: Path) -> list[tuple[str, str]]:
    """(run name, status) of every MLflow run in the project's store."""
    client = mlflow.MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return sorted((r.info.run_name, r.info.status) for r in runs)


@pytest.mark.slow
def test_two_nodes_on_loopback_match_one_launch_of_two_ranks_and_resume_a_killed_node(tmp_path: Path) -> None:
    one = _project(tmp_path / "one", processes=2, nodes=1)
    two = _project(tmp_path / "two", processes=1, nodes=2, endpoint=f"127.0.0.1:{_free_port()}")
    audit = tmp_path / "node1-writes.txt"

    # teacher: node 1 dies (all its processes at once) once a few updates are checkpointed
    nodes = _Nodes(two, "teacher", audit)
    ckpts = two / ".checkpoints"
    state = wait_for_state(ckpts, "teacher", 6, 8, nodes.node0)
    assert nodes.node0.poll() is None and state, f"the teacher ended before the kill:\n{nodes.logs()}"
    os.killpg(nodes.node1.pid, signal.SIGKILL)
    # rank 0 saved both ranks' resume states (a stream's order is a function of seed, epoch, rank and
    # loader workers: its state is the workers count), each rank its own generator
    ranks = state["ranks"]
    assert len(ranks) == 2 and ranks[0]["batches"] == ranks[1]["batches"] == {"workers": 0}
    assert not torch.equal(ranks[0]["rng"]["cpu"], ranks[1]["rng"]["cpu"]), "each rank its own generator"
    assert nodes.node0.wait(timeout=120) != 0, nodes.logs()
    node0 = nodes.log.read_text()
    last = node0.strip().splitlines()[-1]
    assert last.startswith("distributed: the job of 2 ranks on 2 nodes failed"), node0
    assert "resume" in last
    # before torchrun's own report, the rank that lost its peer says so in one line instead of a traceback
    assert "error: [teacher rank 0/2] another rank of the job stopped (" in node0, node0
    assert "Traceback" not in node0.split("error: [teacher rank 0/2]")[0], node0
    assert not (two / "teacher.pt").exists(), "a failed job must not leave a model behind"

    resumed = _Nodes(two, "teacher", audit)
    assert resumed.wait() == (0, 0), resumed.logs()
    for rank in range(2):
        assert f"[teacher rank {rank}/2] resuming from" in resumed.logs(), resumed.logs()
    assert not list(ckpts.glob("*.pt")), "a finished run removes its checkpoint"
    run(_stage(one, "teacher"), ROOT, env=_env(one))
    _assert_same_weights(two / "teacher.pt", one / "teacher.pt")

    # predict: the two nodes' ranks share the pool's tars; the same Parquet rows as one process labelling
    # them all (labels do not depend on the ranks: the reference needs no torchrun)
    labelled = _Nodes(two, "predict", audit)
    assert labelled.wait() == (0, 0), labelled.logs()
    (one / "single.yaml").write_text((one / "params.yaml").read_text().replace("processes: 2", "processes: 1"))
    run(_stage(one, "predict", "single.yaml"), ROOT, env=_env(one))
    parts = sorted(p.name for p in (two / "predictions").glob("*.parquet"))
    assert parts == sorted(p.name for p in (one / "predictions").glob("*.parquet")) and len(parts) == 3
    for name in parts:
        assert pq.read_table(two / "predictions" / name).equals(pq.read_table(one / "predictions" / name)), name

    # student: labeled + the same selected pseudo labels, two nodes against one launch
    run(_stage(two, "filter_balance"), ROOT, env=_env(two))
    shutil.copy(two / "selected.parquet", one / "selected.parquet")
    student = _Nodes(two, "student", audit)
    assert student.wait() == (0, 0), student.logs()
    run(_stage(one, "student"), ROOT, env=_env(one))
    _assert_same_weights(two / "it1.pt", one / "it1.pt")

    # rank 0 alone tracks and writes: one finished MLflow run per stage, as for one launch, plus the killed
    # attempt's teacher run (ended FAILED by rank 0); node 1 wrote only its share of the predict shards
    # (rank 1 of 2 labels tar 1 of 0, 1, 2)
    finished = _runs(one)  # teacher, predict and student there
    assert [status for _, status in finished] == ["FINISHED"] * 3, finished
    assert _runs(two) == sorted([*finished, ("filter-balance@it1", "FINISHED"), ("teacher", "FAILED")])
    written = [line.split(" ", 1) for line in audit.read_text().splitlines()]
    outputs = {Path(path).relative_to(two).as_posix() for event, path in written if event.startswith("os.re")}
    assert outputs == {"predictions/part-00001.parquet", "predictions/.part-00001.parquet.key"}, audit.read_text()
    assert not [path for event, path in written if event == "sqlite3.connect"], "node 1 opened the MLflow store"
