from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from noisy_student.cli import app
from noisy_student.report.history import RUN_COLUMNS, mlflow_runs
from noisy_student.report.seeds import TOTAL, seed_gains, seed_gains_plot, seed_summary

ENV = {"env.cpu": "AMD EPYC", "env.cpu_generation": "family 25 model 17", "env.torch_threads": "2"}


def _run(exp: str, name: str, start: int, top1: float = np.nan, seed: int = 0, **kw: object) -> dict:
    row = dict.fromkeys(RUN_COLUMNS)
    row.update(
        run_id=f"{exp}-{name}-{start}",
        run_name=name,
        dvc_exp=exp,
        start_time=start,
        status="FINISHED",
        top1=top1,
        params={"seed": str(seed)},
        pipeline_params={"iterations.it1.teacher": "teacher", "iterations.it2.teacher": "it1"},
    )
    row.update(kw)
    return row


def _experiment(exp: str, seed: int, teacher: float, it1: float, it2: float, start: int = 0) -> list[dict]:
    return [
        _run(exp, "teacher", start, teacher, seed, env=ENV),
        _run(exp, "student@it1", start + 1, it1, seed, teacher_name="teacher"),
        _run(exp, "student@it2", start + 2, it2, seed, teacher_name="it1"),
        _run(exp, "eval@teacher", start + 3, teacher, seed),
        _run(exp, "eval@it1", start + 4, it1, seed),
        _run(exp, "eval@it2", start + 5, it2, seed),
    ]


def _runs() -> pd.DataFrame:
    rows = [
        *_experiment("s1", 1, 0.8650, 0.8781, 0.8834, start=10),
        *_experiment("s0", 0, 0.8734, 0.8812, 0.8844),
        _run("s0", "eval@it2", 6, 0.99, 0, status="FAILED"),  # a failed re-evaluation: ignored
        _run("s1", "eval@it1", 1, 0.10, 1),  # an older evaluation of the same model: the latest counts
        _run("other", "eval@it1", 20, 0.5, 2),  # no teacher evaluation: no row
    ]
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


def test_gains_are_each_student_over_the_model_that_labeled_it() -> None:
    table = seed_gains(_runs())
    assert table["dvc_exp"].tolist() == ["s0", "s1"] and table["seed"].tolist() == [0, 1]
    assert table[["teacher", "it1", "it2"]].values.tolist() == [[87.34, 88.12, 88.44], [86.5, 87.81, 88.34]]
    assert table["it1 - teacher"].tolist() == pytest.approx([0.78, 1.31])
    assert table["it2 - it1"].tolist() == pytest.approx([0.32, 0.53])
    assert table[TOTAL].tolist() == pytest.approx([1.10, 1.84])
    assert table["machine"].tolist() == ["AMD EPYC (family 25 model 17), 2 threads"] * 2
    assert seed_gains(_runs(), ["s1"])["dvc_exp"].tolist() == ["s1"]


def test_a_student_labeled_by_the_teacher_again_is_compared_with_the_teacher() -> None:
    runs = _runs()
    it2 = (runs["dvc_exp"] == "s0") & (runs["run_name"] == "student@it2")
    runs.loc[it2, "teacher_name"] = "teacher"  # e.g. -S iterations.it2.teacher=teacher
    table = seed_gains(runs, ["s0"])
    assert table["it2 - teacher"].tolist() == pytest.approx([1.10]) and "it2 - it1" not in table.columns
    # a cached student stage logged no run: the experiment's params name the labeler
    cached = runs[~((runs["dvc_exp"] == "s1") & runs["run_name"].str.startswith("student@"))]
    assert seed_gains(cached, ["s1"])["it2 - it1"].tolist() == pytest.approx([0.53])


def test_same_experiment_name_in_two_stores_stays_two_rows() -> None:
    one = _runs().assign(store="a")
    two = _runs().assign(store="b")
    two.loc[two["run_name"] == "eval@teacher", "top1"] = 0.80
    table = seed_gains(pd.concat([one, two], ignore_index=True), ["s0"])
    assert table[["store", "teacher"]].values.tolist() == [["a", 87.34], ["b", 80.0]]


def test_summary_is_mean_sample_std_min_max() -> None:
    summary = seed_summary(seed_gains(_runs()))
    gains = np.array([0.32, 0.53])
    assert summary.loc["it2 - it1", "mean"] == pytest.approx(gains.mean())
    assert summary.loc["it2 - it1", "std"] == pytest.approx(gains.std(ddof=1), abs=1e-3)
    assert summary.loc["it2 - it1", ["min", "max", "n"]].tolist() == pytest.approx([0.32, 0.53, 2])
    assert np.isnan(seed_summary(seed_gains(_runs(), ["s0"])).loc["teacher", "std"])  # one seed: no spread


def test_plot_is_written(tmp_path: Path) -> None:
    out = tmp_path / "seeds.png"
    seed_gains_plot(seed_gains(_runs()), out, {"it2 - it1": 0.5})
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _log(client: object, exp_id: str, dvc_exp: str, name: str, seed: int, top1: float | None, **tags: str) -> None:
    run = client.create_run(exp_id, run_name=name, tags={"dvc_exp": dvc_exp, **tags})  # type: ignore[attr-defined]
    client.log_param(run.info.run_id, "seed", str(seed))  # type: ignore[attr-defined]
    if top1 is not None:
        client.log_metric(run.info.run_id, "top1", top1)  # type: ignore[attr-defined]
    client.set_terminated(run.info.run_id)  # type: ignore[attr-defined]


def test_command_reads_two_real_mlflow_stores(tmp_path: Path) -> None:
    import mlflow

    uris = []
    for i, (teacher, it1) in enumerate([(0.80, 0.82), (0.81, 0.815)]):
        uri = f"sqlite:///{tmp_path / f'mlflow{i}.db'}"
        client = mlflow.MlflowClient(tracking_uri=uri)
        exp_id = client.create_experiment("noisy-student", artifact_location=(tmp_path / f"art{i}").as_uri())
        _log(client, exp_id, "workspace", "teacher", i, None, **ENV)
        _log(client, exp_id, "workspace", "student@it1", i, None, teacher_name="teacher")
        _log(client, exp_id, "workspace", "eval@teacher", i, teacher)
        _log(client, exp_id, "workspace", "eval@it1", i, it1)
        uris.append(uri)
    out = tmp_path / "gains.png"
    args = ["seed-gains", "--store", uris[0], "--store", uris[1], "--target", "it1 - teacher=1.0", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    table = seed_gains(pd.concat([mlflow_runs(u, "noisy-student").assign(store=u) for u in uris]))
    assert table["it1 - teacher"].tolist() == pytest.approx([2.0, 0.5])
    assert "| it1 - teacher  |   2 |   1.25 |" in result.output  # the summary row: n, mean
    assert out.is_file()
    bad = CliRunner().invoke(app, ["seed-gains", "--store", uris[0], "--target", "it1 - teacher"])
    assert bad.exit_code == 2 and "expected '<gain column>=<points>'" in bad.output
    empty = CliRunner().invoke(app, ["seed-gains", "nope", "--store", uris[0]])
    assert empty.exit_code == 2 and "no finished eval@teacher runs" in empty.output
