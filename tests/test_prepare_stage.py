"""The prepare stage on the real Fashion-MNIST package and on a fake release."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import typer
import yaml

from noisy_student.data import load_imageset
from noisy_student.data.wds import split_path
from tests.conftest import FASHION_MNIST, ROOT, micro_params, run
from tests.test_data import fake_release


def _params(tmp_path: Path, **data: object) -> Path:
    p = micro_params(yaml.safe_load((ROOT / "params.yaml").read_text()))
    p["data"].update(data)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(p))
    return path


def _prepare(tmp_path: Path, params: Path) -> tuple:
    out = tmp_path / "prepared"
    run(
        [
            sys.executable,
            "-m",
            "stages.prepare",
            "--params",
            str(params),
            "--out",
            str(out),
            "--metrics",
            str(tmp_path / "m.json"),
        ],
        ROOT,
        env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"},
    )
    assert sorted(p.name for p in out.iterdir()) == ["classes.json", "labeled.wds", "test.wds", "unlabeled.wds"]
    return tuple(load_imageset(split_path(out, n)) for n in ("labeled", "unlabeled", "test"))


def test_prepare_real_dataset_no_overlap(tmp_path: Path) -> None:
    assert FASHION_MNIST.is_dir(), "make test installs dataset-fashion-mnist"
    labeled, unlabeled, test = _prepare(tmp_path, _params(tmp_path))
    assert len(labeled) == 100 and np.bincount(labeled.labels).tolist() == [10] * 10
    assert len(unlabeled) == 340 and (unlabeled.labels == -1).sum() == 40
    assert set(unlabeled.source[unlabeled.labels == -1]) <= {"digits", "photos"}
    assert len(test) == 200
    ids = [set(s.ids.tolist()) for s in (labeled, unlabeled, test)]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    # no labeled image is also in the pool, pixel for pixel
    pool = {img.tobytes() for img in unlabeled.images}
    assert not any(img.tobytes() in pool for img in labeled.images)
    (tmp_path / "again").mkdir()
    again = _prepare(tmp_path / "again", _params(tmp_path / "again"))
    assert np.array_equal(again[0].ids, labeled.ids) and np.array_equal(again[1].images, unlabeled.images)


def test_prepare_missing_dataset_message(tmp_path: Path) -> None:
    params = _params(tmp_path, fashion_mnist_dir=str(tmp_path / "nowhere"))
    proc = run([sys.executable, "-m", "stages.prepare", "--params", str(params)], ROOT, check=False)
    assert proc.returncode == 2
    assert "sudo apt-get install dataset-fashion-mnist" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_prepare_reads_any_idx_folder(tmp_path: Path) -> None:
    fake_release(tmp_path / "release", n_train=300, n_test=20)
    params = _params(tmp_path, fashion_mnist_dir=str(tmp_path / "release"), unlabeled_size=None, test_size=None)
    labeled, unlabeled, test = _prepare(tmp_path, params)
    assert len(labeled) == 100 and len(unlabeled) == 200 + 40 and len(test) == 20


def test_invalid_params_stop_before_work(tmp_path: Path) -> None:
    params = _params(tmp_path)
    raw = yaml.safe_load(params.read_text())
    raw["filter"]["confidence_threshold"] = 1.5
    params.write_text(yaml.safe_dump(raw))
    out = tmp_path / "never"
    proc = run(
        [sys.executable, "-m", "stages.teacher", "--params", str(params), "--out", str(out / "t.pt")], ROOT, check=False
    )
    assert proc.returncode == 2
    assert "filter.confidence_threshold" in proc.stderr and "1.5" in proc.stderr
    assert not out.exists()


def test_removed_data_format_names_its_replacement(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A params file from before the one on-disk format: an error naming data.format and data.residency."""
    from stages.prepare import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    params = _params(tmp_path, format="npz")
    out, metrics = tmp_path / "prepared", tmp_path / "m.json"
    with pytest.raises(typer.Exit) as exit_info:
        main(params_file=params, out=out, metrics=metrics)
    assert exit_info.value.exit_code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err, err
    assert re.search(r"key 'data\.format': removed: .*data\.residency", err), err
    assert not out.exists() and not metrics.exists() and not (tmp_path / "mlflow.db").exists()
