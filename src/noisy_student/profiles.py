"""Overlay profiles: a few keys of params.yaml changed, every other key kept (``profiles/quick.yaml``).

``python -m noisy_student.profiles params.yaml profiles/quick.yaml --out <workspace>/params.yaml`` writes
the merged file (``scripts/quick.sh`` does). No DVC stage imports this module, so editing it leaves the
pipeline's ``dvc.lock`` current; the stages validate the merged file like any params.yaml.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

# the deep merge that applies an iteration's overrides; an overlay applies the same way
from noisy_student.config import _deep_merge


def unknown_keys(base: dict[str, Any], overlay: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys of ``overlay`` that ``base`` lacks: an overlay may only change keys, never add them.

    Without this, a key renamed in params.yaml would leave the overlay's old spelling behind, and a
    section given as a mapping where params.yaml has a plain value would replace it unnoticed.
    """
    missing = []
    for key, value in overlay.items():
        if key not in base:
            missing.append(f"{prefix}{key}")
        elif isinstance(value, dict) and isinstance(base[key], dict):
            missing += unknown_keys(base[key], value, f"{prefix}{key}.")
    return missing


def apply_overlay(base: dict[str, Any], overlay: dict[str, Any], source: str = "overlay") -> dict[str, Any]:
    """``base`` with ``overlay``'s values deep-merged in (mappings merge key by key; lists and values replace)."""
    missing = unknown_keys(base, overlay)
    if missing:
        raise ValueError(f"{source}: keys not in the base params file: {', '.join(missing)}")
    return _deep_merge(base, overlay)


def read_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m noisy_student.profiles", description=__doc__.splitlines()[0])
    parser.add_argument("base", type=Path, help="complete params file (params.yaml)")
    parser.add_argument("overlay", type=Path, help="overlay profile (profiles/quick.yaml)")
    parser.add_argument("--out", type=Path, required=True, help="merged params file to write")
    args = parser.parse_args(argv)
    try:
        merged = apply_overlay(read_yaml(args.base), read_yaml(args.overlay), str(args.overlay))
    except ValueError as exc:
        parser.exit(2, f"error: {exc}\n")
    header = (
        f"# Generated: {args.base} with {args.overlay} applied (python -m noisy_student.profiles).\n"
        "# The keys are explained in those two files; the check-params stage validates this one.\n"
    )
    # params.yaml's key order, so a diff against it reads section by section
    args.out.write_text(header + yaml.safe_dump(merged, sort_keys=False))


if __name__ == "__main__":
    main()
