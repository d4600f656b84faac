from __future__ import annotations

import math

import pytest
import torch

from noisy_student.robustness.perturbations import (
    EXTRA_PERTURBATIONS,
    NOISE_PERTURBATIONS,
    PERTURBATIONS,
    perturbation_sequence,
)

ALL = PERTURBATIONS + EXTRA_PERTURBATIONS
# frame 0 is the clean image (the parameter starts at its neutral value)
STARTS_CLEAN = {
    "motion_blur",
    "zoom_blur",
    "gaussian_blur",
    "brightness",
    "translate",
    "rotate",
    "tilt",
    "scale",
    "shear",
}
FRAMES = 6


pytestmark = pytest.mark.usefixtures("one_thread")


def scene(n: int, channels: int, size: int) -> torch.Tensor:
    """Float (n, channels, size, size) in 0..1: gradient, an off-centre square and a grating."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    out = []
    for i in range(n):
        img = 0.2 + 0.4 * xx + 0.1 * torch.sin(2 * math.pi * (4 * yy + 0.3 * i))
        img = torch.where((xx > 0.2) & (xx < 0.5) & (yy > 0.3) & (yy < 0.7), 0.9 - 0.2 * i, img)
        out.append(img.expand(channels, size, size) * torch.linspace(1.0, 0.8, channels).view(-1, 1, 1))
    return torch.stack(out).clamp(0, 1)


GRAY = scene(2, 1, 28)
RGB = scene(2, 3, 32)


@pytest.mark.parametrize("name", ALL)
def test_shapes_dtype_range(name: str) -> None:
    for images in (GRAY, (RGB * 255).round().to(torch.uint8)):
        seq = perturbation_sequence(images, name, FRAMES, generator=0)
        assert seq.shape == (images.shape[0], FRAMES, *images.shape[1:])
        assert seq.dtype == images.dtype
        if images.is_floating_point():
            assert float(seq.min()) >= 0.0 and float(seq.max()) <= 1.0


@pytest.mark.parametrize("name", ALL)
def test_deterministic_given_seed(name: str) -> None:
    first = perturbation_sequence(RGB, name, FRAMES, generator=3)
    again = perturbation_sequence(RGB, name, FRAMES, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(first, again, rtol=0, atol=0)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("images", [GRAY, RGB], ids=["gray28", "rgb32"])
def test_frames_change_along_the_sequence(name: str, images: torch.Tensor) -> None:
    seq = perturbation_sequence(images, name, FRAMES, generator=1)
    step = (seq[:, 1:] - seq[:, :-1]).abs().flatten(2).mean(-1)
    assert (step > 1e-4).all(), f"{name}: a frame equals the previous one: {step}"
    if name in STARTS_CLEAN:
        torch.testing.assert_close(seq[:, 0], images, rtol=0, atol=1e-5)
        first, last = (seq[:, 0] - images).abs().mean(), (seq[:, -1] - images).abs().mean()
        assert last > first + 1e-3


def test_noise_frames_are_iid_draws_at_one_level() -> None:
    assert NOISE_PERTURBATIONS <= set(ALL)
    for name in sorted(NOISE_PERTURBATIONS):
        seq = perturbation_sequence(RGB, name, 8, generator=5)
        level = (seq - RGB.unsqueeze(1)).abs().flatten(2).mean(-1)
        # frame 0 is noisy too, and every frame is about equally far from the clean image
        assert (level > 0.01).all()
        assert float(level.max() / level.min()) < 1.3
        other = perturbation_sequence(RGB, name, 8, generator=6)
        assert not torch.equal(seq, other)


def test_geometric_sequences_move_smoothly() -> None:
    for name in ("translate", "rotate", "tilt", "scale"):
        seq = perturbation_sequence(GRAY, name, 9, generator=2)
        distance = (seq - GRAY.unsqueeze(1)).abs().flatten(2).mean(-1)
        # the displacement grows frame by frame, so the distance to the clean image does too
        assert (distance[:, 1:] > distance[:, :-1]).all(), f"{name}: {distance}"


def test_input_errors() -> None:
    with pytest.raises(ValueError, match="unknown perturbation"):
        perturbation_sequence(GRAY, "jpeg", 4)
    with pytest.raises(ValueError, match="at least 2 frames"):
        perturbation_sequence(GRAY, "rotate", 1)
