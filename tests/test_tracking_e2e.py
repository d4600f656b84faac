"""Acceptance: the workspace pipeline and two queued experiments, all in the project's own MLflow store, read
back through a real ``mlflow server`` on that store (its REST API, as the UI reads it).

Queued experiments run in temporary DVC workspaces at once and still log to the project's store. One parent
run per pipeline run, every stage run nested under its own parent, headline metrics and dataset inputs on
each parent, the training experiment kind, system metrics and machine tags on training runs, each student
registered and ``champion`` on the best one.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pytorch
import pytest
import torch
import yaml

from tests.conftest import REPRODUCED, run, run_queue

DVC = [sys.executable, "-m", "dvc"]
TARGETS = ["eval@teacher", "eval@it1"]  # the README's ablation targets: no robustness evaluations
EXPERIMENTS = {"mag2": 2, "mag4": 4}  # queued: noise.randaugment_magnitude, so only the student and its eval rerun


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def mlflow_server(store: Path, tmp_path: Path) -> Iterator[str]:
    """``mlflow server`` on a free loopback port serving the SQLite store ``store``; stopped (its process group)
    on exit."""
    port = _free_port()
    log = open(tmp_path / "mlflow-server.log", "w")  # noqa: SIM115 (closed at teardown)
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--workers", "1", "--backend-store-uri", f"sqlite:///{store}"]
    cmd += ["--artifacts-destination", str(tmp_path / "server-artifacts")]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise AssertionError(f"mlflow server did not start:\n{(tmp_path / 'mlflow-server.log').read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server runs its workers in its own process group
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _api(url: str, path: str, body: dict[str, Any] | None = None, **query: str) -> dict[str, Any]:
    """One REST call: POST ``body`` as JSON, or GET with ``query``."""
    full = f"{url}/api/2.0/mlflow/{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(full, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _search_runs(url: str, experiment_id: str) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    token = None
    while True:
        page = _api(url, "runs/search", {"experiment_ids": [experiment_id], "max_results": 500, "page_token": token})
        runs += page.get("runs", [])
        token = page.get("next_page_token")
        if not token:
            return runs


def _tags(entity: dict[str, Any]) -> dict[str, str]:
    return {t["key"]: t["value"] for t in entity.get("tags", [])}


def _metrics(run: dict[str, Any]) -> dict[str, float]:
    return {m["key"]: m["value"] for m in run["data"].get("metrics", [])}


def _datasets(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Dataset name -> {digest, context, profile} of a run's inputs."""
    out = {}
    for entry in run.get("inputs", {}).get("dataset_inputs", []):
        dataset = entry["dataset"]
        profile = json.loads(dataset["profile"]) if dataset.get("profile") else {}
        context = _tags(entry).get("mlflow.data.context")
        out[dataset["name"]] = {"digest": dataset["digest"], "context": context, "profile": profile}
    return out


