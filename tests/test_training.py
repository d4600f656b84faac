from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from noisy_student.config import ModelParams, OptimParams, StudentNoiseParams, parse_params
from noisy_student.data.imageset import ImageSet
from noisy_student.models import create_classifier
from noisy_student.seeds import seed_everything
from noisy_student.training.batches import TrainData, one_hot
from noisy_student.training.loop import train_classifier
from noisy_student.training.recipe import PlanError, RunPlan, TrainingInputs, build_model
from noisy_student.training.task import joint_loss

NOISE = StudentNoiseParams(randaugment_num_ops=1, randaugment_magnitude=5, dropout=0.1, stochastic_depth=0.1)


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


def _train(path: Path | None, epochs: int = 4, on_epoch=None, noise=NOISE, **kwargs):  # noqa: ANN001, ANN202
    # 4 updates per epoch; a checkpoint every 3 lands mid-epoch
    optim = OptimParams(epochs=epochs, batch_size=16, lr=0.05, warmup_epochs=0, eval_every=2, checkpoint_steps=3)
    return train_classifier(
        _model(),
        _data(),
        optim,
        noise,
        unlabeled_ratio=2,
        **kwargs,
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
    # killed after update 8; the last checkpoint is update 6 = epoch 2, step 3 of 4 (mid-epoch)
    state = torch.load(ckpt, weights_only=True)  # as the loop reads it: tensors and plain containers only
    assert (state["epoch"], state["step"]) == (1, 2)
    # one entry per rank: its MemoryBatches state (shared index generator, both streams) and its generators
    assert len(state["ranks"]) == 1 and set(state["ranks"][0]) == {"batches", "rng"}
    assert set(state["ranks"][0]["batches"]) == {"gen", "labeled", "unlabeled"}
    assert state["ranks"][0]["batches"]["labeled"]["pos"] == 2 * 16, "mid-epoch: 2 of 4 labeled batches drawn"
    resumed, hist = _train(ckpt, epochs=4)
    assert [h["epoch"] for h in hist] == [1, 2, 3, 4]
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)  # bit for bit
    # the partial epoch's loss was carried over, so even the resumed epoch's record matches
    for a, b in zip(full_hist, hist, strict=True):
        assert a == pytest.approx(b)


def test_joint_loss_soft_targets_by_hand() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25]]))  # softmax = (0.5, 0.25, 0.25)
    target = torch.tensor([[0.2, 0.8, 0.0]])
    expected = -(0.2 * torch.log(torch.tensor(0.5)) + 0.8 * torch.log(torch.tensor(0.25)))
    torch.testing.assert_close(joint_loss(logits, target), expected)


def test_joint_loss_hard_targets_equal_cross_entropy() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 4, generator=g)
    labels = torch.tensor([0, 3, 1, 1, 2])
    hard = torch.nn.functional.one_hot(labels, 4).float()
    torch.testing.assert_close(joint_loss(logits, hard), torch.nn.functional.cross_entropy(logits, labels))


def test_joint_loss_weighs_every_image_equally() -> None:
    # 1 labeled image, 3 pseudo-labeled ones: the loss is (CE_l + 3 CE_u) / 4, not the mean of the two means
    lab, lab_t = torch.zeros(1, 4), torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    unl, unl_t = torch.tensor([[9.0, 0.0, 0.0, 0.0]] * 3), torch.tensor([[1.0, 0.0, 0.0, 0.0]] * 3)
    ce_l = torch.nn.functional.cross_entropy(lab, torch.tensor([1]))  # ln 4
    ce_u = torch.nn.functional.cross_entropy(unl, torch.zeros(3, dtype=torch.long))
    got = joint_loss(lab, lab_t, unl, unl_t)
    torch.testing.assert_close(got, (ce_l + 3 * ce_u) / 4)
    assert not torch.isclose(got, (ce_l + ce_u) / 2)


def test_unlabeled_noise_switches_change_training_but_not_the_default() -> None:
    base, _ = _train(None, epochs=1)
    again, _ = _train(None, epochs=1)
    no_aug, _ = _train(None, epochs=1, noise=NOISE.model_copy(update={"unlabeled_augment": False}))
    no_noise, hist = _train(
        None, epochs=1, noise=NOISE.model_copy(update={"unlabeled_augment": False, "unlabeled_model_noise": False})
    )
    w = "net.fc.weight"
    torch.testing.assert_close(base.state_dict()[w], again.state_dict()[w])
    assert not torch.equal(base.state_dict()[w], no_aug.state_dict()[w])
    assert not torch.equal(no_aug.state_dict()[w], no_noise.state_dict()[w])
    assert hist[0]["train_loss"] > 0


def test_pretraining_phase_uses_only_pseudo_labels() -> None:
    # unlabeled targets say "class 0" for everything: a pseudo-label-only run must learn that
    data = _data()
    data.unlabeled_targets = torch.tensor([[1.0, 0.0]]).repeat(len(data.unlabeled_images), 1)
    optim = OptimParams(epochs=6, batch_size=16, lr=0.05, warmup_epochs=0, eval_every=6)
    model, _ = train_classifier(
        _model(), data, optim, NOISE, unlabeled_ratio=2, labeled_in_batch=False, device=torch.device("cpu"), seed=0
    )
    model.eval()
    with torch.no_grad():
        pred = model(data.labeled_images.float() / 255).argmax(1)
    assert (pred == 0).float().mean() > 0.9
    with pytest.raises(ValueError, match="pseudo-labeled"):
        train_classifier(
            _model(),
            TrainData(data.labeled_images, data.labeled_targets),
            optim,
            NOISE,
            labeled_in_batch=False,
            device=torch.device("cpu"),
            seed=0,
        )


