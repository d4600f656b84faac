"""Params nobody reads are still checked: every key, before anything runs, with the key named.

Each test reproduces one fault of the params fault-injection report on the micro profile: an unknown key
added with ``dvc exp run -S +key=...`` or by hand, a model timm does not have, an iteration labeled by a
model that does not exist; one more checks that the check itself reruns nothing for a valid change.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from noisy_student.config import ParamsError, parse_params
from noisy_student.data import ImageSet, save_imageset
from tests.conftest import ROOT, make_project, micro_params, run
from tests.test_data import fake_release

DVC = [sys.executable, "-m", "dvc"]


def _micro() -> dict[str, Any]:
    return micro_params(yaml.safe_load((ROOT / "params.yaml").read_text()))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A micro project on a small fake Fashion-MNIST release whose ``prepare`` ran and was committed.

    The faults show on stages that already ran: a param no stage reads left them all "up to date".
    Built once per module; each test works on its own copy (:func:`_copy`).
    """
    tmp_path = tmp_path_factory.mktemp("prepared")
    fake_release(tmp_path / "fashion-mnist", n_train=200, n_test=20)
    raw = _micro()
    raw["data"].update(
        fashion_mnist_dir=str(tmp_path / "fashion-mnist"),
        labeled_per_class=2,
        unlabeled_size=None,
        test_size=None,
        ood_images=0,
    )
    repo = make_project(tmp_path, raw)
    run(DVC + ["repro", "prepare"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", "prepared"], repo)
    return repo


def _copy(prepared: Path, tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    shutil.copytree(prepared, repo, symlinks=True)
    assert "up to date" in run(DVC + ["repro", "prepare"], repo).stdout
    return repo


def _error(raw: dict[str, Any]) -> str:
    with pytest.raises(ParamsError) as err:
        parse_params(raw)
    return str(err.value)


def test_exp_run_with_an_unknown_key_fails_and_records_nothing(prepared: Path, tmp_path: Path) -> None:
    repo = _copy(prepared, tmp_path)
    # without the check: "didn't change, skipping", exit 0 and an experiment recorded with the bogus key
    proc = run(DVC + ["exp", "run", "-S", "+sede=1", "prepare"], repo, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "unknown key 'sede'" in out, out
    assert "Running stage 'prepare'" not in out, out
    # refs/exps/exec/ holds DVC's executor bookkeeping, not experiments
    refs = run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], repo).stdout.split()
    assert [r for r in refs if not r.startswith("refs/exps/exec/")] == [], refs
    assert run(DVC + ["exp", "list", "--all-commits"], repo).stdout.strip() == ""


def test_a_typo_added_by_hand_fails_repro_instead_of_up_to_date(prepared: Path, tmp_path: Path) -> None:
    repo = _copy(prepared, tmp_path)
    # a key no stage reads: without the check, every stage's params were unchanged
    text = (repo / "params.yaml").read_text().replace("pseudo_labels:\n", "pseudo_labels:\n  temprature: 2.0\n", 1)
    (repo / "params.yaml").write_text(text)
    proc = run(DVC + ["repro", "prepare"], repo, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "up to date" not in out, out
    assert "unknown key 'pseudo_labels.temprature'" in out, out
    assert "Running stage 'prepare'" not in out, out


def test_a_valid_change_reruns_the_check_but_not_prepare(prepared: Path, tmp_path: Path) -> None:
    # the check's output is the same for every valid params file, so prepare (and everything after it)
    # reruns only for the params it reads
    repo = _copy(prepared, tmp_path)
    text = (repo / "params.yaml").read_text()
    assert "temperature: 1.0" in text
    (repo / "params.yaml").write_text(text.replace("temperature: 1.0", "temperature: 2.0", 1))
    out = run(DVC + ["repro", "prepare"], repo).stdout
    assert "Running stage 'check-params'" in out and "Stage 'prepare' didn't change" in out, out


def test_unknown_arch_is_one_message_with_key_and_close_matches() -> None:
    raw = _micro()
    raw["teacher"]["model"]["arch"] = "resnet999"
    message = _error(raw)
    assert "teacher.model.arch" in message and "'resnet999' is not a timm model" in message, message
    assert "close matches: resnet50" in message, message
    raw = _micro()
    raw["iterations"] = {"it1": {"teacher": "teacher"}, "it2": {"teacher": "it1"}}
    raw["iterations"]["it2"]["student"] = {"model": {"arch": "resnet999"}}
    message = _error(raw)
    assert "iterations.it2.student.model.arch" in message and "close matches" in message, message


def test_teacher_stage_refuses_an_unknown_arch_before_opening_a_run(tmp_path: Path) -> None:
    # real image sets, so that without the up-front check the stage would get as far as building the model
    rng = np.random.default_rng(0)
    data = tmp_path / "prepared"
    for name, n in (("labeled", 20), ("test", 10)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        save_imageset(data / f"{name}.wds", ImageSet(images, np.arange(n) % 10, np.arange(n), np.array(["x"] * n)))
    raw = _micro()
    raw["teacher"]["model"]["arch"] = "resnet999"
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    store = tmp_path / "mlflow.db"
    proc = run(
        [sys.executable, "-m", "stages.teacher", "--params", str(params), "--data", str(data)]
        + ["--out", str(tmp_path / "teacher.pt"), "--metrics", str(tmp_path / "teacher.json")],
        ROOT,
        env={"MLFLOW_TRACKING_URI": f"sqlite:///{store}", "NOISY_STUDENT_ROOT": str(tmp_path)},
        check=False,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "teacher.model.arch" in proc.stderr and "close matches" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    if store.exists():  # the store may be created on import by some MLflow versions; it must hold no run
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{store}")
        experiments = [e.experiment_id for e in client.search_experiments()]
        assert not client.search_runs(experiments), "an MLflow run was opened"


def test_iteration_labeled_by_an_unknown_model_names_its_key() -> None:
    raw = _micro()
    raw["iterations"] = {"it1": {"teacher": "teacher"}, "it2": {"teacher": "it9"}}
    message = _error(raw)
    assert "iterations.it2.teacher" in message and "'it9'" in message and "teacher, it1" in message, message
    assert "<root>" not in message and "seed" not in message, message
    raw = _micro()
    raw["evaluate"] = ["teacher", "it7"]
    message = _error(raw)
    assert "evaluate.1" in message and "'it7'" in message and "<root>" not in message, message
