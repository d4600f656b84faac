"""dvc.yaml reads and writes exactly the file names that ``noisy_student.paths`` defines."""

from __future__ import annotations

from pathlib import Path

from dvc.repo import Repo

from noisy_student import paths
from tests.conftest import ROOT


def test_dvc_stages_write_the_files_paths_names() -> None:
    repo = Repo(str(ROOT))
    stages = list(repo.index.stages)
    assert stages, "dvc.yaml has no stages"
    for stage in stages:
        name, target = paths.parse_run_name(stage.addressing)
        written = {Path(str(out.def_path)) for out in stage.outs}
        assert written == paths.stage_outputs(name, target), stage.addressing


def test_run_names_round_trip() -> None:
    for stage, target in (("teacher", None), ("student", "it1"), ("eval-C", "teacher")):
        assert paths.parse_run_name(paths.run_name(stage, target)) == (stage, target)
    assert paths.model_run_names("teacher") == ("eval@teacher", "teacher")
    assert paths.model_run_names("it2") == ("eval@it2", "student@it2")
