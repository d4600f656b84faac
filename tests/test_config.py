from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from noisy_student.config import Params, ParamsError, load_params, parse_params

ROOT = Path(__file__).resolve().parents[1]


def test_default_params_file_is_valid() -> None:
    params = load_params(ROOT / "params.yaml")
    assert params.filter.confidence_threshold == 0.3
    assert params.pseudo_labels.mode == "soft"
    assert list(params.iterations) == ["it1", "it2"]


def _raw() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def _missing_keys(model: type[BaseModel], raw: dict, prefix: str = "") -> list[str]:
    missing = []
    for name, field in model.model_fields.items():
        key = prefix + name
        if name not in raw:
            missing.append(key)
        elif isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            missing += _missing_keys(field.annotation, raw[name], key + ".")
    return missing


def test_every_knob_is_in_the_default_params_file() -> None:
    # `dvc exp run -S a.b=v` (Hydra) refuses keys absent from params.yaml, so a knob
    # that only has a code default could not be swept.
    assert _missing_keys(Params, _raw()) == []


def test_out_of_range_value_names_key_value_and_range() -> None:
    raw = _raw()
    raw["noise"]["randaugment_magnitude"] = 40
    with pytest.raises(ParamsError) as err:
        parse_params(raw, "params.yaml")
    msg = str(err.value)
    assert "params.yaml" in msg and "noise.randaugment_magnitude" in msg and "40" in msg and "30" in msg


def test_bad_choice_lists_allowed_values() -> None:
    raw = _raw()
    raw["pseudo_labels"]["mode"] = "fuzzy"
    with pytest.raises(ParamsError, match=r"pseudo_labels\.mode.*'fuzzy'.*'soft' or 'hard'"):
        parse_params(raw)


def test_unknown_key_is_an_error() -> None:
    raw = _raw()
    raw["noise"]["randaugment_magnitud"] = 9
    with pytest.raises(ParamsError, match=r"unknown key 'noise\.randaugment_magnitud'"):
        parse_params(raw)


def test_iteration_must_be_labeled_by_an_earlier_model() -> None:
    raw = _raw()
    raw["iterations"] = {"it1": {"teacher": "teacher"}, "it2": {"teacher": "it3"}}
    with pytest.raises(ParamsError, match="it2.*it3"):
        parse_params(raw)


def test_evaluated_models_must_exist() -> None:
    raw = _raw()
    raw["evaluate"] = ["teacher", "it7"]
    with pytest.raises(ParamsError, match="it7"):
        parse_params(raw)


