"""The report: pure table functions on hand-made frames, and the stage on a hand-made metrics folder + MLflow store."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.entities import Metric, Param

from noisy_student.config import load_params, parse_params
from noisy_student.report.build import write_report
from noisy_student.report.history import mlflow_runs, training_histories
from noisy_student.report.inputs import paired_gains, robustness_gains
from noisy_student.report.tables import (
    ablation_table,
    iteration_table,
    natural_key,
    ordered_models,
    param_diff,
    summary_table,
)
from noisy_student.tracking import tracking_uri
from tests.conftest import ROOT

# ---------------------------------------------------------------- pure functions


def test_summary_table_converts_units_and_leaves_gaps() -> None:
    models = pd.DataFrame.from_dict(
        {
            "teacher": {"eval.top1": 0.8, "a.top1": 0.4, "c.mce": 110.0, "c.corrupted_top1": 0.6, "p.mfr": 80.0},
            "it1": {
                "eval.top1": 0.85,
                "fgsm.fgsm_top1_eps2": 0.7,
                "fgsm.fgsm_top1_eps8": 0.5,
                "fgsm.pgd10_top1_eps8": 0.45,
            },
        },
        orient="index",
    )
    table = summary_table(models, (2.0, 8.0), experiment="exp-a").set_index("model")
    assert list(table.index) == ["teacher", "it1"]
    assert (table["experiment"] == "exp-a").all()
    assert table.loc["it1", "clean top-1 %"] == pytest.approx(85.0)
    assert table.loc["teacher", "C mCE"] == 110.0  # already x100: not scaled again
    assert table.loc["it1", "FGSM eps=8 %"] == pytest.approx(50.0)
    assert table.loc["it1", "PGD-10 eps=8 %"] == pytest.approx(45.0)
    # a stage that has not run is a gap, not an error
    assert math.isnan(table.loc["it1", "A top-1 %"]) and math.isnan(table.loc["teacher", "FGSM eps=2 %"])


def test_iteration_table_chains_teachers() -> None:
    inputs = pd.DataFrame(
        [
            ["it1", "teacher", "resnet10t", "resnet18d", 0.80, 0.82, 0.79, 600, 550],
            ["it2", "it1", "resnet18d", "resnet26d", 0.82, None, None, None, None],
        ],
        columns=[
            "iteration",
            "teacher",
            "teacher_arch",
            "student_arch",
            "teacher_top1",
            "student_top1",
            "pseudo_label_accuracy",
            "selected_total",
            "selected_unique",
        ],
    )
    table = iteration_table(inputs, experiment="workspace")
    first, second = table.iloc[0], table.iloc[1]
    assert first["teacher -> student"] == "teacher -> it1" and first["arch"] == "resnet10t -> resnet18d"
    assert first["gain (points)"] == pytest.approx(2.0)
    assert first["pseudo-label acc %"] == pytest.approx(79.0)
    assert first["selected rows"] == 600 and str(table["selected rows"].dtype) == "Int64"
    assert second["teacher -> student"] == "it1 -> it2"
    assert math.isnan(second["student top-1 %"]) and pd.isna(second["selected rows"])


def _run(exp: str, name: str, t: int, top1: float | None = None, **params: Any) -> dict[str, Any]:
    return {
        "dvc_exp": exp,
        "run_name": name,
        "start_time": t,
        "params_hash": f"h-{exp}",
        "top1": float("nan") if top1 is None else top1,
        "params": {k.replace("__", "."): str(v) for k, v in params.items()},
    }


BASE_PARAMS = {"pseudo_labels__mode": "soft", "noise__randaugment_magnitude": 9}


def _history() -> pd.DataFrame:
    return pd.DataFrame(
        [
            _run("workspace", "teacher", 1, teacher__model__arch="resnet10t"),
            _run("workspace", "eval@teacher", 2, 0.80),
            _run("workspace", "student@it1", 3, **BASE_PARAMS),
            _run("workspace", "eval@it1", 4, 0.81),
            # an experiment reruns only the student and its evals: no eval@teacher in its group
            _run("hard", "student@it1", 5, **{**BASE_PARAMS, "pseudo_labels__mode": "hard"}),
            _run("hard", "eval@it1", 6, 0.79),
            # run twice: the later run is the result
            _run("mag3", "student@it1", 7, **{**BASE_PARAMS, "noise__randaugment_magnitude": 3}),
            _run("mag3", "eval@it1", 8, 0.70),
            _run("mag3", "student@it1", 9, **{**BASE_PARAMS, "noise__randaugment_magnitude": 3}),
            _run("mag3", "eval@it1", 10, 0.83),
            # a two-iteration experiment: its last student is the one compared
            _run("two-it", "eval@teacher", 11, 0.78),
            _run("two-it", "eval@it1", 12, 0.80),
            _run("two-it", "eval@it2", 13, 0.84),
        ]
    )


def test_ablation_table_groups_experiments_against_the_baseline() -> None:
    table = ablation_table(_history()).set_index("experiment")
    assert list(table.index) == ["workspace", "hard", "mag3", "two-it"]
    assert table.loc["workspace", "changed params"] == "(baseline)"
    assert table.loc["workspace", "student top-1 %"] == pytest.approx(81.0)
    assert table.loc["hard", "changed params"] == "pseudo_labels.mode=hard"
    # no teacher evaluation in the group and no checkpoint hashes (runs logged before the tags): the
    # baseline's, and the table says it is a guess
    assert table.loc["hard", "teacher top-1 %"] == pytest.approx(80.0)
    assert table.loc["hard", "teacher from"] == "workspace (assumed)"
    assert table.loc["hard", "gain (points)"] == pytest.approx(-1.0)
    assert table.loc["mag3", "changed params"] == "noise.randaugment_magnitude=3"
    assert table.loc["mag3", "student top-1 %"] == pytest.approx(83.0)
    assert table.loc["mag3", "runs"] == 4
    assert table.loc["two-it", "student"] == "it2"
    assert table.loc["two-it", "teacher top-1 %"] == pytest.approx(78.0)
    assert table.loc["two-it", "teacher from"] == "two-it"
    assert table.loc["hard", "params_hash"] == "h-hard"


def test_ablation_table_other_baseline_and_empty_history() -> None:
    table = ablation_table(_history(), baseline="hard").set_index("experiment")
    assert list(table.index)[0] == "hard"
    assert table.loc["mag3", "changed params"] == "noise.randaugment_magnitude=3, pseudo_labels.mode=soft"
    empty = ablation_table(pd.DataFrame())
    assert empty.empty and "student top-1 %" in empty.columns


def test_ablation_baseline_is_the_workspace_and_stopped_runs_still_count() -> None:
    history = pd.concat(
        [
            _history(),
            pd.DataFrame(
                [
                    # stopped after training (no eval run): its student's last test accuracy stands in
                    _run("no-aug", "student@it1", 20, 0.86, **BASE_PARAMS, noise__unlabeled_augment=False),
                    # a param added after the baseline ran, at its default value: not a change
                    _run("newer", "student@it1", 21, 0.82, **BASE_PARAMS, noise__unlabeled_augment=True),
                ]
            ),
        ]
    )
    defaults = {"pseudo_labels.mode": "soft", "noise.randaugment_magnitude": "9", "noise.unlabeled_augment": "True"}
    table = ablation_table(history, defaults=defaults, baseline_top1={"teacher": 0.85, "it1": 0.851}).set_index(
        "experiment"
    )
    # the committed workspace results, not the older runs stored under the same name
    assert table.loc["workspace", "student top-1 %"] == pytest.approx(85.1)
    assert table.loc["workspace", "teacher top-1 %"] == pytest.approx(85.0)
    assert table.loc["no-aug", "student top-1 %"] == pytest.approx(86.0)
    assert table.loc["no-aug", "changed params"] == "noise.unlabeled_augment=False"
    assert table.loc["no-aug", "gain (points)"] == pytest.approx(1.0)
    assert table.loc["newer", "changed params"] == ""


def _tagged(exp: str, name: str, t: int, top1: float | None = None, **tags: Any) -> dict[str, Any]:
    """A run as :func:`mlflow_runs` reads it from stage_run + tag_checkpoints: checkpoint hashes, pipeline params.

    Student runs log their own sections only (here ``pseudo_labels.mode``), as stage_run does.
    """
    own = tags.pop("mode", None)
    return {**_run(exp, name, t, top1, **({"pseudo_labels__mode": own} if own else {})), **tags}


BASE_FULL = {"data.labeled_per_class": "25", "pseudo_labels.mode": "soft", "teacher.epochs": "100"}
T200 = {**BASE_FULL, "teacher.epochs": "200"}
FROM_TEACHER = {"teacher_name": "teacher"}


def _cached_teacher_history() -> pd.DataFrame:
    """The fig5 case: an experiment whose 200-epoch teacher was trained earlier, in another experiment."""
    return pd.DataFrame(
        [
            _tagged("workspace", "teacher", 1, checkpoint_md5="A", pipeline_params=BASE_FULL),
            _tagged("workspace", "eval@teacher", 2, 0.8489, checkpoint_md5="A", pipeline_params=BASE_FULL),
            _tagged("workspace", "student@it1", 3, mode="soft", teacher_md5="A", checkpoint_md5="S0", **FROM_TEACHER),
            _tagged("workspace", "eval@it1", 4, 0.8512, checkpoint_md5="S0", pipeline_params=BASE_FULL),
            # a 200-epoch teacher, trained and evaluated in its own experiment
            _tagged("t200", "teacher", 5, checkpoint_md5="B", pipeline_params=T200),
            _tagged("t200", "eval@teacher", 6, 0.8718, checkpoint_md5="B", pipeline_params=T200),
            # the same teacher params again: DVC restores teacher + eval@teacher from its cache, no runs for them
            _tagged("fig5-soft", "student@it1", 7, mode="soft", teacher_md5="B", checkpoint_md5="S1", **FROM_TEACHER),
            _tagged("fig5-soft", "eval@it1", 8, 0.8481, checkpoint_md5="S1", pipeline_params=T200),
            # a changed data param that only cached stages read: none of the group's own runs logged it
            _tagged(
                "fig5-hard",
                "student@it1",
                9,
                mode="hard",
                teacher_md5="A",
                checkpoint_md5="S2",
                pipeline_params={**BASE_FULL, "data.labeled_per_class": "10", "pseudo_labels.mode": "hard"},
                **FROM_TEACHER,
            ),
            _tagged("fig5-hard", "eval@it1", 10, 0.80, checkpoint_md5="S2"),
            # its teacher's runs are not in the store: the number is unknown, not the baseline's
            _tagged("lost", "predict@it1", 11, teacher_md5="C", **FROM_TEACHER),
            _tagged("lost", "eval@it1", 12, 0.83, checkpoint_md5="S3"),
        ]
    )


def test_ablation_teacher_follows_the_checkpoint_hash_not_the_group() -> None:
    table = ablation_table(_cached_teacher_history()).set_index("experiment")
    assert list(table.index) == ["workspace", "t200", "fig5-soft", "fig5-hard", "lost"]
    soft = table.loc["fig5-soft"]
    assert soft["teacher top-1 %"] == pytest.approx(87.18)
    assert soft["teacher from"] == "t200"
    assert soft["gain (points)"] == pytest.approx(-2.37)
    # the baseline's teacher, found by its hash from an experiment that did not evaluate it
    assert table.loc["fig5-hard", "teacher top-1 %"] == pytest.approx(84.89)
    assert table.loc["fig5-hard", "teacher from"] == "workspace"
    assert table.loc["t200", "teacher from"] == "t200"
    assert math.isnan(table.loc["lost", "teacher top-1 %"]) and table.loc["lost", "teacher from"] == ""
    assert math.isnan(table.loc["lost", "gain (points)"])


def test_ablation_teacher_through_earlier_students_and_the_committed_baseline() -> None:
    history = pd.concat(
        [
            _cached_teacher_history(),
            pd.DataFrame(
                [
                    # only iteration 2 reran: its teacher is it1 (S0, trained in the workspace from teacher A)
                    _tagged("it2-only", "predict@it2", 20, teacher_md5="S0", teacher_name="it1"),
                    _tagged("it2-only", "eval@it2", 21, 0.86, checkpoint_md5="S4"),
                ]
            ),
        ]
    )
    table = ablation_table(history).set_index("experiment")
    assert table.loc["it2-only", "teacher top-1 %"] == pytest.approx(84.89)
    assert table.loc["it2-only", "teacher from"] == "workspace"
    # the workspace as baseline: its committed teacher number stands for every experiment sharing its teacher
    defaults = {**BASE_FULL, "noise.randaugment_magnitude": "9"}
    table = ablation_table(history, defaults=defaults, baseline_top1={"teacher": 0.85, "it1": 0.86})
    table = table.set_index("experiment")
    assert table.loc["fig5-hard", "teacher top-1 %"] == pytest.approx(85.0)
    assert table.loc["fig5-soft", "teacher top-1 %"] == pytest.approx(87.18)
    assert table.loc["fig5-soft", "changed params"] == "teacher.epochs=200"


def test_ablation_changed_params_come_from_the_whole_params_file() -> None:
    table = ablation_table(_cached_teacher_history()).set_index("experiment")
    assert table.loc["fig5-hard", "changed params"] == "data.labeled_per_class=10, pseudo_labels.mode=hard"
    # the teacher's param, though the group's only training run is a student's
    assert table.loc["fig5-soft", "changed params"] == "teacher.epochs=200"
    assert table.loc["t200", "changed params"] == "teacher.epochs=200"


def test_small_helpers() -> None:
    assert param_diff({"a": "1", "b": "2", "c": "3"}, {"a": "1", "b": "3"}) == "b=2, c=3"
    assert sorted(["it10", "it2", "it1"], key=natural_key) == ["it1", "it2", "it10"]
    assert ordered_models(["it2", "teacher", "it1"]) == ["teacher", "it1", "it2"]


# ---------------------------------------------------------------- the stage entry point


def _write(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def _metrics_folder(root: Path) -> Path:
    """What a two-iteration pipeline leaves in metrics/ (it2 trained but its robustness evals not run yet)."""
    m = root / "metrics"
    for model, top1 in (("teacher", 0.80), ("it1", 0.82), ("it2", 0.83)):
        _write(m / f"eval-{model}.json", {"top1": top1, "top5": 0.99, "images": 200})
    for model, shift in (("teacher", 0.0), ("it1", 0.02)):
        _write(m / "robustness" / f"a-{model}.json", {"top1": 0.40 + shift})
        c = {"mce": 100.0 - 10 * shift, "corrupted_top1": 0.6 + shift, "mce_ci_low": 95.0, "mce_ci_high": 104.25}
        _write(m / "robustness" / f"c-{model}.json", c)
        _write(m / "robustness" / f"p-{model}.json", {"mfr": 80.0})
        fgsm = {f"fgsm_top1_eps{e}": 0.7 - e / 40 + shift for e in (0, 4, 16)}
        _write(m / "robustness" / f"fgsm-{model}.json", {**fgsm, "pgd10_top1_eps8": 0.3})
    _write(m / "predict-it1.json", {"pseudo_label_accuracy": 0.79})
    _write(m / "filter-it1.json", {"total": 600, "unique": 550})
    _write(m / "predict-it2.json", {"pseudo_label_accuracy": 0.81})
    _write(m / "filter-it2.json", {"total": 620, "unique": 560})
    # per-image answers of the teacher (right on ids 0-159) and it1 (right on 4-167, rows in another order):
    # it1 alone right on 8 images, the teacher alone on 4; it2's file is missing
    labels = [i % 10 for i in range(200)]
    for model, right in (("teacher", range(160)), ("it1", range(4, 168))):
        rows = [(i, labels[i], labels[i] if i in right else (labels[i] + 1) % 10) for i in range(200)]
        if model == "it1":
            rows.reverse()
        (m / "predictions").mkdir(exist_ok=True)
        frame = pd.DataFrame(rows, columns=["id", "label", "prediction"])
        frame.to_csv(m / "predictions" / f"eval-{model}.csv", index=False)
    return m


def _fake_runs(uri: str) -> None:
    """Runs named and tagged like stage_run's: a baseline repro and one experiment that reran the student."""
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment("noisy-student")
    history = [
        ("workspace", "eval", "teacher", {"eval.batch_size": "512"}, 0.80),
        ("workspace", "student", "it1", {"pseudo_labels.mode": "soft"}, None),
        ("workspace", "eval", "it1", {"eval.batch_size": "512"}, 0.82),
        ("hard-labels", "student", "it1", {"pseudo_labels.mode": "hard"}, None),
        ("hard-labels", "eval", "it1", {"eval.batch_size": "512"}, 0.815),
    ]
    for t, (exp, stage, it, params, top1) in enumerate(history):
        tags = {"stage": stage, "iteration": it, "dvc_exp": exp, "git_rev": "abc", "params_hash": f"hash-{exp}"}
        run = client.create_run(exp_id, start_time=1000 + t, tags=tags, run_name=f"{stage}@{it}")
        metrics = [Metric("top1", top1, 1000 + t, 0)] if top1 is not None else []
        if stage == "student":  # training runs log test top-1 at their eval epochs
            metrics += [Metric("test_top1", 0.5 + 0.1 * e + (exp == "hard-labels") * 0.01, 1000 + t, e) for e in (1, 2)]
        client.log_batch(run.info.run_id, metrics=metrics, params=[Param(k, v) for k, v in params.items()])
        client.set_terminated(run.info.run_id)


