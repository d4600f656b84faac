"""End to end: real `dvc repro`, `dvc exp run -S`, `dvc push` on the micro profile, real MLflow store."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import mlflow
import mlflow.pytorch
import pandas as pd
import pytest
import torch

from noisy_student.models import load_classifier
from tests.conftest import REPRODUCED, run

DVC = [sys.executable, "-m", "dvc"]
EXPECTED_RUNS = (
    {"prepare", "teacher", "predict@it1", "filter-balance@it1", "student@it1", "eval@teacher", "eval@it1"}
    | {f"{stage}@{model}" for stage in ("eval-A", "eval-C", "eval-P", "eval-FGSM") for model in ("teacher", "it1")}
    | {"robustness-data"}
)


def _runs(repo: Path) -> list[mlflow.entities.Run]:
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    exp = client.get_experiment_by_name("noisy-student")
    assert exp is not None, "the stages did not create the MLflow experiment"
    return client.search_runs([exp.experiment_id], max_results=1000)


@pytest.mark.slow
@REPRODUCED
def test_repro_exp_run_and_push(reproduced_micro: tuple[Path, str]) -> None:
    repo, out = reproduced_micro  # a copy of the micro project after `dvc repro`, and what that repro printed
    for stage in ("prepare", "teacher", "predict@it1", "filter-balance@it1", "student@it1", "eval@teacher", "eval@it1"):
        assert f"'{stage}'" in out, f"stage {stage} did not run:\n{out}"

    for name in ("prepare", "teacher", "predict-it1", "filter-it1", "student-it1", "eval-teacher", "eval-it1"):
        data = json.loads((repo / "metrics" / f"{name}.json").read_text())
        assert data, name
    for model in ("teacher", "it1"):
        acc = json.loads((repo / "metrics" / f"eval-{model}.json").read_text())
        assert 0.0 <= acc["top1"] <= acc["top5"] <= 1.0
        assert acc["images"] == 200
        # eval's per-image answers, for the report's paired statistics
        answers = pd.read_csv(repo / "metrics" / "predictions" / f"eval-{model}.csv")
        assert list(answers.columns) == ["id", "label", "prediction"] and answers["id"].is_unique
        assert len(answers) == 200 and (answers["prediction"] == answers["label"]).mean() == pytest.approx(acc["top1"])
    assert (repo / "metrics" / "plots" / "confidence-it1.png").stat().st_size > 1000
    for model in ("teacher", "it1"):
        rob = repo / "metrics" / "robustness"
        c = json.loads((rob / f"c-{model}.json").read_text())
        assert c["mce"] > 0 and 0 <= c["corrupted_top1"] <= 1
        assert "mfr" in json.loads((rob / f"p-{model}.json").read_text())
        assert json.loads((rob / f"a-{model}.json").read_text())["images"] > 0
        fgsm = json.loads((rob / f"fgsm-{model}.json").read_text())
        clean = fgsm["fgsm_top1_eps0"]
        assert fgsm["fgsm_top1_eps16"] <= clean

    runs = _runs(repo)
    names = {r.info.run_name for r in runs}
    assert EXPECTED_RUNS <= names, names
    student = next(r for r in runs if r.info.run_name == "student@it1")
    assert student.data.params["noise.randaugment_magnitude"] == "9"
    assert "test_top1" in student.data.metrics and "train_loss" in student.data.metrics
    assert student.data.tags["stage"] == "student"
    # the trained student is an MLflow model that loads and classifies a batch of any size
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    logged = client.search_logged_models([student.info.experiment_id])
    model = next(m for m in logged if m.source_run_id == student.info.run_id)
    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    net = mlflow.pytorch.load_model(model.model_uri)
    assert net(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    assert "checkpoint" in {a.path for a in client.list_artifacts(student.info.run_id)}

    report = (repo / "reports" / "report.md").read_text()
    # the gain with its paired statistics: a row of the paired table ending in McNemar's p (cells are padded)
    paired = report.split("## Gains on the same test images (paired)")[1].split("\n## ")[0]
    row = re.compile(r"^\|[^\n]*\|\s*teacher -> it1\s*\|[^\n]*\|\s*[\d.e+-]+\s*\|$", re.M)
    assert "McNemar p" in paired and row.search(paired), paired

    # nothing changed: nothing reruns
    assert "Stage 'teacher' didn't change" in run(DVC + ["repro"], repo).stdout
    # DVC's run cache keeps the training stages: after a seed-1 teacher, going back to seed 0 restores the first
    # teacher rather than training it again (a stage with a git-tracked `out`, not a plot or metric, is not kept)
    run(DVC + ["exp", "run", "-n", "seed1", "-S", "seed=1", "teacher"], repo)
    back = run(DVC + ["exp", "run", "-n", "seed0", "-S", "seed=0", "teacher"], repo).stdout
    assert "Stage 'teacher' is cached - skipping run" in back, back

    # the -S overrides rerun only what depends on the student (noise; FixRes finetune at 32 px) and add the
    # same-network baseline (trained and evaluated; the teacher is not retrained)
    fixres = ["-S", "student.fixres.epochs=1", "-S", "student.fixres.image_size=32", "-S", "student.optim.epochs=2"]
    baseline = ["-S", "supervised=[it1]", "-S", "evaluate=[teacher,it1,supervised-it1]"]
    exp = run(DVC + ["exp", "run", "-n", "mag3", "-S", "noise.randaugment_magnitude=3", *fixres, *baseline], repo)
    exp = exp.stdout
    for downstream in ("student@it1", "eval@it1", "eval-C@it1", "eval-FGSM@it1", "supervised@it1"):
        assert f"Running stage '{downstream}'" in exp, exp
    for stage in ("eval", "eval-A", "eval-C", "eval-P", "eval-FGSM"):
        assert f"Running stage '{stage}@supervised-it1'" in exp, exp
    for upstream in (
        "prepare",
        "teacher",
        "predict@it1",
        "filter-balance@it1",
        "eval@teacher",
        "eval-C@teacher",
        "robustness-data",
    ):
        assert f"Running stage '{upstream}'" not in exp, exp
    shown = json.loads(run(DVC + ["exp", "show", "--json"], repo).stdout)
    assert "mag3" in json.dumps(shown)
    mag3 = [
        r
        for r in _runs(repo)
        if r.info.run_name == "student@it1" and r.data.params["noise.randaugment_magnitude"] == "3"
    ]
    assert len(mag3) == 1
    # the finetuned student resizes its inputs itself; every evaluation ran on it
    student_metrics = json.loads((repo / "metrics" / "student-it1.json").read_text())
    assert student_metrics["fixres_image_size"] == 32 and student_metrics["epochs"] == 2
    fixed, spec, _ = load_classifier(repo / "models" / "it1.pt")
    assert spec.input_size == 32 and fixed(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert json.loads((repo / "metrics" / "robustness" / "fgsm-it1.json").read_text())["fgsm_top1_eps16"] >= 0
    # the baseline: the student's network and noise (the teacher's magnitude is 9), the teacher's epochs (1, the
    # student's 2); its gains in the paired table
    (_, spec, meta), (_, it1, _), (_, teacher, teacher_meta) = (
        load_classifier(repo / "models" / f"{m}.pt") for m in ("supervised-it1", "it1", "teacher")
    )
    assert spec.arch == it1.arch and meta["noise"]["randaugment_magnitude"] == 3
    assert teacher_meta["noise"]["randaugment_magnitude"] == 9
    assert meta["epochs"] == teacher_meta["epochs"] == 1
    assert "supervised@it1" in {r.info.run_name for r in _runs(repo)}
    paired = (repo / "reports" / "report.md").read_text().split("(paired)")[1].split("\n## ")[0]
    for label in ("teacher -> supervised-it1", "supervised-it1 -> it1"):
        assert re.search(rf"^\|[^\n]*\|\s*{label}\s*\|[^\n]*\|\s*[\d.e+-]+\s*\|$", paired, re.M), paired

    # outputs go to the default local remote
    run(DVC + ["push"], repo)
    assert any((repo.parent / "remote").rglob("*")), "dvc push wrote nothing to the local remote"
