from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from noisy_student.io import atomic_path, write_json


def test_atomic_write_replaces_only_on_success_and_keeps_the_usual_mode(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "m.json"
    write_json(out, {"a": 1.0, "b": float("nan")})
    assert json.loads(out.read_text()) == {"a": 1.0, "b": None}
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~mask  # not mkstemp's 0600
    with pytest.raises(RuntimeError), atomic_path(out) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert json.loads(out.read_text())["a"] == 1.0  # the old file survives
    assert [p.name for p in out.parent.iterdir()] == ["m.json"]  # and no temp file is left
