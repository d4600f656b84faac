from __future__ import annotations

from pathlib import Path

import pytest
import torch

from noisy_student.config import ModelParams, NoiseParams, OptimParams
from noisy_student.models import create_classifier
from noisy_student.training import TrainData, one_hot, seed_everything, train_classifier

NOISE = NoiseParams(randaugment_num_ops=1, randaugment_magnitude=5, dropout=0.1, stochastic_depth=0.1)


def _data() -> TrainData:
    # two classes that differ in brightness: learnable in a few steps
    g = torch.Generator().manual_seed(0)
    dark = torch.randint(0, 60, (32, 1, 16, 16), generator=g, dtype=torch.uint8)
    light = torch.randint(190, 256, (32, 1, 16, 16), generator=g, dtype=torch.uint8)
    images = torch.cat([dark, light])
    labels = torch.cat([torch.zeros(32), torch.ones(32)]).long().numpy()
    unl = torch.cat([dark[:16], light[:16]])
    soft = torch.tensor([[0.8, 0.2]] * 16 + [[0.3, 0.7]] * 16)
    return TrainData(images, one_hot(labels, 2), unl, soft)


def _model() -> torch.nn.Module:
    seed_everything(0)  # the same initial weights for every run
    model, _ = create_classifier(ModelParams(arch="test_resnet"), 2, 1, (0.5,), (0.3,), 0.1, 0.1)
    return model


def _train(path: Path | None, epochs: int = 4, on_epoch=None):  # noqa: ANN001, ANN202
    optim = OptimParams(epochs=epochs, batch_size=16, lr=0.05, warmup_epochs=0, eval_every=2)
    return train_classifier(
        _model(),
        _data(),
        optim,
        NOISE,
        unlabeled_ratio=2,
        device=torch.device("cpu"),
        seed=0,
        checkpoint_path=path,
        checkpoint_key="k",
        on_epoch=on_epoch,
        eval_fn=lambda m: {"test_top1": 0.5},
    )


def test_one_hot_with_smoothing() -> None:
    t = one_hot(torch.tensor([1, 0]).numpy(), 4, smoothing=0.2)
    torch.testing.assert_close(t[0], torch.tensor([0.05, 0.85, 0.05, 0.05]))
    torch.testing.assert_close(t.sum(1), torch.ones(2))


def test_training_reduces_loss_and_records_history() -> None:
    _, history = _train(None, epochs=6)
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5, 6]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert "test_top1" in history[1] and "test_top1" not in history[0]


class _Killed(RuntimeError):
    pass


def test_interrupted_run_resumes_to_the_same_weights(tmp_path: Path) -> None:
    ckpt = tmp_path / "state.pt"
    full, full_hist = _train(ckpt, epochs=4)
    assert not ckpt.exists(), "a finished run removes its resume checkpoint"

    def die_after_two(record: dict) -> None:
        if record["epoch"] == 2:
            raise _Killed

    with pytest.raises(_Killed):
        _train(ckpt, epochs=4, on_epoch=die_after_two)
    assert not ckpt.exists() or torch.load(ckpt, weights_only=False)["epoch"] == 1
    # the callback raised before epoch 2's checkpoint: state of epoch 1 remains
    resumed, hist = _train(ckpt, epochs=4)
    assert [h["epoch"] for h in hist] == [1, 2, 3, 4]
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=k)
    assert hist[-1]["train_loss"] == pytest.approx(full_hist[-1]["train_loss"])