@pytest.mark.slow
@REPRODUCED
def test_pipeline_runs_group_their_stage_runs(reproduced_micro: tuple[Path, str], tmp_path: Path) -> None:
    repo, _ = reproduced_micro  # the workspace pipeline, every stage (its runs in repo/mlflow.db)
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", "baseline results"], repo)
    for name, magnitude in EXPERIMENTS.items():
        run(
            DVC + ["exp", "run", "--queue", "-n", name, "-S", f"noise.randaugment_magnitude={magnitude}", *TARGETS],
            repo,
        )
    # both at once: each must find its own parent, and write to the project's store from its temporary workspace
    env = {"MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "0.2"}
    status = run_queue(repo, jobs=2, env=env)
    assert "Failed" not in status, _queue_logs(repo) + status
    shown = run(DVC + ["exp", "show", "--no-pager", "--csv"], repo).stdout
    assert all(name in shown for name in EXPERIMENTS), shown
    assert not list((repo / ".dvc" / "tmp").rglob("mlflow.db"))  # no store left in a temporary workspace

    with mlflow_server(repo / "mlflow.db", tmp_path) as url:
        _check_runs(url, repo, lock)


def _queue_logs(repo: Path) -> str:
    return "".join(
        f"\n--- dvc queue logs {name} ---\n" + run(DVC + ["queue", "logs", name], repo, check=False).stdout
        for name in EXPERIMENTS
    )


def _check_runs(mlflow_server: str, repo: Path, lock: dict[str, Any]) -> None:
    experiment = _api(mlflow_server, "experiments/get-by-name", experiment_name="noisy-student")["experiment"]
    assert _tags(experiment)["mlflow.experimentKind"] == "custom_model_development"  # the UI's training kind
    runs = _search_runs(mlflow_server, experiment["experiment_id"])
    kind = {r["info"]["run_id"]: _tags(r["data"]).get("run_kind") for r in runs}
    parents = {_tags(r["data"])["dvc_exp"]: r for r in runs if kind[r["info"]["run_id"]] == "pipeline"}
    assert sorted(parents) == ["mag2", "mag4", "workspace"], [r["info"]["run_name"] for r in runs]
    assert len([r for r in runs if kind[r["info"]["run_id"]] == "pipeline"]) == 3
    assert {parents[n]["info"]["run_name"] for n in parents} == set(parents)  # named after the experiment

    # every stage run nested under its own pipeline's parent
    children: dict[str, set[str]] = {name: set() for name in parents}
    for r in runs:
        tags = _tags(r["data"])
        if tags.get("run_kind") != "stage":
            continue
        assert tags["mlflow.parentRunId"] == parents[tags["dvc_exp"]]["info"]["run_id"], r["info"]["run_name"]
        children[tags["dvc_exp"]].add(r["info"]["run_name"])
    assert children["workspace"] == set(lock) - {"check-params", "report"}, children["workspace"]  # neither logs a run
    for name in EXPERIMENTS:
        assert children[name] == {"student@it1", "eval@it1"}, children[name]  # the rest was cached

    # headline metrics on every parent: teacher vs student on one row, whichever stages reran
    for name, parent in parents.items():
        metrics = _metrics(parent)
        for key in ("teacher.top1", "it1.top1", "it1.gain", "it1.pseudo_label_accuracy"):
            assert key in metrics, (name, sorted(metrics))
        assert metrics["it1.gain"] == pytest.approx(metrics["it1.top1"] - metrics["teacher.top1"])
        assert "teacher.fgsm_eps16" in metrics and "teacher.pgd10_eps8" in metrics  # the teacher did not change
        params = {p["key"]: p["value"] for p in parent["data"]["params"]}
        assert params["noise.randaugment_magnitude"] == str(EXPERIMENTS.get(name, 9)), name
    assert "it1.fgsm_eps16" in _metrics(parents["workspace"])
    for name in EXPERIMENTS:  # their students changed and eval-FGSM@it1 did not rerun: the baseline's is not theirs
        assert "it1.fgsm_eps16" not in _metrics(parents[name]), sorted(_metrics(parents[name]))
    eval_it1 = json.loads((repo / "metrics" / "eval-it1.json").read_text())  # the workspace's result
    assert _metrics(parents["workspace"])["it1.top1"] == pytest.approx(eval_it1["top1"])

    # dataset inputs: DVC digests and row counts, on the stage runs and gathered on each parent
    selected = next(o["md5"] for o in lock["filter-balance@it1"]["outs"] if o["path"].endswith("selected.parquet"))
    for name, parent in parents.items():
        datasets = _datasets(parent)
        assert {"data/prepared/test.wds", "data/pseudo/it1/selected.parquet"} <= set(datasets), (name, datasets)
        assert datasets["data/pseudo/it1/selected.parquet"]["digest"] == selected
        assert datasets["data/prepared/test.wds"]["profile"] == {"num_rows": 200}
    student = next(r for r in runs if r["info"]["run_name"] == "student@it1" and _tags(r["data"])["dvc_exp"] == "mag2")
    assert _datasets(student)["data/prepared/labeled.wds"]["context"] == "training"

    # where it ran, and how busy the machine was while training (MLflow logs a sample only once an interval
    # has passed, and micro trainings take about a second: at least one of the four has one)
    training = [r for r in runs if _tags(r["data"]).get("stage") in ("teacher", "student")]
    for r in training:
        tags = _tags(r["data"])
        assert tags["env.device"] == "cpu" and tags["env.cpu"] and tags["env.torch"] and tags["env.onednn"]
    sampled = [k for r in training for k in _metrics(r) if k.startswith("system/cpu_utilization")]
    assert sampled, [sorted(_metrics(r)) for r in training]

    # one registered version per student (iteration, experiment), the champion is the best clean top-1
    versions = _api(mlflow_server, "model-versions/search", filter="name = 'noisy-student'")["model_versions"]
    assert sorted(_tags(v)["dvc_exp"] for v in versions) == sorted(parents)
    assert {_tags(v)["iteration"] for v in versions} == {"it1"}
    champion = _api(mlflow_server, "registered-models/alias", name="noisy-student", alias="champion")
    best = max(float(_tags(v)["top1"]) for v in versions)
    assert float(_tags(champion["model_version"])["top1"]) == best
    mlflow.set_tracking_uri(mlflow_server)  # undone after the test (conftest)
    net = mlflow.pytorch.load_model("models:/noisy-student@champion")  # the README's one line
    assert net(torch.rand(2, 1, 28, 28)).shape == (2, 10)
