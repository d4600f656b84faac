"""Iterating with real DVC, on the micro profile (queued experiment grids: tests/test_tracking_e2e.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPRODUCED, run

DVC = [sys.executable, "-m", "dvc"]


def _lock(repo: Path) -> dict:
    return yaml.safe_load((repo / "dvc.lock").read_text())["stages"]


def _md5(entries: list[dict], path: str) -> str:
    return next(e["md5"] for e in entries if e["path"] == path)


@pytest.mark.slow
@REPRODUCED
def test_second_iteration_is_labeled_by_the_first_student(reproduced_micro: tuple[Path, str]) -> None:
    repo, _ = reproduced_micro  # it1 trained and evaluated
    params = yaml.safe_load((repo / "params.yaml").read_text())
    # iteration 2 overrides its student's batch ratio, as the paper's later iterations do
    params["iterations"] = {"it1": {"teacher": "teacher"}, "it2": {"teacher": "it1", "student": {"unlabeled_ratio": 3}}}
    params["evaluate"] = ["teacher", "it1", "it2"]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run(DVC + ["repro"], repo).stdout
    # adding an iteration trains only it: iteration 1 is up to date
    assert "Running stage 'student@it1'" not in out and "Running stage 'teacher'" not in out, out
    it2 = ("predict@it2", "filter-balance@it2", "student@it2", "eval@it2")
    order = [out.index(f"Running stage '{s}'") for s in it2]
    assert order == sorted(order), out
    lock = _lock(repo)
    it1_student = _md5(lock["student@it1"]["outs"], "models/it1.pt")
    assert _md5(lock["predict@it2"]["deps"], "models/it1.pt") == it1_student
    assert _md5(lock["student@it2"]["deps"], "models/it1.pt") == it1_student
    assert _md5(lock["predict@it1"]["deps"], "models/teacher.pt") == _md5(lock["teacher"]["outs"], "models/teacher.pt")
    assert lock["student@it2"]["params"]["params.yaml"]["iterations.it2"]["student"] == {"unlabeled_ratio": 3}

    # changing iteration 2's override makes only iteration 2's stages stale (its evaluations follow once
    # models/it2.pt changes; the report reads every iteration's params)
    params["iterations"]["it2"]["student"]["unlabeled_ratio"] = 4
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = run(DVC + ["status"], repo).stdout.splitlines()
    stale = {line.rstrip(":") for line in status if line.endswith(":") and not line.startswith(("\t", " "))}
    assert {"predict@it2", "filter-balance@it2", "student@it2"} <= stale, stale
    assert not stale & {"teacher", "predict@it1", "student@it1", "eval@it1", "eval@teacher"}, stale
