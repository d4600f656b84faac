"""The `noisy-student` CLI: one command per dvc.yaml stage under the stage's own name, tools apart."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
import typer
import yaml

from noisy_student.cli import PIPELINE, TOOLS, add_pipeline_stages, app

ROOT = Path(__file__).resolve().parents[1]


def panel(name: str, cli: typer.Typer = app) -> dict[str, object]:
    return {c.name: c.callback for c in cli.registered_commands if c.rich_help_panel == name and c.name}


def dvc_stages() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def test_pipeline_commands_are_the_dvc_stages() -> None:
    assert list(panel(PIPELINE)) == list(dvc_stages())


def test_each_stage_command_is_the_module_its_dvc_cmd_runs() -> None:
    # `noisy-student <stage>` runs the same code as the stage's `python -m stages.<module>`
    for name, stage in dvc_stages().items():
        modules = re.findall(r"python -m ([\w.]+)", stage.get("do", stage)["cmd"])
        assert [panel(PIPELINE)[name].__module__] == modules, name


def test_every_command_is_in_a_panel() -> None:
    assert len(app.registered_commands) == len(panel(PIPELINE)) + len(panel(TOOLS))


def test_tools_are_not_stages_and_live_in_the_library() -> None:
    assert list(panel(TOOLS)) == ["ui", "shard", "teacher-convergence", "seed-gains", "paired"]
    for name, callback in panel(TOOLS).items():
        assert name not in dvc_stages()
        assert callback.__module__ == "noisy_student.cli"


def test_stage_commands_only_where_the_stages_package_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))
    cli = typer.Typer()
    assert not add_pipeline_stages(cli, tmp_path)
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "__init__.py").write_text("")  # a stages package without a dvc.yaml
    assert not add_pipeline_stages(cli, tmp_path)
    # a pipeline and its package, but another copy than the `stages` imported here (ROOT's)
    (tmp_path / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())
    assert not add_pipeline_stages(cli, tmp_path)
    assert not cli.registered_commands
    assert add_pipeline_stages(cli, ROOT)
    assert list(panel(PIPELINE, cli)) == list(dvc_stages())


def test_no_stages_package_is_installed() -> None:
    # `stages/` is the repository's DVC adapters, not a library: a top-level `stages` in site-packages
    # would clash with any other project's
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert [p for p in setuptools["packages"] if p.split(".")[0] != "noisy_student"] == []
    assert set(setuptools["package-dir"]) == {""}
    dist = metadata.distribution("noisy-student")
    assert (dist.read_text("top_level.txt") or "").split() == ["noisy_student"]
    assert not [f for f in dist.files or [] if f.parts[0] == "stages"]
    scripts = {e.name: e.value for e in dist.entry_points if e.group == "console_scripts"}
    assert scripts == {"noisy-student": "noisy_student.cli:app"}, "reinstall: bash scripts/setup.sh"


def test_cli_outside_the_repository(tmp_path: Path) -> None:
    # away from the repository root: no `stages` to import, the library and its tools still work
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = "import importlib.util, noisy_student.cli; assert importlib.util.find_spec('stages') is None"
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=True)
    result = subprocess.run(
        [str(Path(sys.executable).parent / "noisy-student"), "--help"],
        cwd=tmp_path,
        env={**env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert TOOLS in result.stdout and PIPELINE not in result.stdout
    for tool in panel(TOOLS):
        assert re.search(rf"│ {tool}\b", result.stdout), tool


def _answers(path: Path, right: range, order: int = 1) -> None:
    rows = [f"{i},{i % 10},{i % 10 if i in right else (i + 1) % 10}" for i in range(100)][::order]
    path.write_text("id,label,prediction\n" + "\n".join(rows) + "\n")


def test_paired_compares_two_models_by_image_id_also_at_a_revision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    monkeypatch.chdir(tmp_path)
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]):
        subprocess.run(cmd, check=True, capture_output=True)
    answers = tmp_path / "eval-it1.csv"
    _answers(answers, range(80))  # 80 % right
    subprocess.run(["git", "add", "-A"], check=True)
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t"}
    subprocess.run(["git", "commit", "-qm", "v1"], check=True, env={**env, "GIT_COMMITTER_EMAIL": "t@t"})
    _answers(answers, range(2, 90), order=-1)  # rows reversed: the join is by id; right on 88, 2 lost, 10 won

    result = CliRunner().invoke(app, ["paired", "HEAD:eval-it1.csv", "eval-it1.csv"])
    assert result.exit_code == 0, result.output
    assert "100 images: A 80.00 %, B 88.00 %, gain +8.00 points" in result.output
    assert "B only 10, A only 2, McNemar p = 0.0386" in result.output  # 2 * P(X <= 2 | 12, 1/2) = 2 * 79 / 4096

    (tmp_path / "other.csv").write_text("id,label,prediction\n0,1,1\n")
    result = CliRunner().invoke(app, ["paired", "eval-it1.csv", "other.csv"])
    assert result.exit_code == 2 and "hold different test images" in result.output
    result = CliRunner().invoke(app, ["paired", "nope:eval-it1.csv", "eval-it1.csv"])
    assert result.exit_code == 2 and "nope:eval-it1.csv: cannot read per-image predictions" in result.output
