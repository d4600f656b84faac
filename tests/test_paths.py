"""dvc.yaml reads and writes exactly the file names that ``noisy_student.paths`` defines."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml
from dvc.repo import Repo

from noisy_student import paths
from tests.conftest import ROOT


def test_dvc_stages_write_the_files_paths_names() -> None:
    _check_outputs(Repo(str(ROOT)))


def test_optional_supervised_baseline_stages_write_the_files_paths_names(tmp_path: Path) -> None:
    shutil.copy(ROOT / "dvc.yaml", tmp_path)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["supervised"] = ["it1", "it2"]
    params["evaluate"] += ["supervised-it2"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    names = _check_outputs(Repo.init(str(tmp_path), no_scm=True))
    assert {"supervised@it1", "supervised@it2", "eval@supervised-it2", "eval-C@supervised-it2"} <= names


def _check_outputs(repo: Repo) -> set[str]:
    stages = list(repo.index.stages)
    assert stages, "dvc.yaml has no stages"
    for stage in stages:
        name, target = paths.parse_run_name(stage.name)
        written = {Path(str(out.def_path)) for out in stage.outs}
        assert written == _stage_outputs(name, target), stage.name
    return {stage.name for stage in stages}


def test_run_names_round_trip() -> None:
    for stage, target in (("teacher", None), ("student", "it1"), ("eval-C", "teacher")):
        assert paths.parse_run_name(paths.run_name(stage, target)) == (stage, target)
    assert paths.model_run_names("teacher") == ("eval@teacher", "teacher")
    assert paths.model_run_names("it2") == ("eval@it2", "student@it2")
    assert paths.model_run_names("supervised-it1") == ("eval@supervised-it1", "supervised@it1")
    assert paths.supervised_of(paths.supervised_model("it10")) == "it10" and paths.supervised_of("it1") is None


def _stage_outputs(stage: str, target: str | None = None) -> set[Path]:
    """Every file or folder a DVC stage writes (``dvc.yaml``'s outs, metrics and plots of that stage)."""
    training = {
        paths.model_file(target or paths.TEACHER),
        paths.curves_file(target or paths.TEACHER),
        paths.curves_file(target or paths.TEACHER, "png"),
    }
    outputs: dict[str, set[Path]] = {
        "check-params": {paths.PARAMS_CHECK},
        "prepare": {paths.PREPARED},
        "teacher": training,
        "predict": {paths.predictions_dir(str(target))},
        "filter-balance": {
            paths.selected_file(str(target)),
            paths.confidence_plot(str(target)),
            paths.confidence_bins(str(target)),
            paths.filter_classes_csv(str(target)),
        },
        "student": training,
        "supervised": {
            paths.model_file(paths.supervised_model(str(target))),
            paths.curves_file(paths.supervised_model(str(target))),
            paths.curves_file(paths.supervised_model(str(target)), "png"),
        },
        "robustness-data": {paths.ROBUSTNESS_DATA},
        "eval": {paths.test_predictions(str(target))},
        "eval-FGSM": {
            paths.fgsm_curve(str(target)),
            paths.fgsm_curve(str(target), "png"),
            paths.pgd_curve(str(target)),
            paths.robustness_items("attack", str(target)),
        },
        **{f"eval-{k}": {paths.robustness_items(k.lower(), str(target))} for k in ("A", "C", "P")},
        "report": {
            paths.REPORTS / "report.md",
            *(paths.REPORTS / f"{n}.png" for n in ("accuracy", "ablations", "fgsm", "curves")),
        },
    }
    written = outputs.get(stage, set())
    # the report and the params check write no DVC metrics file
    if stage not in ("report", "check-params"):
        written = written | {paths.metrics_file(stage, target)}
    return written
