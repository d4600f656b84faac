from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from timm.layers import DropPath

from noisy_student.config import ModelParams
from noisy_student.models import (
    check_student_size,
    create_classifier,
    load_classifier,
    model_noise_off,
    model_noise_on,
    save_checkpoint,
)

MEAN, STD = (0.3,), (0.35,)


@pytest.mark.parametrize("arch", ["resnet10t", "test_efficientnet", "test_resnet"])
def test_small_image_variant_keeps_resolution(arch: str) -> None:
    params = ModelParams(arch=arch, small_image=True)
    model, spec = create_classifier(params, 10, 1, MEAN, STD)
    big, _ = create_classifier(ModelParams(arch=arch, small_image=False), 10, 1, MEAN, STD)
    x = torch.rand(2, 1, 28, 28)
    assert model(x).shape == (2, 10)
    small_map = model.net.forward_features(x).shape[-1]
    big_map = big.net.forward_features(x).shape[-1]
    assert small_map > big_map, (small_map, big_map)


def test_efficientnet_svhn_variant_ends_in_4x4_at_32px() -> None:
    model, _ = create_classifier(ModelParams(arch="efficientnet_b0"), 10, 3, (0.5,) * 3, (0.5,) * 3)
    assert model.net.forward_features(torch.rand(1, 3, 32, 32)).shape[-2:] == (4, 4)


def test_unsupported_small_image_family_is_explained() -> None:
    with pytest.raises(ValueError, match="small_image: false"):
        create_classifier(ModelParams(arch="test_vit", small_image=True), 10, 1, MEAN, STD)


def test_unknown_arch_is_explained() -> None:
    with pytest.raises(ValueError, match="not a timm model"):
        create_classifier(ModelParams(arch="resnet_does_not_exist"), 10, 1, MEAN, STD)


def test_checkpoint_roundtrip(tmp_path: Path) -> None:
    model, spec = create_classifier(
        ModelParams(arch="resnet10t", kwargs={"channels": [16, 32, 64, 128]}), 10, 1, MEAN, STD, drop_rate=0.5
    )
    model.eval()
    save_checkpoint(tmp_path / "m.pt", model, spec, {"name": "t"})
    back, spec2, meta = load_classifier(tmp_path / "m.pt")
    x = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(model(x), back(x))
    assert spec2 == spec and meta["name"] == "t"
    assert not list(tmp_path.glob(".*.tmp")), "atomic write left a temp file"


def test_pretrained_weights_from_a_local_file(tmp_path: Path) -> None:
    # an ImageNet-shaped checkpoint (3 channels, 1000 classes) saved the way users keep timm weights
    source = timm.create_model("test_resnet", num_classes=1000)
    torch.save(source.state_dict(), tmp_path / "weights.pth")
    params = ModelParams(arch="test_resnet", small_image=False, pretrained_file=str(tmp_path / "weights.pth"))
    model, _ = create_classifier(params, 10, 3, (0.5,) * 3, (0.5,) * 3)
    name = "layer1.0.conv1.weight"
    torch.testing.assert_close(model.net.state_dict()[name], source.state_dict()[name])
    assert model.net.get_classifier().out_features == 10  # head re-initialised for 10 classes
    with pytest.raises(FileNotFoundError, match="pretrained_file"):
        create_classifier(ModelParams(arch="test_resnet", pretrained_file=str(tmp_path / "no.pth")), 10, 3, MEAN, STD)


@pytest.mark.parametrize("arch", ["resnet18d", "efficientnet_b0"])
def test_stochastic_depth_decays_linearly_to_the_last_block(arch: str) -> None:
    # paper: survival probability 0.8 at the last block, decaying linearly from 1 at the input
    model, _ = create_classifier(ModelParams(arch=arch), 10, 1, MEAN, STD, drop_path_rate=0.2)
    probs = [0.0, *(m.drop_prob for m in model.modules() if isinstance(m, DropPath))]  # block 0: rate 0, no module
    n = len(probs)
    assert n > 4
    # ResNet: rate * i / (n - 1), the last block gets exactly 0.2. EfficientNet follows the TF reference
    # (rate * i / n), the rule of the paper's own code: the last of 16 blocks gets 0.2 * 15/16.
    denom = n - 1 if arch.startswith("resnet") else n
    assert probs == pytest.approx([0.2 * i / denom for i in range(n)], abs=1e-6)


def test_model_noise_off_zeroes_dropout_and_drop_path_then_restores() -> None:
    model, _ = create_classifier(ModelParams(arch="resnet18d"), 10, 1, MEAN, STD, drop_rate=0.5, drop_path_rate=0.2)
    model.train()
    x = torch.rand(4, 1, 28, 28)
    with model_noise_off(model):
        assert model.net.drop_rate == 0.0
        assert all(m.drop_prob == 0.0 for m in model.modules() if isinstance(m, DropPath))
        with torch.no_grad():
            a, b = model(x), model(x)  # train-mode BN, no randomness left
        torch.testing.assert_close(a, b)
    assert model.net.drop_rate == 0.5
    assert max(m.drop_prob for m in model.modules() if isinstance(m, DropPath)) == pytest.approx(0.2)


def test_noised_teacher_mode_is_random_but_keeps_batch_norm_in_eval() -> None:
    model, _ = create_classifier(ModelParams(arch="resnet18d"), 10, 1, MEAN, STD, drop_rate=0.5, drop_path_rate=0.2)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad(), model_noise_on(model):
        bn = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert not any(m.training for m in bn)
        a, b = model(x), model(x)
    assert not torch.allclose(a, b), "dropout / stochastic depth should make two passes differ"
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], msg=k)  # running statistics untouched
    assert not any(m.training for m in model.modules())
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x))


def test_smaller_student_is_refused_unless_distillation_is_asked_for() -> None:
    check_student_size(100, 100, allow_smaller=False)
    check_student_size(200, 100, allow_smaller=False)
    check_student_size(50, 100, allow_smaller=True)
    with pytest.raises(ValueError, match=r"allow_smaller"):
        check_student_size(50, 100, allow_smaller=False)