def test_report_entry_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    metrics = _metrics_folder(tmp_path)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["iterations"] = {"it1": {"teacher": "teacher"}, "it2": {"teacher": "it1"}}
    params["evaluate"] = ["teacher", "it1", "it2"]
    params["robustness"]["fgsm_epsilons"] = [0, 4, 16]
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _fake_runs(uri)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    monkeypatch.setenv("MPLBACKEND", "Agg")

    out = tmp_path / "reports" / "report.md"
    write_report(
        metrics=metrics,
        params=load_params(params_file),
        uri=tracking_uri(),
        out=out,
        plots=None,
        mlflow_history=True,
        baseline="workspace",
    )

    text = out.read_text()
    for png in ("accuracy.png", "ablations.png", "curves.png"):
        assert (out.parent / png).stat().st_size > 1000
        assert f"]({png})" in text  # linked relative to the report
    # the three tables, parsed back from the Markdown
    tables = [pd.read_csv(_pipe_table(block), sep="|") for block in text.split("\n\n") if block.startswith("| ")]
    assert len(tables) == 6, text
    summary, intervals, iterations, paired, robustness, ablations = (
        t.set_index(t.columns[1 if i < 5 else 0]) for i, t in enumerate(tables)
    )
    # no per-item robustness files here: the pairs are listed without values (tested with files below)
    assert list(robustness.index) == ["teacher -> it1", "it1 -> it2", "teacher -> it2"]
    assert list(robustness.columns) == ["experiment"]
    # the intervals where the stages wrote them; the value alone for metrics without one
    assert intervals.loc["teacher", "C mCE"] == "100.0 [95.0, 104.2]"
    assert float(intervals.loc["teacher", "P mFR"]) == 80.0 and pd.isna(intervals.loc["it2", "P mFR"])
    assert list(summary.index) == ["teacher", "it1", "it2"]
    assert (summary["experiment"] == "workspace").all()
    assert summary.loc["it1", "clean top-1 %"] == pytest.approx(82.0)
    # of the paper's budgets 2 / 8 / 16 only those evaluated are shown
    assert summary.loc["it1", "FGSM eps=16 %"] == pytest.approx(32.0) and "FGSM eps=4 %" not in summary
    assert summary.loc["teacher", "PGD-10 eps=8 %"] == pytest.approx(30.0)
    assert math.isnan(summary.loc["it2", "A top-1 %"])
    assert list(iterations.index) == ["it1", "it2"]
    assert iterations.loc["it2", "teacher -> student"] == "it1 -> it2"
    assert iterations.loc["it2", "pseudo-label acc %"] == pytest.approx(81.0)
    assert iterations.loc["it2", "selected rows"] == 620
    assert iterations.loc["it1", "gain (points)"] == pytest.approx(2.0)
    # paired: each student against its labeler, and the last student against the first teacher
    assert list(paired.index) == ["teacher -> it1", "it1 -> it2", "teacher -> it2"]
    it1 = paired.loc["teacher -> it1"]
    assert (it1["images"], it1["B only"], it1["A only"]) == (200, 8, 4)
    assert it1["gain (points)"] == pytest.approx(2.0)
    assert it1["McNemar p"] == pytest.approx(2 * (1 + 12 + 66 + 220 + 495) / 4096, abs=5e-4)  # 8 of 12, two-sided
    low, high = (float(v) for v in it1["95 % CI (points)"].strip("[]").split(","))
    assert low < 2.0 < high and low > -2.5 and high < 6.5  # d's sd ~0.245: about +-3.4 points around 2
    assert paired.loc["it1 -> it2"].drop("experiment").isna().all()  # it2 has no per-image predictions
    assert list(ablations.index) == ["workspace", "hard-labels"]
    assert ablations.loc["hard-labels", "changed params"] == "pseudo_labels.mode=hard"
    assert ablations.loc["hard-labels", "student top-1 %"] == pytest.approx(81.5)
    assert ablations.loc["hard-labels", "teacher top-1 %"] == pytest.approx(80.0)


