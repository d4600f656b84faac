"""Native DVC plots: the confidence histogram as data, the PGD curve, and `dvc plots diff` overlaying experiments."""

from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from dvc.repo import Repo

from noisy_student import paths
from noisy_student.pseudo_labels.select import confidence_bins, write_table
from noisy_student.report.charts import confidence_histogram
from noisy_student.robustness.evaluate import AttackResult, save_attack_curve
from tests.conftest import REPRODUCED, make_project, micro_params, run

DVC = [sys.executable, "-m", "dvc"]

# ---------------------------------------------------------------- the data behind the plots


def test_confidence_bins_are_densities_of_each_group() -> None:
    confidence = np.array([0.01, 0.02, 0.5, 0.99, 1.0, 0.26], dtype=np.float32)
    out_of_domain = np.array([True, True, False, False, False, True])
    bins = confidence_bins(confidence, out_of_domain, bins=4)
    assert list(bins["confidence"]) == [0.125, 0.375, 0.625, 0.875]
    assert list(bins["in_domain_count"]) == [0, 0, 1, 2]  # 1.0 falls in the last, closed bin
    assert list(bins["out_of_domain_count"]) == [2, 1, 0, 0]
    assert list(bins["pool_count"]) == [2, 1, 1, 2]
    for group in ("pool", "in_domain", "out_of_domain"):  # each group's density integrates to 1
        assert (bins[group] * (bins["bin_end"] - bins["bin_start"])).sum() == pytest.approx(1.0)


def test_confidence_bins_without_known_labels_have_only_the_pool(tmp_path: Path) -> None:
    # data.source folders: every label is -1 (class unknown), which is no in-domain / out-of-domain split
    confidence = np.linspace(0, 1, 50, dtype=np.float32)
    bins = confidence_bins(confidence, np.ones(50, dtype=bool))
    assert len(bins) == 40 and bins["pool_count"].sum() == 50
    assert bins[["in_domain", "out_of_domain"]].isna().all().all()
    assert bins[["in_domain_count", "out_of_domain_count"]].isna().all().all()
    csv = tmp_path / "bins.csv"
    write_table(csv, bins)
    row = csv.read_text().splitlines()[1].split(",")
    assert row[4:6] == ["", ""] and row[7:] == ["", ""]  # NA as empty cells, which DVC's plots leave undrawn
    png = tmp_path / "bins.png"
    confidence_histogram(bins, 0.3, "pool only", png)
    assert png.stat().st_size > 1000


def test_confidence_bins_of_an_empty_pool_draw_only_the_threshold(tmp_path: Path) -> None:
    bins = confidence_bins(np.zeros(0, dtype=np.float32), np.zeros(0, dtype=bool))
    assert bins["pool_count"].sum() == 0 and bins["pool"].isna().all()
    confidence_histogram(bins, 0.3, "empty", tmp_path / "empty.png")
    assert (tmp_path / "empty.png").is_file()


def test_pgd_curve_is_written_beside_the_fgsm_curve(tmp_path: Path) -> None:
    result = AttackResult({0.0: 0.9, 8.0: 0.4}, pgd_steps=10, pgd_epsilon=8.0, pgd_top1=0.3, images=40)
    curve, pgd = paths.fgsm_curve("it1", metrics=tmp_path), paths.pgd_curve("it1", metrics=tmp_path)
    save_attack_curve(result, curve, pgd)
    assert list(pd.read_csv(curve).columns) == ["epsilon", "top1"]  # the report reads these columns
    # PGD at epsilon 0 is the clean top-1: the FGSM curve's first point starts the PGD curve
    expected = [{"epsilon": 0.0, "steps": 10, "top1": 0.9}, {"epsilon": 8.0, "steps": 10, "top1": 0.3}]
    assert pd.read_csv(pgd).to_dict("records") == expected
    without_clean = AttackResult({2.0: 0.7}, pgd_steps=10, pgd_epsilon=8.0, pgd_top1=0.3, images=40)
    assert without_clean.pgd_curve().to_dict("records") == [{"epsilon": 8.0, "steps": 10, "top1": 0.3}]


# ---------------------------------------------------------------- the plot definitions


