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
        # frame 0 is the clean image (as in ImageNet-P), every later frame about equally far from it
        assert (level[:, 0] == 0).all()
        assert (level[:, 1:] > 0.01).all()
        assert float(level[:, 1:].max() / level[:, 1:].min()) < 1.3
        other = perturbation_sequence(RGB, name, 8, generator=6)
        assert not torch.equal(seq, other)


@pytest.mark.parametrize("name", sorted(NOISE_PERTURBATIONS))
def test_noise_sequences_start_from_the_clean_image(name: str) -> None:
    """ImageNet-P's noise videos start with the unperturbed image; FP compares every noisy frame with it."""
    for images in (GRAY, (RGB * 255).round().to(torch.uint8)):
        seq = perturbation_sequence(images, name, FRAMES, generator=4)
        torch.testing.assert_close(seq[:, 0], images, rtol=0, atol=0)
        assert all(not torch.equal(seq[:, t], images) for t in range(1, FRAMES))


def _bright_square(n: int, side: int, size: int = 28) -> torch.Tensor:
    """Float ``(n, 1, size, size)``: black, with a bright ``side`` px square in the top-left corner."""
    images = torch.zeros(n, 1, size, size)
    images[..., :side, :side] = 1.0
    return images


def test_translate_pads_with_the_black_background_not_a_mirror_image() -> None:
    # a bright square on black reaching the top and left edges, as a garment often reaches the frame
    square = _bright_square(32, 14)
    last = perturbation_sequence(square, "translate", FRAMES, generator=7)[:, -1]
    # mirroring would copy the square into the strip it vacates: brightness would grow for the
    # directions that move it away from an edge; black padding only ever loses what leaves the frame
    assert (last.flatten(1).sum(1) <= square.flatten(1).sum(1) + 1e-3).all()
    # an image bright to every edge, moved 3.5 px: the vacated strip is black (a mirror keeps it bright)
    full = perturbation_sequence(_bright_square(32, 28), "translate", FRAMES, generator=7)[:, -1]
    edges = torch.stack([full[..., 0, :], full[..., -1, :], full[..., :, 0], full[..., :, -1]], dim=1)
    assert (edges.amax(-1).amin(1) == 0).all(), "some image kept no black edge line"


@pytest.mark.parametrize("name", ["rotate", "tilt", "scale"])
def test_warps_fill_what_they_bring_in_with_black(name: str) -> None:
    last = perturbation_sequence(_bright_square(8, 28), name, FRAMES, generator=8)[:, -1]
    # every frame of an image bright to its edges shows black where the warp looked outside it
    assert (last.flatten(1).amin(1) == 0).all(), f"{name}: mirrored pixels instead of a black background"
    if name == "scale":  # zoom out to 0.8 about the centre: the 2 px corner lies wholly outside the source
        corner = perturbation_sequence(_bright_square(1, 14), name, FRAMES)[:, -1, :, :2, :2]
        assert (corner == 0).all()


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
