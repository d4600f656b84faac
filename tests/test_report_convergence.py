from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from noisy_student.report.convergence import converged_at, convergence_plot, doubling_summary, teacher_convergence
from noisy_student.report.history import RUN_COLUMNS, mlflow_runs


def _run(exp: str, seed: int, epochs: int, top1: float, start: int, precision: str = "auto", **kw: object) -> dict:
    row = dict.fromkeys(RUN_COLUMNS)
    row.update(
        run_id=f"{exp}-{start}",
        run_name="teacher",
        dvc_exp=exp,
        start_time=start,
        status="FINISHED",
        top1=top1,
        params={"seed": str(seed), "teacher.optim.epochs": str(epochs)},
        pipeline_params={"precision": precision},
    )
    row.update(kw)
    return row


def _runs() -> pd.DataFrame:
    return pd.DataFrame(
        [
            _run("t200-s0", 0, 200, 0.8672, 1),
            _run("t400-s0", 0, 400, 0.8721, 2),
            _run("t800-s0", 0, 800, 0.8727, 3),
            _run("t200-s1", 1, 200, 0.8627, 4),
            _run("t400-s1", 1, 400, 0.8678, 5),
            _run("t800-s1", 1, 800, 0.8700, 6),
            _run("t400-s1", 1, 400, 0.5, 0),  # an older run of the same experiment: the latest one counts
            _run("t800-s1", 1, 800, 0.99, 7, status="FAILED"),  # not finished: ignored
            _run("t400-s0", 0, 400, 0.7, 8, run_name="student@it1"),  # not a teacher
        ],
        columns=RUN_COLUMNS,
    )


def test_gain_over_half_pairs_runs_of_the_same_seed_and_precision() -> None:
    table = teacher_convergence(_runs())
    assert table[["seed", "epochs"]].values.tolist() == [[0, 200], [0, 400], [0, 800], [1, 200], [1, 400], [1, 800]]
    assert table["top1"].tolist() == [86.72, 87.21, 87.27, 86.27, 86.78, 87.0]
    assert np.isnan(table["gain_over_half"][0]) and np.isnan(table["gain_over_half"][3])
    assert table["gain_over_half"][1:3].tolist() == pytest.approx([0.49, 0.06])
    assert table["gain_over_half"][4:6].tolist() == pytest.approx([0.51, 0.22])
    only = teacher_convergence(_runs(), ["t200-s0", "t400-s0"])
    assert only["dvc_exp"].tolist() == ["t200-s0", "t400-s0"]


def test_converged_needs_the_doubling_below_threshold_on_every_seed() -> None:
    table = teacher_convergence(_runs())
    assert converged_at(table) == {"auto": 400}  # 400 -> 800 adds 0.06 and 0.22
    assert converged_at(table, threshold=0.2) == {"auto": None}  # seed 1's +0.22 fails
    one_seed = table[~((table["seed"] == 1) & (table["epochs"] == 800))]
    assert converged_at(one_seed) == {"auto": None}  # 400 was not doubled on seed 1


def test_doubling_summary_is_over_the_seeds_that_ran_both_lengths() -> None:
    summary = doubling_summary(teacher_convergence(_runs()))
    assert summary[["precision", "from_epochs", "n"]].values.tolist() == [["auto", 200, 2], ["auto", 400, 2]]
    gains = np.array([0.06, 0.22])  # 400 -> 800 on seeds 0 and 1
    assert summary.loc[1, "mean"] == pytest.approx(gains.mean())
    assert summary.loc[1, "std"] == pytest.approx(gains.std(ddof=1), abs=1e-3)
    assert summary.loc[1, ["min", "max"]].tolist() == pytest.approx([0.06, 0.22])


def test_plot_is_written(tmp_path: Path) -> None:
    out = tmp_path / "convergence.png"
    convergence_plot(teacher_convergence(_runs()), out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_reads_teacher_runs_from_a_real_mlflow_store(tmp_path: Path) -> None:
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment("ns", artifact_location=(tmp_path / "artifacts").as_uri())
    for name, epochs, top1 in [("t100", 100, 0.80), ("t200", 200, 0.82)]:
        run = client.create_run(exp_id, run_name="teacher", tags={"dvc_exp": name})
        client.log_param(run.info.run_id, "seed", "3")
        client.log_param(run.info.run_id, "teacher.optim.epochs", str(epochs))
        client.log_metric(run.info.run_id, "test_top1", top1)
        client.set_terminated(run.info.run_id)
    table = teacher_convergence(mlflow_runs(uri, "ns"))
    assert table[["dvc_exp", "precision", "seed", "epochs", "top1"]].values.tolist() == [
        ["t100", "?", 3, 100, 80.0],  # no pipeline parent run: precision unknown
        ["t200", "?", 3, 200, 82.0],
    ]
    assert table["gain_over_half"][1] == pytest.approx(2.0)