def test_every_model_and_iteration_has_its_plots(tmp_path: Path) -> None:
    params = micro_params(yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text()))
    params["iterations"] = {"it1": {"teacher": "teacher"}, "it2": {"teacher": "it1"}, "it3": {"teacher": "it2"}}
    params["evaluate"] = ["teacher", "it1", "it2", "it3"]
    root = make_project(tmp_path, params)
    stages = list(Repo(str(root)).index.stages)
    outs = {str(out.def_path): out for stage in stages for out in stage.outs}
    top_level = {next(iter(plot)) for plot in yaml.safe_load((root / "dvc.yaml").read_text())["plots"]}
    assert top_level == {str(paths.CONFIDENCE)}
    for model in params["evaluate"]:
        for data in (paths.fgsm_curve(model), paths.pgd_curve(model)):
            assert outs[str(data)].plot["x"] == "epsilon" and outs[str(data)].plot["y"] == "top1"
        curve = outs[str(paths.curves_file(model))].plot
        assert curve["x"] == "epoch" and curve["y"] == "test_top1"
        assert outs[str(paths.curves_file(model, "png"))].plot
    # the confidence bins sit in the top-level plot's folder (and are no stage-level plot as well, which would
    # give a second plot of the same file)
    for data in (paths.confidence_bins(iteration) for iteration in params["iterations"]):
        assert str(data) in outs and data.parent == paths.CONFIDENCE and not outs[str(data)].plot
    # DVC's run cache keeps no stage with a git-tracked plain out (cache: false, neither metric nor plot): every
    # training stage qualifies, so it is restored rather than retrained (the e2e test restores a teacher)
    training = [s for s in stages if paths.parse_run_name(s.name)[0] in ("teacher", "student", "supervised")]
    assert len(training) == 1 + len(params["iterations"])
    for stage in training:
        assert all(o.use_cache or o.is_metric or o.is_plot for o in stage.outs), stage.name


# ---------------------------------------------------------------- dvc plots diff of two experiments


def _html_specs(index: Path) -> dict[str, dict[str, Any]]:
    """The Vega-Lite specs of a `dvc plots diff -o` page, by plot title (the plot id); a plot without data in
    either revision (an empty spec: its stage was not run) is left out."""
    specs = [json.loads(m) for m in re.findall(r"var spec = (\{.*?\});\n", index.read_text(), flags=re.S)]
    return {spec["title"]["text"]: spec for spec in specs if spec}


def _series(spec: dict[str, Any]) -> dict[tuple[str, str], list[float]]:
    """(revision, column) -> y values of a filled spec, in data order (empty cells left out)."""
    encoding = spec["encoding"] if "y" in spec["encoding"] else spec["layer"][0]["encoding"]  # scatter / linear
    y = encoding["y"]["field"]
    out: dict[tuple[str, str], list[float]] = {}
    for point in spec["data"]["values"]:
        if point[y] != "":
            out.setdefault((point["rev"], point.get("field", y)), []).append(float(point[y]))
    return out


@pytest.mark.slow
@REPRODUCED
def test_plots_diff_overlays_two_experiments(reproduced_micro: tuple[Path, str]) -> None:
    repo, _ = reproduced_micro  # every kind of plot written
    # the experiment reruns student@it1 and what leads from it to the target
    targets = ["eval-FGSM@it1"]
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", "baseline results"], repo)
    # a student-only change: the teacher, its pseudo labels and confidence stay, the student's curves move
    run(DVC + ["exp", "run", "-n", "mag2", "-S", "noise.randaugment_magnitude=2", *targets], repo)
    run(DVC + ["plots", "diff", "HEAD", "mag2", "-o", "diff"], repo)
    specs = _html_specs(repo / "diff" / "index.html")

    revs = {"HEAD", "mag2"}
    # the learning curves (stage-level plots: test top-1 by epoch), each revision's own values in one plot
    student = _series(specs["metrics/curves/student-it1.csv"])
    assert set(student) == {(r, "test_top1") for r in revs}
    committed = run(["git", "show", "HEAD:metrics/curves/student-it1.csv"], repo).stdout
    curves = {"HEAD": pd.read_csv(io.StringIO(committed)), "mag2": pd.read_csv(repo / "metrics/curves/student-it1.csv")}
    for rev, curve in curves.items():
        assert student[rev, "test_top1"] == list(curve["test_top1"].dropna()), rev
    assert list(curves["HEAD"]["train_loss"]) != list(curves["mag2"]["train_loss"])  # the experiment's curve moved
    assert len(student["HEAD", "test_top1"]) == 1  # one epoch, evaluated once; no value drawn elsewhere
    teacher = _series(specs["metrics/curves/teacher.csv"])
    assert teacher["HEAD", "test_top1"] == teacher["mag2", "test_top1"]  # not rerun by the experiment
    confidence = _series(specs["metrics/confidence/it1.csv"])
    assert set(confidence) == {(r, c) for r in revs for c in ("in_domain", "out_of_domain", "pool")}
    assert confidence["HEAD", "pool"] == confidence["mag2", "pool"]  # same teacher, same pool
    for plot in ("metrics/robustness/fgsm-it1.csv", "metrics/robustness/pgd-it1.csv"):
        assert {rev for rev, _ in _series(specs[plot])} == revs, plot
    assert len(_series(specs["metrics/robustness/pgd-it1.csv"])["mag2", "top1"]) == 2  # clean, then PGD