def test_bf16_autocast_trains_close_to_float32() -> None:
    # bf16 is emulated on CPUs without the instructions: slow there, but it must train the same model
    model32, hist32 = _train(None, epochs=6)
    model16, hist16 = _train(None, epochs=6, amp_dtype=torch.bfloat16)
    assert hist16[-1]["train_loss"] < hist16[0]["train_loss"]
    assert abs(hist16[-1]["train_loss"] - hist32[-1]["train_loss"]) < 0.1
    assert all(p.dtype == torch.float32 for p in model16.parameters())  # autocast keeps float32 master weights


def test_channels_last_is_the_same_training() -> None:
    model_cl, _ = _train(None, epochs=2)
    model_nchw, _ = _train(None, epochs=2, channels_last=False)
    for (name, a), b in zip(model_cl.state_dict().items(), model_nchw.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4, msg=name)


def test_evaluation_frequency_does_not_change_the_trained_weights() -> None:
    # eval_every only decides how often the curve is sampled: the evaluations run the real model in eval
    # mode, and must not draw from the training generators or touch batch-norm statistics
    from noisy_student.evaluation import evaluate_classifier

    data = _data()
    test_images = data.labeled_images[:, 0].numpy()  # (N, H, W) uint8
    test_labels = data.labeled_targets.argmax(1).numpy()

    def run(eval_every: int) -> tuple[torch.nn.Module, list[dict]]:
        optim = OptimParams(epochs=4, batch_size=16, lr=0.05, warmup_epochs=0, eval_every=eval_every)
        return train_classifier(
            _model(),
            data,
            optim,
            NOISE,
            unlabeled_ratio=2,
            device=torch.device("cpu"),
            seed=0,
            eval_fn=lambda m: evaluate_classifier(m, test_images, test_labels, 16, torch.device("cpu"))[0],
        )

    often, often_hist = run(1)
    rarely, rarely_hist = run(4)
    assert sum("top1" in h for h in often_hist) == 4 and sum("top1" in h for h in rarely_hist) == 1
    for (k, a), b in zip(often.state_dict().items(), rarely.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)


def _warm_plan(arch: str, warm: bool = True) -> RunPlan:
    return RunPlan(
        "student-it2", 0, "cpu", ModelParams(arch=arch), OptimParams(), NOISE, 64, unlabeled_ratio=2, warm_start=warm
    )


def test_warm_start_starts_from_the_teachers_weights_and_refuses_another_network() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 16, 16), dtype=np.uint8)
    n = len(images)
    labeled = ImageSet(images, np.arange(n) % 2, np.arange(n), np.full(n, "test"))
    inputs = TrainingInputs.in_memory(labeled, labeled, num_classes=2)
    teacher, _ = build_model(_warm_plan("test_resnet", warm=False), inputs)
    with torch.no_grad():  # a teacher that is not the student's own seeded initialisation
        for p in teacher.parameters():
            p.add_(torch.randn_like(p))
    weights = teacher.state_dict()
    student, _ = build_model(_warm_plan("test_resnet"), inputs, weights)
    got = student.state_dict()
    assert list(got) == list(weights)
    for name, tensor in weights.items():
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=0, msg=name)
    cold, _ = build_model(_warm_plan("test_resnet", warm=False), inputs, weights)  # init: scratch ignores them
    assert not any(torch.equal(p, weights[name]) for name, p in cold.named_parameters())
    with pytest.raises(PlanError, match="needs the teacher's weights"):
        build_model(_warm_plan("test_resnet"), inputs)
    with pytest.raises(PlanError, match="needs the teacher's architecture"):
        build_model(_warm_plan("resnet10t"), inputs, weights)


def test_supervised_baseline_plan_is_the_iterations_network_with_the_teachers_recipe() -> None:
    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    raw["iterations"]["it2"]["student"] = {"model": {"arch": "resnet26d"}, "optim": {"epochs": 3}}
    raw["iterations"]["it2"]["noise"] = {"randaugment_magnitude": 15}
    params = parse_params(raw)
    teacher, plan = RunPlan.teacher(params), RunPlan.supervised(params, "it2")
    assert plan.name == "supervised-it2"
    assert plan.model.arch == "resnet26d" and plan.noise.randaugment_magnitude == 15  # it2's, overrides merged
    assert plan.optim == teacher.optim and plan.optim.epochs == params.teacher.optim.epochs  # the teacher's budget
    # labeled images only, from scratch, no Table 13 / FixRes phases and no size check against a teacher
    assert (plan.unlabeled_ratio, plan.finetune_epochs, plan.fixres, plan.warm_start) == (0, 0, None, False)
    assert plan.teacher_parameters is None and plan.seed == teacher.seed
    assert RunPlan.supervised(params, "it1").model == params.student.model
