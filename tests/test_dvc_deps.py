"""Every DVC stage lists, as deps, every repository module its command imports (transitively).

A module missing from a stage's deps means an edit to it leaves ``dvc repro``
saying "up to date" over stale outputs. The import closure is computed from
the source (``ast``), so it includes imports made inside functions too.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import yaml

from tests.conftest import ROOT

# top-level packages that live in this repository, and where
PACKAGE_DIRS = {"noisy_student": Path("src/noisy_student"), "stages": Path("stages")}


def module_file(root: Path, module: str) -> Path | None:
    """The repository file (relative to ``root``) defining ``module``, or None for third-party modules."""
    top, *rest = module.split(".")
    if top not in PACKAGE_DIRS:
        return None
    base = PACKAGE_DIRS[top].joinpath(*rest)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if (root / candidate).is_file():
            return candidate
    return None


def imported_modules(root: Path, path: Path) -> set[str]:
    """Dotted names a file imports (``from a import b`` yields ``a`` and ``a.b``, b may be a submodule)."""
    tree = ast.parse((root / path).read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def import_closure(root: Path, module: str) -> set[Path]:
    """Every repository file ``python -m module`` may import, with the parent packages' ``__init__.py``."""
    todo, files = [module], set()
    while todo:
        name = todo.pop()
        parts = name.split(".")
        # importing a.b.c runs a/__init__.py and a/b/__init__.py first
        for i in range(1, len(parts) + 1):
            path = module_file(root, ".".join(parts[:i]))
            if path is not None and path not in files:
                files.add(path)
                todo.extend(imported_modules(root, path))
    return files


def covered(path: Path, deps: list[str]) -> bool:
    return any(path == Path(d) or Path(d) in path.parents for d in deps)


def missing_deps(root: Path) -> dict[str, list[str]]:
    """Stage name -> repository files its command imports that none of its deps covers."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    missing: dict[str, list[str]] = {}
    for name, stage in stages.items():
        body = stage.get("do", stage)  # foreach stages keep cmd/deps under `do`
        commands = re.findall(r"python -m ([\w.]+)", body["cmd"])
        assert commands, f"dvc.yaml: stage {name}: no `python -m <module>` in its cmd"
        deps = [d for d in body.get("deps", []) if "${" not in d]
        files = set().union(*(import_closure(root, m) for m in commands))
        gaps = sorted(str(p) for p in files if not covered(p, deps))
        if gaps:
            missing[name] = gaps
    return missing


def test_every_stage_depends_on_the_code_it_imports() -> None:
    missing = missing_deps(ROOT)
    assert not missing, "dvc.yaml deps miss imported modules (add the file or its folder):\n" + "\n".join(
        f"  {stage}: {files}" for stage, files in missing.items()
    )


def test_closure_follows_imports_inside_functions_and_packages(tmp_path: Path) -> None:
    (tmp_path / "stages").mkdir()
    (tmp_path / "src/noisy_student/sub").mkdir(parents=True)
    (tmp_path / "stages/s.py").write_text("def f():\n    from noisy_student.sub import mod\n")
    (tmp_path / "src/noisy_student/__init__.py").write_text("")
    (tmp_path / "src/noisy_student/sub/__init__.py").write_text("import numpy\n")
    (tmp_path / "src/noisy_student/sub/mod.py").write_text("from noisy_student import other\n")
    (tmp_path / "src/noisy_student/other.py").write_text("")
    (tmp_path / "dvc.yaml").write_text(
        yaml.safe_dump(
            {"stages": {"s": {"cmd": "python -m stages.s --x 1", "deps": ["stages/s.py", "src/noisy_student/sub"]}}}
        )
    )
    assert missing_deps(tmp_path) == {"s": ["src/noisy_student/__init__.py", "src/noisy_student/other.py"]}
