from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import timm
import torch
from torchvision.ops.misc import FrozenBatchNorm2d

from noisy_student.config import FixResParams, ModelParams, OptimParams
from noisy_student.models import create_classifier, load_classifier, save_checkpoint, shallow_modules
from noisy_student.training.batches import TrainData, one_hot
from noisy_student.training.fixres import fixres_finetune

MEAN, STD = (0.3,), (0.35,)


def test_shallow_modules_stop_at_the_requested_stage() -> None:
    resnet = timm.create_model("resnet10t", num_classes=3)
    assert shallow_modules(resnet, 0) == []
    assert shallow_modules(resnet, 1) == ["conv1", "bn1", "act1", "maxpool"]
    assert shallow_modules(resnet, 2) == ["conv1", "bn1", "act1", "maxpool", "layer1"]
    effnet = timm.create_model("efficientnet_b0", num_classes=3)
    # nested stages: the stem, then whole blocks up to (not including) the boundary block
    assert shallow_modules(effnet, 2) == ["conv_stem", "bn1", "blocks.0", "blocks.1"]
    with pytest.raises(ValueError, match="freeze_stages: got 5"):
        shallow_modules(resnet, 5)


def test_input_size_resizes_every_input_and_survives_a_checkpoint(tmp_path: Path) -> None:
    model, spec = create_classifier(ModelParams(arch="resnet10t"), 4, 1, MEAN, STD)
    model.eval()
    x = torch.rand(2, 1, 28, 28)
    up = torch.nn.functional.interpolate(x, size=(36, 36), mode="bilinear", antialias=True, align_corners=False)
    model.input_size = 36
    torch.testing.assert_close(model(x), model(up))  # resized inside == fed at 36 px
    save_checkpoint(tmp_path / "m.pt", model, replace(spec, input_size=36), {})
    loaded, loaded_spec, _ = load_classifier(tmp_path / "m.pt")
    assert loaded_spec.input_size == 36 and loaded.input_size == 36
    torch.testing.assert_close(loaded(x), model(x))


def test_fixres_finetune_trains_deep_layers_only_and_restores_layer_types() -> None:
    torch.manual_seed(0)
    model, _ = create_classifier(ModelParams(arch="resnet10t"), 3, 1, MEAN, STD, drop_rate=0.5)
    images = torch.randint(0, 256, (24, 1, 28, 28), dtype=torch.uint8)
    targets = one_hot(torch.randint(0, 3, (24,)).numpy(), 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fixres = FixResParams(epochs=2, image_size=32, lr=0.05, freeze_stages=2)
    seen_sizes: list[tuple[int, ...]] = []
    hook = model.net.conv1.register_forward_pre_hook(lambda _m, args: seen_sizes.append(tuple(args[0].shape[-2:])))
    evals: list[float] = []

    def eval_fn(m: torch.nn.Module) -> dict[str, float]:
        evals.append(1.0)
        return {"test_top1": 0.5, "test_top5": 1.0}

    final, history = fixres_finetune(
        model,
        TrainData(images, targets),
        OptimParams(epochs=9, batch_size=8, eval_every=1),
        fixres,
        device=torch.device("cpu"),
        seed=0,
        eval_fn=eval_fn,
    )
    hook.remove()
    after = final.state_dict()
    assert final.input_size == 32 and set(seen_sizes) == {(32, 32)}
    assert len(history) == 2 and len(evals) == 2  # fixres.epochs, not the student's 9
    frozen = [k for k in before if k.startswith(("net.conv1.", "net.bn1.", "net.layer1."))]
    trained = [k for k in before if k.startswith(("net.layer4.", "net.fc."))]
    assert frozen and trained
    for k in frozen:
        if not k.endswith("num_batches_tracked"):  # the unfrozen batch norm restarts its counter
            torch.testing.assert_close(after[k], before[k], msg=k)  # weights AND running statistics
    assert any(not torch.equal(after[k], before[k]) for k in trained)
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in final.modules())
    assert all(p.requires_grad for p in final.parameters())
    assert final.net.drop_rate == 0.5  # model noise was only switched off for the finetune
