"""White-box L_inf attacks in pixel space: FGSM and PGD, and accuracy under attack.

The models of this project (``models.ImageClassifier``) take float images in 0..1 and normalise
inside ``forward``, so gradients here are taken with respect to 0..1 pixels and pass through the
model's own normalisation; ``epsilon_255`` is in 0..255 pixel units as in the Noisy Student paper
(epsilon 2 means each pixel may move by 2/255).

Attacks run in float32 without autocast (bfloat16 gradients are too coarse for the sign of small
input gradients) with the model in eval mode (dropout and stochastic depth off, BatchNorm on its
running statistics); the model's train/eval mode is restored afterwards. They take their input
gradients with gradients enabled, also when called inside ``torch.no_grad()``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from noisy_student.robustness.corruptions import GeneratorLike, as_generator

ATTACKS: tuple[str, ...] = ("fgsm", "pgd")


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _check(images: torch.Tensor, labels: torch.Tensor, epsilon_255: float) -> None:
    if not images.is_floating_point():
        raise TypeError(f"attacks take float images in 0..1, got {images.dtype} (divide uint8 by 255)")
    if images.ndim != 4 or labels.shape != images.shape[:1]:
        raise ValueError(f"need images (N, C, H, W) and labels (N,), got {tuple(images.shape)}, {tuple(labels.shape)}")
    if epsilon_255 < 0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon_255}")


def _input_gradient(model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """d(summed cross entropy)/dx for float32 ``x (N, C, H, W)``; same shape.

    Gradients are switched on here, so an attack also works when its caller runs under
    ``torch.no_grad()`` (an evaluation loop usually does).
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad(), torch.autocast(x.device.type, enabled=False):
        logits = model(x)
        # summed, not averaged: the per-image gradient does not shrink with the batch size
        loss = F.cross_entropy(logits.float(), labels, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x)
    return grad


def fgsm(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, epsilon_255: float) -> torch.Tensor:
    """Fast Gradient Sign Method (Goodfellow et al., 2015): one step of size epsilon.

    ``images``: float ``(N, C, H, W)`` in 0..1; ``labels``: int64 ``(N,)``; ``epsilon_255``: step in
    0..255 units. Returns float32 ``clamp(images + epsilon/255 * sign(grad_x CE), 0, 1)``, detached;
    epsilon 0 returns the images unchanged.
    """
    _check(images, labels, epsilon_255)
    x = images.detach().float()
    if epsilon_255 == 0:
        return x.clone()
    with _eval_mode(model):
        grad = _input_gradient(model, x, labels)
    return (x + (epsilon_255 / 255.0) * grad.sign()).clamp(0.0, 1.0).detach()


def pgd(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    epsilon_255: float,
    steps: int = 10,
    step_size_255: float | None = None,
    generator: GeneratorLike = None,
    random_start: bool = True,
) -> torch.Tensor:
    """Projected Gradient Descent (Madry et al., 2018) in the L_inf ball of radius epsilon.

    ``images`` float ``(N, C, H, W)`` in 0..1, ``labels`` int64 ``(N,)``. Starts at a uniform random
    point of the ball (``random_start``, drawn from ``generator``) or at the images, then ``steps``
    signed-gradient steps of ``step_size_255`` (default 2.5 * epsilon / steps, Madry's choice, so
    the walk can cross the ball), each followed by projection onto the ball and onto 0..1.
    Returns float32 adversarial images, detached; epsilon 0 returns the images unchanged.
    """
    _check(images, labels, epsilon_255)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    x0 = images.detach().float()
    if epsilon_255 == 0:
        return x0.clone()
    eps = epsilon_255 / 255.0
    alpha = (2.5 * epsilon_255 / steps if step_size_255 is None else step_size_255) / 255.0
    x = x0.clone()
    if random_start:
        g = as_generator(generator)
        noise = torch.rand(x0.shape, generator=g, device=g.device).to(x0.device)
        x = (x0 + (noise * 2.0 - 1.0) * eps).clamp(0.0, 1.0)
    with _eval_mode(model):
        for _ in range(steps):
            x = x + alpha * _input_gradient(model, x, labels).sign()
            x = torch.minimum(torch.maximum(x, x0 - eps), x0 + eps).clamp(0.0, 1.0)
    return x.detach()


def correct_under_attack(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor | np.ndarray,
    epsilons: Sequence[float],
    batch_size: int,
    device: torch.device | str,
    attack: str = "fgsm",
    steps: int = 10,
    generator: GeneratorLike = None,
) -> dict[float, np.ndarray]:
    """Whether each adversarial image is still classified correctly (bool ``(N,)``), per epsilon (0..255 units);
    its mean is the top-1 under attack, and the per-image answers give its bootstrap interval.

    ``images``: uint8 ``(N, C, H, W)`` 0..255 on any device; ``labels``: int ``(N,)``. Batches of
    ``batch_size`` are moved to ``device``, attacked with ``attack`` ("fgsm" or "pgd" with ``steps``
    iterations and a random start from ``generator``), and classified by the same float32 model.
    Epsilon 0 is the clean accuracy. Returns ``{epsilon: correct}`` in the order given.
    """
    if attack not in ATTACKS:
        raise ValueError(f"attack must be one of {ATTACKS}, got '{attack}'")
    if images.dtype != torch.uint8:
        raise TypeError(f"images must be uint8 (N, C, H, W) 0..255, got {images.dtype}")
    labels = torch.as_tensor(labels, dtype=torch.int64)
    if labels.shape != images.shape[:1]:
        raise ValueError(f"labels {tuple(labels.shape)} do not match images {tuple(images.shape)}")
    if len(images) == 0:
        raise ValueError("no images to attack")
    device = torch.device(device)
    g = as_generator(generator)
    correct: dict[float, list[np.ndarray]] = {eps: [] for eps in epsilons}
    with _eval_mode(model):
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size].to(device).float().div(255.0)
            y = labels[start : start + batch_size].to(device)
            for eps in epsilons:
                if attack == "fgsm":
                    adv = fgsm(model, x, y, eps)
                else:
                    adv = pgd(model, x, y, eps, steps=steps, generator=g)
                with torch.no_grad(), torch.autocast(device.type, enabled=False):
                    pred = model(adv).argmax(1)
                correct[eps].append((pred == y).cpu().numpy())
    return {eps: np.concatenate(correct[eps]) for eps in epsilons}
