from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from noisy_student.evaluation import predict_logits, topk_accuracy
from noisy_student.models import ImageClassifier
from noisy_student.robustness.attacks import correct_under_attack, fgsm, pgd

EPSILONS = (0.0, 2.0, 8.0, 32.0)


pytestmark = pytest.mark.usefixtures("one_thread")


def brightness_task(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (n, 1, 12, 12) images whose class is whether the mean level is above 0.5.

    Levels are uniform in 0.3..0.48 (class 0) or 0.52..0.7 (class 1), plus pixel noise: trivially
    learnable, with margins between 0.02 and 0.2 so that growing epsilons flip more and more images.
    """
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=g)
    level = 0.3 + 0.18 * torch.rand(n, generator=g) + 0.22 * labels
    noise = 0.03 * torch.randn(n, 1, 12, 12, generator=g)
    images = (level.view(n, 1, 1, 1) + noise).clamp(0, 1)
    return (images * 255).round().to(torch.uint8), labels


@pytest.fixture(scope="module")
def trained() -> tuple[ImageClassifier, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.1),  # so that eval mode matters
        nn.Linear(8, 2),
    )
    model = ImageClassifier(net, mean=(0.5,), std=(0.25,))
    images, labels = brightness_task(512, seed=1)
    x = images.float() / 255
    optimiser = torch.optim.Adam(model.parameters(), lr=0.03)
    for _ in range(300):
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(x), labels).backward()
        optimiser.step()
    test_images, test_labels = brightness_task(200, seed=2)
    return model, test_images, test_labels


def test_epsilon_zero_is_clean_accuracy(trained: tuple[ImageClassifier, torch.Tensor, torch.Tensor]) -> None:
    model, images, labels = trained
    model.train()
    logits = predict_logits(model, images, batch_size=64, device=torch.device("cpu"), progress=False)
    clean = topk_accuracy(logits, labels.numpy(), ks=(1,))["top1"]
    assert clean > 0.95, "the toy task should be learnt"
    for attack in ("fgsm", "pgd"):
        correct = correct_under_attack(model, images, labels, [0.0], batch_size=64, device="cpu", attack=attack)
        assert correct[0.0].shape == (len(images),) and correct[0.0].mean() == clean
    assert model.training, "the caller's train/eval mode is restored"


def test_accuracy_falls_with_epsilon_and_pgd_is_stronger(
    trained: tuple[ImageClassifier, torch.Tensor, torch.Tensor],
) -> None:
    model, images, labels = trained
    fgsm_correct = correct_under_attack(model, images, labels.numpy(), EPSILONS, batch_size=100, device="cpu")
    pgd_correct = correct_under_attack(
        model, images, labels, EPSILONS, batch_size=100, device="cpu", attack="pgd", generator=0
    )
    acc_fgsm = {eps: c.mean() for eps, c in fgsm_correct.items()}
    acc_pgd = {eps: c.mean() for eps, c in pgd_correct.items()}
    assert list(acc_fgsm) == list(EPSILONS)
    values = [acc_fgsm[e] for e in EPSILONS]
    assert all(later <= earlier for earlier, later in zip(values, values[1:], strict=False)), values
    assert values[-1] < values[0] - 0.3, values
    for eps in EPSILONS:
        assert acc_pgd[eps] <= acc_fgsm[eps], (eps, acc_pgd, acc_fgsm)


def test_perturbation_stays_in_the_epsilon_ball(trained: tuple[ImageClassifier, torch.Tensor, torch.Tensor]) -> None:
    model, images, labels = trained
    x = images[:32].float() / 255
    y = labels[:32]
    for eps in (1.0, 8.0, 64.0):
        for adv in (fgsm(model, x, y, eps), pgd(model, x, y, eps, steps=5, generator=1)):
            assert adv.shape == x.shape and adv.dtype == torch.float32
            assert float((adv - x).abs().max()) <= eps / 255 + 1e-6
            assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    # FGSM uses the whole budget wherever the clamp to 0..1 allows
    step = (fgsm(model, x, y, 8.0) - x).abs()
    np.testing.assert_allclose(step[(x > 0.05) & (x < 0.95)].numpy(), 8 / 255, rtol=1e-5)


def test_attacks_are_deterministic(trained: tuple[ImageClassifier, torch.Tensor, torch.Tensor]) -> None:
    model, images, labels = trained
    x, y = images[:16].float() / 255, labels[:16]
    torch.testing.assert_close(fgsm(model, x, y, 4.0), fgsm(model, x, y, 4.0), rtol=0, atol=0)
    torch.testing.assert_close(pgd(model, x, y, 4.0, generator=5), pgd(model, x, y, 4.0, generator=5), rtol=0, atol=0)
    no_start = pgd(model, x, y, 4.0, random_start=False)
    torch.testing.assert_close(no_start, pgd(model, x, y, 4.0, random_start=False), rtol=0, atol=0)
    torch.testing.assert_close(fgsm(model, x, y, 0.0), x, rtol=0, atol=0)


def test_input_errors(trained: tuple[ImageClassifier, torch.Tensor, torch.Tensor]) -> None:
    model, images, labels = trained
    with pytest.raises(TypeError, match="float"):
        fgsm(model, images[:4], labels[:4], 2.0)
    with pytest.raises(TypeError, match="uint8"):
        correct_under_attack(model, images.float(), labels, [2.0], batch_size=8, device="cpu")
    with pytest.raises(ValueError, match="attack"):
        correct_under_attack(model, images, labels, [2.0], batch_size=8, device="cpu", attack="cw")


def test_attacks_work_inside_no_grad(trained: tuple[ImageClassifier, torch.Tensor, torch.Tensor]) -> None:
    """An evaluation loop under ``torch.no_grad()`` gets the same adversarial images as one outside it."""
    model, images, labels = trained
    x, y = images[:16].float() / 255, labels[:16]
    outside = fgsm(model, x, y, 4.0), pgd(model, x, y, 4.0, steps=3, generator=5)
    with torch.no_grad():
        inside = fgsm(model, x, y, 4.0), pgd(model, x, y, 4.0, steps=3, generator=5)
        assert not torch.is_grad_enabled()  # the caller's mode is left as it was
    for a, b in zip(outside, inside, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
    assert not torch.equal(inside[0], x)  # a real step was taken, not the clean images