def test_report_without_a_store_writes_every_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No MLflow store yet (a fresh clone): the report still has its tables and both PNGs, and creates no store."""
    metrics = _metrics_folder(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'absent.db'}")
    out = tmp_path / "report.md"
    write_report(
        metrics=metrics,
        params=load_params(ROOT / "params.yaml"),
        uri=tracking_uri(),
        out=out,
        plots=None,
        mlflow_history=True,
        baseline="workspace",
    )
    assert not (tmp_path / "absent.db").exists()
    assert all((tmp_path / f"{name}.png").is_file() for name in ("ablations", "accuracy", "curves"))
    assert "(nothing recorded yet)" in out.read_text()


def _pipe_table(block: str) -> Any:
    """A Markdown pipe table -> a CSV-like buffer pandas reads (drop the alignment row, trim cells)."""
    import io

    lines = [line.strip().strip("|") for line in block.strip().splitlines() if not set(line) <= set("|:- ")]
    return io.StringIO("\n".join("|".join(cell.strip() for cell in line.split("|")) for line in lines))


def test_training_histories_take_the_latest_run_of_each_experiment(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _fake_runs(uri)
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp_id = client.get_experiment_by_name("noisy-student").experiment_id
    # a rerun of the baseline's student: only its curve may be drawn
    rerun = client.create_run(exp_id, start_time=5000, tags={"dvc_exp": "workspace"}, run_name="student@it1")
    client.log_batch(rerun.info.run_id, metrics=[Metric("test_top1", 0.9, 5000, 3), Metric("test_top1", 0.9, 5000, 0)])
    runs = mlflow_runs(uri, "noisy-student")
    hist = training_histories(uri, runs)
    assert set(hist["run_name"]) == {"student@it1"}  # eval runs are not training runs
    workspace = hist[hist["dvc_exp"] == "workspace"]
    assert list(workspace["epoch"]) == [3] and workspace["top1"].tolist() == pytest.approx([90.0])  # step 0 dropped
    hard = hist[hist["dvc_exp"] == "hard-labels"]
    assert list(hard["epoch"]) == [1, 2] and hard["top1"].tolist() == pytest.approx([61.0, 71.0])


def test_a_supervised_baseline_splits_the_gain_into_network_and_noisy_student(tmp_path: Path) -> None:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["supervised"] = ["it1"]
    raw["evaluate"] = ["teacher", "supervised-it1", "it1", "it2"]
    raw["iterations"]["it3"] = {"teacher": "it2", "student": {"model": {"arch": "resnet26d"}}}  # another network
    params = parse_params(raw)
    labels = [i % 10 for i in range(100)]
    # right on the first k images: teacher 70, the same-network baseline 80, it1 86, it2 90, it3 91
    for model, k in (("teacher", 70), ("supervised-it1", 80), ("it1", 86), ("it2", 90), ("it3", 91)):
        rows = [(i, labels[i], labels[i] if i < k else (labels[i] + 1) % 10) for i in range(100)]
        path = tmp_path / "predictions" / f"eval-{model}.csv"
        path.parent.mkdir(exist_ok=True)
        pd.DataFrame(rows, columns=["id", "label", "prediction"]).to_csv(path, index=False)
    gains = dict(paired_gains(tmp_path, params))
    # it3's student is another network: the baseline says nothing about it
    assert list(gains) == [
        "teacher -> it1",
        "it1 -> it2",
        "it2 -> it3",
        "teacher -> it3",
        "teacher -> supervised-it1",
        "supervised-it1 -> it1",
        "supervised-it1 -> it2",
    ]
    network, noisy_student = gains["teacher -> supervised-it1"], gains["supervised-it1 -> it2"]
    assert network is not None and noisy_student is not None
    assert (network.gain, network.b_only, network.a_only) == (pytest.approx(0.10), 10, 0)
    assert (noisy_student.gain, noisy_student.b_only) == (pytest.approx(0.10), 10)
    # the two shares add up to the whole gain, image by image
    assert network.gain + noisy_student.gain == pytest.approx(0.20)
    assert network.p_mcnemar == pytest.approx(2 / 2**10)  # 10 of 10 disagreements one way, two-sided


def test_robustness_gains_pair_the_same_items(tmp_path: Path) -> None:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    params = parse_params(raw)  # teacher -> it1, it1 -> it2, teacher -> it2
    folder = tmp_path / "predictions"
    folder.mkdir()
    correct = {"teacher": 6, "it1": 8, "it2": 9}  # of 10 -A images
    mce = {"teacher": 100.0, "it1": 90.0, "it2": 80.0}  # every image's share of mCE
    for model in ("teacher", "it1", "it2"):
        items = np.arange(10)
        pd.DataFrame({"item": items, "correct": (items < correct[model]).astype(int)}).to_csv(
            folder / f"a-{model}.csv", index=False
        )
        pd.DataFrame({"item": items[::-1], "mce_share": mce[model] + items[::-1]}).to_csv(
            folder / f"c-{model}.csv",
            index=False,  # rows in another order: joined by item
        )
        attack = {"item": items, "fgsm_top1_eps2": (items < 5).astype(int), "fgsm_top1_eps8": items < 3}
        pd.DataFrame(attack | {"pgd10_top1_eps8": (items < correct[model] - 5).astype(int)}).to_csv(
            folder / f"attack-{model}.csv", index=False
        )
    # it2's P file holds no rows (a released benchmark): no mFR difference for its pairs
    pd.DataFrame(columns=["item"]).to_csv(folder / "p-it2.csv", index=False)
    for model in ("teacher", "it1"):
        pd.DataFrame({"item": np.arange(4), "mfr_share": [80.0, 90.0, 100.0, 110.0]}).to_csv(
            folder / f"p-{model}.csv", index=False
        )
    gains = dict(robustness_gains(tmp_path, params))
    assert list(gains) == ["teacher -> it1", "it1 -> it2", "teacher -> it2"]
    first = gains["teacher -> it1"]
    assert list(first) == ["A top-1", "C mCE", "P mFR", "fgsm top-1 eps8", "pgd10 top-1 eps8"]
    assert first["A top-1"][0] == pytest.approx(20.0)  # points
    assert first["C mCE"] == pytest.approx((-10.0, -10.0, -10.0))  # the same shift on every image
    assert first["P mFR"] == pytest.approx((0.0, 0.0, 0.0))
    assert first["pgd10 top-1 eps8"][0] == pytest.approx(20.0)
    assert first["fgsm top-1 eps8"] == pytest.approx((0.0, 0.0, 0.0))
    assert "P mFR" not in gains["it1 -> it2"] and gains["it1 -> it2"]["C mCE"][0] == pytest.approx(-10.0)
    low, high = gains["teacher -> it2"]["A top-1"][1:]
    assert low <= 30.0 <= high
