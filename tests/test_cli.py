"""The `noisy-student` CLI: one command per dvc.yaml stage under the stage's own name, tools apart."""

from __future__ import annotations

import importlib
from pathlib import Path

import yaml

from stages.__main__ import PIPELINE, TOOLS, app

ROOT = Path(__file__).resolve().parents[1]


def panel(name: str) -> dict[str, object]:
    return {c.name: c.callback for c in app.registered_commands if c.rich_help_panel == name and c.name}


def test_pipeline_commands_are_the_dvc_stages() -> None:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert list(panel(PIPELINE)) == list(stages)


def test_every_command_is_in_a_panel() -> None:
    assert len(app.registered_commands) == len(panel(PIPELINE)) + len(panel(TOOLS))


def test_tools_are_not_stages_and_their_module_has_their_name() -> None:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, callback in panel(TOOLS).items():
        assert name not in stages
        # so `python -m stages.<module>` reads like `noisy-student <command>`
        assert importlib.import_module(f"stages.{name.replace('-', '_')}").main is callback
