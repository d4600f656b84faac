"""The user docs stay true: every `-S` override, link, image, CLI command and make target they show is real.

A README example that changes nothing (`-S` setting a key to its default value), a moved section or a renamed
command is a silent lie to the reader; these checks turn each into a failing test.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from noisy_student.config import ParamsError, parse_params
from noisy_student.tracking.dvclock import _MISSING, lookup  # dvc.lock's dotted-key walk, the same one

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^```.*?^```", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]+`")
# -S key=value as DVC (Hydra) takes it: optional + / ++ (add / add-or-override), value up to a blank or quote
OVERRIDE = re.compile(r"""-S[ \t]+(['"]?)(\+{0,2})([A-Za-z_][\w.]*)=([^\s'"`]*)\1""")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
COMMAND = re.compile(r"\bnoisy-student\s+([a-z][\w-]*)")
MAKE = re.compile(r"\bmake\s+([a-z][\w-]*)")
PLACEHOLDER = re.compile(r"[$<{]")  # shell variables and <seed>-style placeholders: only the key is checked


def _code(text: str) -> str:
    """Fenced blocks and inline code spans: where commands are shown (prose may say 'make' or 'noisy-student')."""
    return "\n".join(FENCE.findall(text) + INLINE_CODE.findall(FENCE.sub("", text)))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text())
    return {_slug(m.group(1)) for m in re.finditer(r"^#+\s+(.+?)\s*$", text, re.M)}


def _default_raw() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def _has_key(raw: dict[str, Any], dotted: str) -> bool:
    return lookup(raw, dotted) is not _MISSING


def _set(raw: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def _value(text: str) -> Any:
    """A command-line value as Hydra reads it: YAML, else the plain string."""
    try:
        return yaml.safe_load(text) if text else None
    except yaml.YAMLError:
        return text


def _current(key: str, default: dict[str, Any]) -> Any:
    """The value ``key`` has today: in params.yaml, or (an added iteration override) in that iteration's merge."""
    node: dict[str, Any] = default
    if not _has_key(default, key):
        parts = key.split(".")  # iterations.<name>.<section>.<...>
        if parts[0] != "iterations" or len(parts) < 4:
            return None
        node, key = parse_params(default).for_iteration(parts[1]).model_dump(), ".".join(parts[2:])
    value = lookup(node, key)
    return None if value is _MISSING else value


def override_problems(text: str) -> list[str]:
    """Each `-S` in ``text`` that names no params key, sets a key to the value it has, or fails validation.

    The overrides of one command line (backslash continuations joined) are validated together, since some are
    only valid in company (``filter.images_per_class=null`` needs ``filter.balance=false``).
    """
    default = _default_raw()
    problems = []
    for line in text.replace("\\\n", " ").splitlines():
        overrides = [(m.group(0), m.group(2), m.group(3), m.group(4)) for m in OVERRIDE.finditer(line)]
        combined, placeholders = _default_raw(), []
        for shown, plus, key, value in overrides:
            if not plus and not _has_key(default, key):
                problems.append(f"{shown}: no key '{key}' in params.yaml (DVC refuses it; '++' adds a key)")
            elif PLACEHOLDER.search(value):
                _set(combined, key, _current(key, default))  # only the key can be checked
                if _has_key(default, key):  # its value is unknown, its name is not
                    placeholders.append(key)
            else:
                # a grid (one experiment per value) unless the commas are inside a list or mapping value
                values = [_value(value)] if value[:1] in "[{" else [_value(item) for item in value.split(",")]
                if all(v == _current(key, default) for v in values):
                    problems.append(f"{shown}: the default params already have this value, so it changes nothing")
                _set(combined, key, values[0])
        if overrides:
            try:
                parse_params(combined)
            except ParamsError as exc:  # a key whose value is a shell variable cannot be judged
                bad = [e for e in str(exc).splitlines()[1:] if not any(f"key '{k}'" in e for k in placeholders)]
                if bad:
                    problems.append(f"{line.strip()}: {exc}")
    return problems


def link_problems(path: Path) -> list[str]:
    problems = []
    for target in LINK.findall(FENCE.sub("", path.read_text())):
        if re.match(r"[a-z][\w+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            problems.append(f"{path.name}: ({target}) -> {dest} does not exist")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            problems.append(f"{path.name}: ({target}) -> no heading with anchor #{anchor} in {dest.name}")
    return problems


def _cli_commands() -> set[str]:
    from noisy_student.cli import app

    return {c.name for c in app.registered_commands if c.name}


def _make_targets() -> set[str]:
    return set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), re.M))


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_override_names_a_key_and_changes_it(path: Path) -> None:
    assert override_problems(path.read_text()) == []


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_and_image_resolves(path: Path) -> None:
    assert link_problems(path) == []


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_command_and_make_target_shown_exists(path: Path) -> None:
    code = _code(path.read_text())
    unknown_commands = sorted(set(COMMAND.findall(code)) - _cli_commands())
    unknown_targets = sorted(set(MAKE.findall(code)) - _make_targets())
    assert (unknown_commands, unknown_targets) == ([], [])


def test_docs_named_in_params_and_profiles_exist() -> None:
    # params.yaml comments send readers to docs pages; a renamed page must not leave them pointing nowhere
    files = [ROOT / "params.yaml", ROOT / "Makefile", *sorted((ROOT / "profiles").glob("*.yaml"))]
    named = {m for f in files for m in re.findall(r"\bdocs/[\w/.-]+\.md", f.read_text())}
    assert named and not [m for m in sorted(named) if not (ROOT / m).is_file()]


def test_the_checks_catch_what_they_are_for(tmp_path: Path) -> None:
    # a no-op override, an unknown key, a bad value, and the cases that are fine
    text = (
        "dvc exp run -S noise.randaugment_magnitude=9\n"  # the default: changes nothing
        "dvc exp run -S noise.randaugment_magnitud=15\n"  # typo
        "dvc exp run -S noise.randaugment_magnitude=99\n"  # out of range
        "dvc exp run -S noise.randaugment_magnitude=15 -S 'seed=1,2' -S ++iterations.it2.student.optim.epochs=70\n"
        "dvc exp run -S seed=$s -S ++iterations.it2.student.optim.epochs=$e \\\n"
        "  -S filter.images_per_class=null -S filter.balance=false\n"  # valid only together, across a continuation
        "dvc exp run -S ++iterations.it2.student.init=teacher\n"  # it2 already warm-starts
        "dvc exp run -S 'supervised=[it1]' -S 'evaluate=[teacher,it1,supervised-it2]'\n"  # it2 has no baseline
    )
    problems = override_problems(text)
    assert len(problems) == 5, problems
    assert "changes nothing" in problems[0] and "no key" in problems[1] and "less than or equal" in problems[2]
    assert "changes nothing" in problems[3] and "'supervised-it2' is not a model of this pipeline" in problems[4]
    assert not override_problems("-S 'supervised=[it1]' -S 'evaluate=[teacher,it1,supervised-it1]'")  # one value
    assert override_problems("-S ++iterations.it2.student.optim.epoch=$e")  # an added key the schema lacks

    page = tmp_path / "page.md"
    (tmp_path / "there.md").write_text("# A heading, with `code`\n")
    page.write_text("[ok](there.md#a-heading-with-code) [gone](missing.md) [bad](there.md#nope) [w](https://x.y)\n")
    assert [p.split(" -> ")[0] for p in link_problems(page)] == ["page.md: (missing.md)", "page.md: (there.md#nope)"]
    assert {"teacher", "eval-C", "report"} <= _cli_commands()
    assert {"run", "test"} <= _make_targets()