def test_supervised_baselines_name_iterations_and_become_evaluable() -> None:
    raw = _raw()
    raw["supervised"] = ["it1"]
    raw["evaluate"] = ["teacher", "supervised-it1", "it1"]
    assert parse_params(raw).evaluate == ("teacher", "supervised-it1", "it1")
    raw["supervised"] = ["it1", "it9"]
    with pytest.raises(ParamsError, match=r"supervised\.1.*'it9' is not an iteration; allowed: it1, it2"):
        parse_params(raw)
    raw["supervised"] = []  # not trained, so not a model to evaluate
    with pytest.raises(ParamsError, match=r"evaluate\.1.*'supervised-it1' is not a model of this pipeline"):
        parse_params(raw)


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("noise: [1, 2\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)


def test_iteration_overrides_merge_into_their_sections_only() -> None:
    raw = _raw()
    raw["iterations"] = {
        "it1": {"teacher": "teacher"},
        "it2": {
            "teacher": "it1",
            "student": {"unlabeled_ratio": 7, "model": {"arch": "resnet26d"}, "optim": {"epochs": 3}},
            "noise": {"randaugment_magnitude": 12},
        },
    }
    params = parse_params(raw)
    it1, it2 = params.for_iteration("it1"), params.for_iteration("it2")
    assert it1.student == params.student and it1.noise == params.noise
    assert it2.student.unlabeled_ratio == 7 and it2.student.model.arch == "resnet26d"
    assert it2.student.optim.epochs == 3
    # untouched keys of an overridden section keep the defaults (deep merge)
    assert it2.student.model.kwargs == params.student.model.kwargs
    assert it2.student.optim.lr == params.student.optim.lr
    assert it2.noise.randaugment_magnitude == 12 and it2.noise.dropout == params.noise.dropout
    assert params.student.unlabeled_ratio == 5, "the top-level section is unchanged"


def test_bad_iteration_override_names_the_iteration_key() -> None:
    raw = _raw()
    raw["evaluate"] = ["teacher", "it1"]  # the overrides below define it1 only
    raw["iterations"] = {"it1": {"teacher": "teacher", "student": {"unlabeled_ratio": 0}}}
    with pytest.raises(ParamsError, match=r"iterations\.it1\.student\.unlabeled_ratio.*0"):
        parse_params(raw)
    raw["iterations"] = {"it1": {"teacher": "teacher", "noise": {"dropuot": 0.1}}}
    with pytest.raises(ParamsError, match=r"unknown key 'iterations\.it1\.noise\.dropuot'"):
        parse_params(raw)
    raw["iterations"] = {"it1": {"teacher": "teacher", "optim": {}}}
    with pytest.raises(ParamsError, match=r"unknown key 'iterations\.it1\.optim'"):
        parse_params(raw)


@pytest.mark.parametrize("key", ["unlabeled_augment", "unlabeled_model_noise"])
def test_teacher_refuses_pseudo_label_noise_keys(key: str) -> None:
    raw = _raw()
    raw["teacher"]["noise"][key] = False
    with pytest.raises(ParamsError) as err:
        parse_params(raw)
    message = str(err.value)
    assert f"teacher.noise.{key}" in message and f"noise.{key}" in message and "only the student" in message
    raw = _raw()
    raw["noise"][key] = False  # the student's noise takes them
    assert getattr(parse_params(raw).noise, key) is False


def test_unknown_arch_names_the_key_and_close_matches() -> None:
    raw = _raw()
    raw["student"]["model"]["arch"] = "resnet18e"
    expected = r"key 'student\.model\.arch': 'resnet18e' is not a timm model; close matches: resnet18, resnet18d"
    with pytest.raises(ParamsError, match=expected):
        parse_params(raw)
    raw = _raw()
    raw["teacher"]["model"]["arch"] = "resnet50.a1_in1k"  # a pretrained tag of a registered model is a timm name
    assert parse_params(raw).teacher.model.arch == "resnet50.a1_in1k"


def test_errors_never_print_a_whole_mapping() -> None:
    raw = _raw()
    raw["filter"]["confidence_threshold"] = {f"k{i}": list(range(50)) for i in range(20)}
    with pytest.raises(ParamsError) as err:
        parse_params(raw)
    line = str(err.value).splitlines()[1]
    assert "filter.confidence_threshold" in line and "a mapping with keys" in line and len(line) < 250, line


def test_warm_start_needs_the_teachers_network_and_is_checked_up_front() -> None:
    raw = _raw()
    # the default it2 warm-starts from it1: same student network, valid
    raw["iterations"] = {"it1": {"teacher": "teacher"}, "it2": {"teacher": "it1", "student": {"init": "teacher"}}}
    assert parse_params(raw).for_iteration("it2").student.init == "teacher"
    # a larger it2 student cannot start from it1's weights
    raw["iterations"]["it2"]["student"]["model"] = {"arch": "resnet26d"}
    with pytest.raises(ParamsError, match=r"key 'iterations\.it2\.student\.init'.*resnet26d.*'it1'.*resnet18d"):
        parse_params(raw)
    # nor can it1's student warm-start from the (smaller) teacher network
    raw = _raw()
    raw["student"]["init"] = "teacher"
    with pytest.raises(ParamsError, match=r"key 'student\.init': got 'teacher' for it1.*resnet18d.*resnet10t"):
        parse_params(raw)
    raw["student"]["model"] = dict(raw["teacher"]["model"])
    assert parse_params(raw).student.init == "teacher"
