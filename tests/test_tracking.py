"""The MLflow edge without DVC: headline metrics, dvc.lock currency, datasets, parents, the champion alias."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from noisy_student.config import Params, load_params
from noisy_student.data import ImageSet, save_imageset
from noisy_student.report.history import mlflow_runs
from noisy_student.tracking import registry, runs, store
from noisy_student.tracking.datasets import count_rows, dataset_for
from noisy_student.tracking.dvclock import Currency, digest, path_md5, read_lock
from noisy_student.tracking.environment import cpu_generation, environment_tags
from noisy_student.tracking.pipeline import Pipeline, ensure_parent, headline_metrics
from tests.conftest import ROOT, run


def _write(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def _two_iterations() -> Params:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["iterations"] = {"it1": {"teacher": "teacher"}, "it2": {"teacher": "it1"}}
    raw["evaluate"] = ["teacher", "it1", "it2"]
    return Params.model_validate(raw)


def test_headline_metrics_name_every_model_and_iteration(tmp_path: Path) -> None:
    m = tmp_path / "metrics"
    for model, top1 in (("teacher", 0.80), ("it1", 0.83), ("it2", 0.82)):
        _write(m / f"eval-{model}.json", {"top1": top1, "top5": 0.99, "images": 200})
    _write(m / "robustness" / "c-it1.json", {"mce": 95.0, "corrupted_top1": 0.6, "ce_fog": 90.0})
    _write(m / "robustness" / "p-it1.json", {"mfr": 70.0, "fr_snow": 60.0})
    _write(m / "robustness" / "a-teacher.json", {"top1": 0.4, "images": 30})
    _write(m / "robustness" / "fgsm-it1.json", {"fgsm_top1_eps0": 0.8, "fgsm_top1_eps8": 0.5, "pgd10_top1_eps8": 0.3})
    _write(m / "predict-it1.json", {"pseudo_label_accuracy": 0.79, "seconds": 3.0})
    _write(m / "predict-it2.json", {"pseudo_label_accuracy": None})  # folders source: no true labels
    _write(m / "filter-it1.json", {"selected_pseudo_label_accuracy": 0.85, "total": 600})

    values = headline_metrics(_two_iterations(), m)

    assert values == pytest.approx(
        {
            "teacher.top1": 0.80,
            "it1.top1": 0.83,
            "it2.top1": 0.82,
            "it1.gain": 0.03,
            "it2.gain": -0.01,  # over its own teacher, it1
            "it1.mce": 95.0,
            "it1.c_top1": 0.6,
            "it1.mfr": 70.0,
            "teacher.a_top1": 0.4,
            "it1.fgsm_eps0": 0.8,
            "it1.fgsm_eps8": 0.5,
            "it1.pgd10_eps8": 0.3,
            "it1.pseudo_label_accuracy": 0.79,
            "it1.selected_pseudo_label_accuracy": 0.85,
        }
    )
    # a stale teacher evaluation: no teacher top-1, so no gain over it either
    stale = headline_metrics(_two_iterations(), m, lambda stage: stage != "eval@teacher")
    assert "teacher.top1" not in stale and "it1.gain" not in stale and stale["it2.gain"] == pytest.approx(-0.01)


def _lock(tmp_path: Path, stages: dict[str, dict[str, Any]]) -> None:
    def entries(files: dict[str, str]) -> list[dict[str, str]]:
        return [{"path": p, "hash": "md5", "md5": h} for p, h in files.items()]

    raw = {
        name: {"deps": entries(s.get("deps", {})), "outs": entries(s.get("outs", {})), "params": s.get("params", {})}
        for name, s in stages.items()
    }
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": raw}))


def test_currency_follows_params_and_upstream_outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An experiment's workspace: teacher unchanged, the student retrained (its new hash is in dvc.lock), the
    student's evaluations inherited from the baseline."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "prepared").mkdir(parents=True)
    # a file inside the prepare output folder (a dependency DVC hashes as a file, not as a .dir)
    classes = tmp_path / "data" / "prepared" / "classes.json"
    classes.write_bytes(b"test classes")
    classes_md5 = hashlib.md5(b"test classes").hexdigest()
    _lock(
        tmp_path,
        {
            "prepare": {"outs": {"data": "d0.dir"}, "params": {"params.yaml": {"seed": 0}}},
            "teacher": {"deps": {"data/prepared/classes.json": classes_md5}, "outs": {"models/teacher.pt": "t1"}},
            "eval@teacher": {"deps": {"models/teacher.pt": "t1", "data/prepared/classes.json": classes_md5}},
            "student@it1": {"deps": {"models/teacher.pt": "t1"}, "outs": {"models/it1.pt": "s2"}},
            "eval@it1": {"deps": {"models/it1.pt": "s1"}, "params": {"params.yaml": {"eval": {"batch_size": 512}}}},
            "eval-C@teacher": {"deps": {"models/teacher.pt": "t1"}, "params": {"params.yaml": {"robustness.c": 9}}},
        },
    )
    params = {"seed": 0, "eval": {"batch_size": 512}, "robustness": {"c": 10}}
    lock = read_lock()
    currency = Currency(lock, "student@it1", params)
    assert currency.is_current("student@it1") and currency.is_current("eval@teacher")
    assert not currency.is_current("eval@it1")  # evaluated the baseline's student (s1), not s2
    assert not currency.is_current("eval-C@teacher")  # ran with robustness.c = 9, the workspace says 10
    assert not currency.is_current("eval@it2")  # never ran
    # a changed file inside an output folder makes its readers stale
    classes.write_bytes(b"other test classes")
    assert not Currency(lock, "student@it1", params).is_current("eval@teacher")
    # the running stage's outputs are compared with the files themselves (its lock entry is the old one)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "it1.pt").write_bytes(b"weights")
    _lock(tmp_path, {"student@it1": {"outs": {"models/it1.pt": "old"}}, "eval@it1": {"deps": {"models/it1.pt": "x"}}})
    assert not Currency(read_lock(), "student@it1", params).is_current("eval@it1")
    same = hashlib.md5(b"weights").hexdigest()
    _lock(tmp_path, {"student@it1": {"outs": {"models/it1.pt": "old"}}, "eval@it1": {"deps": {"models/it1.pt": same}}})
    assert Currency(read_lock(), "student@it1", params).is_current("eval@it1")  # retrained to identical bytes


def test_datasets_carry_the_dvc_digest_and_row_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    images = np.zeros((7, 8, 8, 3), np.uint8)
    test_split = tmp_path / "data" / "prepared" / "test.wds"  # a prepared split: a folder of tars + _info.json
    save_imageset(test_split, ImageSet(images, np.arange(7), np.arange(7), np.zeros(7, "U1")), shard_size=3)
    # a robustness set (data/robustness/c.npz): images (corruptions, severities, N, H, W, C), one label per image
    robustness = tmp_path / "data" / "robustness"
    robustness.mkdir()
    np.savez(robustness / "c.npz", images=np.zeros((2, 3, 5, 8, 8, 3), np.uint8), labels=np.arange(5))
    pd.DataFrame({"id": range(5)}).to_parquet(tmp_path / "data" / "selected.parquet")
    shards = tmp_path / "data" / "predictions"
    shards.mkdir()
    for i in range(2):
        pd.DataFrame({"id": range(3)}).to_parquet(shards / f"part-{i}.parquet")
    assert count_rows(Path("data/prepared/test.wds")) == 7  # _info.json's count, over its 3 tars
    assert count_rows(Path("data/robustness/c.npz")) == 5  # images, not corruptions x severities x images
    assert count_rows(Path("data/selected.parquet")) == 5 and count_rows(shards) == 6
    _lock(
        tmp_path,
        {
            "predict@it1": {"outs": {"data/predictions": "abc.dir"}},
            "robustness-data": {"outs": {"data/robustness": "r"}},
        },
    )

    test = dataset_for(Path("data/prepared/test.wds"), "rev1")
    assert test.name == "data/prepared/test.wds" and json.loads(test.to_dict()["profile"]) == {"num_rows": 7}
    assert json.loads(test.to_dict()["source"]) == {"path": "data/prepared/test.wds", "rev": "rev1"}
    assert test.to_dict()["source_type"] == "dvc"
    # a file inside an output folder has no lock entry of its own: hashed here the way DVC hashes files
    c_set = dataset_for(Path("data/robustness/c.npz"))
    assert c_set.digest == hashlib.md5((robustness / "c.npz").read_bytes()).hexdigest()
    assert json.loads(c_set.to_dict()["profile"]) == {"num_rows": 5}
    folder = dataset_for(tmp_path / "data" / "predictions")  # absolute paths inside the workspace are relative
    assert folder.name == "data/predictions" and folder.digest == "abc.dir"
    assert digest(read_lock(), "data/elsewhere") is None


def test_environment_tags_name_the_machine() -> None:
    tags = environment_tags("cpu")
    assert tags["env.device"] == "cpu" and tags["env.torch"] == torch.__version__
    assert tags["env.cpu"] and tags["env.onednn"] and tags["env.cuda_build"]
    assert tags["env.torch_threads"] == str(torch.get_num_threads())


def test_cpu_generation_reads_the_first_processors_family_and_model(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    first = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\n"
    cpuinfo.write_text(first + "\nprocessor\t: 1\ncpu family\t: 23\nmodel\t\t: 49\n")
    assert cpu_generation(cpuinfo) == "family 25 model 17"
    cpuinfo.write_text("processor\t: 0\nHardware\t: BCM2835\n")  # no family/model lines (e.g. ARM)
    assert cpu_generation(cpuinfo) == "unknown"
    assert cpu_generation(tmp_path / "missing") == "unknown"


def _store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> mlflow.MlflowClient:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("NOISY_STUDENT_ROOT", str(tmp_path))
    mlflow.set_tracking_uri(uri)
    return mlflow.MlflowClient(uri)


def test_the_experiment_is_a_training_experiment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client = _store(tmp_path, monkeypatch)
    old = client.create_experiment("old")  # made before the tag existed
    store.ensure_experiment("old")
    new = store.ensure_experiment("new")
    for experiment_id in (old, new):
        assert client.get_experiment(experiment_id).tags[store.EXPERIMENT_KIND_TAG] == "custom_model_development"
    client.set_experiment_tag(old, store.EXPERIMENT_KIND_TAG, "genai_development")  # a user's explicit choice
    store.ensure_experiment("old")
    assert client.get_experiment(old).tags[store.EXPERIMENT_KIND_TAG] == "genai_development"


def test_one_parent_per_pipeline_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client = _store(tmp_path, monkeypatch)
    experiment_id = store.ensure_experiment("noisy-student")
    params = load_params(ROOT / "params.yaml")
    first = ensure_parent(client, experiment_id, Pipeline("mag2", params, "abc"), {})
    assert ensure_parent(client, experiment_id, Pipeline("mag2", params, "abc"), {}) == first
    other = Pipeline("mag2", params.model_copy(update={"seed": 1}), "abc")  # changed params: a new pipeline run
    assert ensure_parent(client, experiment_id, other, {}) != first
    parent = client.get_run(first)
    assert parent.info.run_name == "mag2" and parent.data.tags["run_kind"] == "pipeline"
    assert parent.data.params["noise.randaugment_magnitude"] == "9" and len(parent.data.params) > 100
    # the report reads stage runs only
    tags = {"run_kind": "stage", "dvc_exp": "mag2", "mlflow.parentRunId": first}
    client.create_run(experiment_id, run_name="eval@it1", tags=tags)
    stage_runs = mlflow_runs(store.tracking_uri(), "noisy-student")
    assert list(stage_runs["run_name"]) == ["eval@it1"]
    # with its pipeline's whole params file: what the experiment changed, whatever stages DVC skipped
    assert stage_runs["pipeline_params"].iloc[0] == parent.data.params


def test_runs_name_their_checkpoints_by_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _store(tmp_path, monkeypatch)
    experiment_id = store.ensure_experiment("noisy-student")
    student, teacher = tmp_path / "it1.pt", tmp_path / "teacher.pt"
    student.write_bytes(b"student weights")
    teacher.write_bytes(b"teacher weights")
    runs.tag_checkpoints(student)  # outside a run: nothing to tag, no error
    with mlflow.start_run(experiment_id=experiment_id, run_name="student@it1") as run:
        runs.tag_checkpoints(student, teacher, "teacher")
        with pytest.raises(ValueError, match="model name"):
            runs.tag_checkpoints(teacher=teacher)
    tags = mlflow.MlflowClient().get_run(run.info.run_id).data.tags
    md5 = {p: hashlib.md5(p.read_bytes()).hexdigest() for p in (student, teacher)}  # the md5 dvc.lock records
    assert tags[runs.CHECKPOINT_TAG] == md5[student] and tags[runs.TEACHER_TAG] == md5[teacher]
    assert tags[runs.TEACHER_NAME_TAG] == "teacher"
    # the report's view of the run: the same names as columns; a stage run by hand has no pipeline params
    row = mlflow_runs(store.tracking_uri(), "noisy-student").iloc[0]
    assert (row["checkpoint_md5"], row["teacher_md5"], row["teacher_name"]) == (md5[student], md5[teacher], "teacher")
    assert row["pipeline_params"] is None


def test_champion_moves_to_the_best_student(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client = _store(tmp_path, monkeypatch)
    client.create_registered_model("noisy-student")
    checkpoints = []
    for i in range(3):
        path = tmp_path / f"it{i}.pt"
        path.write_bytes(f"weights {i}".encode())
        checkpoints.append(path)
        version = client.create_model_version("noisy-student", f"file:///m{i}", tags={})
        md5 = hashlib.md5(path.read_bytes()).hexdigest()
        client.set_model_version_tag("noisy-student", version.version, registry.CHECKPOINT_TAG, md5)
    teacher = tmp_path / "teacher.pt"
    teacher.write_bytes(b"teacher weights")
    assert registry.rate_model("noisy-student", teacher, 0.9) is None  # not a registered student
    assert registry.rate_model("noisy-student", checkpoints[0], 0.80) == "1"
    assert registry.rate_model("noisy-student", checkpoints[1], 0.85) == "2"
    assert registry.rate_model("noisy-student", checkpoints[2], 0.85) == "2"  # a tie keeps the champion
    assert str(client.get_model_version_by_alias("noisy-student", registry.CHAMPION).version) == "2"
    assert client.get_model_version("noisy-student", "3").tags[registry.TOP1_TAG] == "0.85"
    assert registry.rate_model(None, checkpoints[0], 0.99) is None  # registration off


def test_training_runs_url_selects_the_training_side(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from noisy_student.tracking import training_runs_url

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("NOISY_STUDENT_ROOT", str(tmp_path))
    url = training_runs_url("http://127.0.0.1:5000/", "noisy-student")
    experiment = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}").get_experiment_by_name(
        "noisy-student"
    )
    assert url == f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning"
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_a_split_folder_inside_an_output_hashes_as_dvc_records_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stage's dependency on a split folder inside `prepare`'s output (data/prepared/test.wds) is hashed
    as DVC hashes it: a real `dvc repro` records the folder's .dir hash, and Currency finds it current."""
    repo = tmp_path / "repo"
    repo.mkdir()
    make = (
        "import numpy as np\nfrom noisy_student.data import ImageSet, save_imageset\n"
        "images, n = np.arange(256, dtype=np.uint8).reshape(4, 8, 8), np.arange(4)\n"
        "save_imageset('data/prepared/test.wds', ImageSet(images, n, n, np.array(['x'] * 4)), 2)\n"
    )
    (repo / "make.py").write_text(make)
    use = "python -c \"open('used.txt', 'w').write('x')\""
    stages = {
        "make": {"cmd": "python make.py", "deps": ["make.py"], "outs": ["data/prepared"]},
        "use": {"cmd": use, "deps": ["data/prepared/test.wds"], "outs": ["used.txt"]},
    }
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    for cmd in (
        ["git", "init", "-q"],
        [sys.executable, "-m", "dvc", "init", "-q"],
        [sys.executable, "-m", "dvc", "repro"],
    ):
        run(cmd, repo)
    recorded = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["use"]["deps"][0]
    assert recorded["path"] == "data/prepared/test.wds" and recorded["md5"].endswith(".dir")
    monkeypatch.chdir(repo)
    assert path_md5(Path("data/prepared/test.wds")) == recorded["md5"]
    assert digest(read_lock(), "data/prepared/test.wds") == recorded["md5"]
    assert Currency(read_lock(), "report", {}).is_current("use")
