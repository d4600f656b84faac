"""The shipped params profiles validate like params.yaml and hold the paper's recipe (../shared/method.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from noisy_student.config import Params, load_params, parse_params
from noisy_student.profiles import apply_overlay, main, read_yaml, unknown_keys

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ROOT / "profiles"
# profiles applied onto params.yaml (scripts/quick.sh); the others replace it (cp profiles/<name> params.yaml)
OVERLAYS = ("quick.yaml",)


def overlaid(name: str) -> Params:
    return parse_params(apply_overlay(read_yaml(ROOT / "params.yaml"), read_yaml(PROFILES / name)), name)


def test_every_profile_validates() -> None:
    files = sorted(PROFILES.glob("*.yaml"))
    assert files, f"no profiles in {PROFILES}"
    assert set(OVERLAYS) <= {path.name for path in files}
    for path in files:
        params = overlaid(path.name) if path.name in OVERLAYS else load_params(path)
        for name in params.iterations:
            params.for_iteration(name)  # every iteration's merged sections validate too


def test_imagenet_profile_is_the_papers_efficientnet_recipe() -> None:
    p = load_params(PROFILES / "imagenet.yaml")
    assert (p.data.source, p.data.residency, p.data.image_size) == ("folders", "stream", 224)
    assert p.distributed.processes > 1 and p.device == "cuda"
    for optim in (p.teacher.optim, p.student.optim):
        # RMSProp, LR 0.128 at batch 2048, x0.97 every 4.8 epochs over 700 epochs (models up to B4)
        assert (optim.optimizer, optim.batch_size, optim.lr) == ("rmsproptf", 2048, pytest.approx(0.128))
        assert (optim.sched, optim.decay_rate, optim.decay_epochs, optim.epochs) == ("step", 0.97, 4.8, 700)
        assert optim.batch_size % p.distributed.processes == 0
    assert p.teacher.model.arch == p.student.model.arch == "efficientnet_b0"
    assert p.student.unlabeled_ratio == 1  # 1:1 for B0
    it2 = p.for_iteration("it2")
    assert (it2.student.model.arch, it2.student.unlabeled_ratio) == ("efficientnet_b1", 3)  # larger student, 3:1
    assert (p.noise.dropout, p.noise.stochastic_depth) == (0.5, 0.2)
    assert (p.filter.confidence_threshold, p.pseudo_labels.mode) == (0.3, "soft")
    assert p.iterations["it2"].teacher == "it1"


def test_quick_overlay_names_only_keys_of_params_yaml() -> None:
    # a key renamed or removed in params.yaml must fail here, not linger in the overlay doing nothing
    assert unknown_keys(read_yaml(ROOT / "params.yaml"), read_yaml(PROFILES / "quick.yaml")) == []


def test_quick_profile_is_the_default_pipeline_shrunk() -> None:
    default, quick = load_params(ROOT / "params.yaml"), overlaid("quick.yaml")
    # every stage of the default runs: both iterations (it2 warm-started from it1), every evaluation of every model
    assert quick.iterations == default.iterations
    assert list(quick.iterations) == ["it1", "it2"] and quick.iterations["it2"].teacher == "it1"
    assert quick.for_iteration("it2").student.init == "teacher"
    assert default.evaluate == quick.evaluate == ("teacher", "it1", "it2")  # all 26 stages
    assert (quick.teacher.model, quick.student.model) == (default.teacher.model, default.student.model)
    assert quick.noise == default.noise
    # smaller and shorter
    assert quick.data.labeled_per_class < default.data.labeled_per_class
    assert quick.data.unlabeled_size is not None and quick.data.test_size is not None
    assert quick.teacher.optim.epochs < default.teacher.optim.epochs
    assert quick.student.optim.epochs < default.student.optim.epochs
    # its own MLflow experiment, and never the registry's champion
    assert quick.tracking.experiment != default.tracking.experiment
    assert quick.tracking.registered_model is None


def test_overlay_refuses_keys_the_base_lacks() -> None:
    base = {"student": {"optim": {"epochs": 140, "lr": 0.05}}, "evaluate": ["teacher", "it1"]}
    merged = apply_overlay(base, {"student": {"optim": {"epochs": 3}}, "evaluate": ["teacher"]})
    assert merged == {"student": {"optim": {"epochs": 3, "lr": 0.05}}, "evaluate": ["teacher"]}  # lists replace
    assert base["student"]["optim"]["epochs"] == 140  # the base is left as it was
    assert unknown_keys(base, {"student": {"optim": {"epoch": 3}}, "seed": 1}) == ["student.optim.epoch", "seed"]
    with pytest.raises(ValueError, match="student.optim.epoch"):
        apply_overlay(base, {"student": {"optim": {"epoch": 3}}})


def test_cli_writes_the_merged_params(tmp_path: Path) -> None:
    out = tmp_path / "params.yaml"
    main([str(ROOT / "params.yaml"), str(PROFILES / "quick.yaml"), "--out", str(out)])
    assert load_params(out) == overlaid("quick.yaml")
    assert list(yaml.safe_load(out.read_text())) == list(read_yaml(ROOT / "params.yaml"))  # params.yaml's order
    bad = tmp_path / "bad.yaml"
    bad.write_text("teacher: {optim: {epoch: 3}}\n")
    with pytest.raises(SystemExit) as exc:
        main([str(ROOT / "params.yaml"), str(bad), "--out", str(tmp_path / "never.yaml")])
    assert exc.value.code == 2 and not (tmp_path / "never.yaml").exists()
