"""The shipped params profiles validate like params.yaml and hold the paper's recipe (../shared/method.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from noisy_student.config import load_params

PROFILES = Path(__file__).resolve().parents[1] / "profiles"


def test_every_profile_validates() -> None:
    files = sorted(PROFILES.glob("*.yaml"))
    assert files, f"no profiles in {PROFILES}"
    for path in files:
        params = load_params(path)
        for name in params.iterations:
            params.for_iteration(name)  # every iteration's merged sections validate too


def test_imagenet_profile_is_the_papers_efficientnet_recipe() -> None:
    p = load_params(PROFILES / "imagenet.yaml")
    assert (p.data.source, p.data.format, p.data.image_size) == ("folders", "wds", 224)
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
