"""ImageNet-P style perturbation sequences, batched in torch.

After Hendrycks & Dietterich (ICLR 2019): each clean image becomes a short video whose frames are
perturbed a little more (or, for noise, drawn again) from frame to frame; a robust classifier keeps
its prediction along the video. Flip probability and top-5 distance are in ``metrics``.

Input: images ``(N, C, H, W)``, C = 1 or 3, uint8 0..255 or float 0..1, any device. Output:
``(N, T, C, H, W)`` of the same dtype and range. Per-image random draws (direction, angle, noise,
snowflakes) come from ``generator`` (as in ``corruptions``), so a seed fixes the whole sequence.

Two kinds of sequence (this decides how ``metrics.flip_probability`` compares frames):

- ``NOISE_PERTURBATIONS`` (gaussian_noise, shot_noise, speckle_noise): frame 0 is the clean image
  and frames 1..T-1 are independent draws of noise at one fixed level, so every noisy frame is
  compared with the clean first one, as in ImageNet-P (its noise videos start with the unperturbed
  image; its evaluation compares each later frame with frame 0);
- all others: one parameter moves in equal steps from frame 0 to frame T-1, so consecutive frames
  are compared. For the geometric ones and brightness, frame 0 is the clean image.

Parameters (lengths as fractions of min(H, W) or in pixels of a 224 px image, so sequences look alike
at any resolution), chosen in the spirit of ImageNet-P's mild, slowly changing perturbations:

==============  ======================================================================
gaussian_noise  x + N(0, 0.05^2) per value
shot_noise      Poisson(x * 200) / 200 (std 0.05 at x = 0.5)
speckle_noise   x + x * N(0, 0.1^2) (extra)
gaussian_blur   sigma from 0 to 6 px@224 (extra)
motion_blur     one-sided motion blur, sigma from 0 to 6 px@224, a random direction per image
zoom_blur       average of centre zooms 1 .. z, z from 1 to 1.15
snow            a fixed snowflake layer (ImageNet-C snow, severity 2) falling by 0.25 of the
                height over the sequence
brightness      HSV value shifted by 0 .. 0.3, brighter or darker at random per image
translate       shift by 0 .. 0.125 of the size in a random direction per image
rotate          rotation by 0 .. 15 degrees, random sign per image
tilt            3-D tilt of the image plane by 0 .. 30 degrees about a random in-plane axis,
                perspective projection with focal length = image size
scale           zoom out from 1 to 0.8 about the centre
shear           horizontal shear 0 .. 0.15, random sign per image (extra)
==============  ======================================================================

Geometric warps sample bilinearly; pixels the warp brings in from outside the image are black
(zero), as in ImageNet-P (torchvision's affine and OpenCV's warpPerspective fill with 0). Black is
Fashion-MNIST's background, so a moved garment shows no mirrored slivers of itself.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from noisy_student.robustness.corruptions import (
    SNOW,
    GeneratorLike,
    add_snow,
    adjust_value,
    as_generator,
    center_zoom,
    check_images,
    from_float,
    gaussian_blur,
    motion_blur,
    normal,
    pixel_scale,
    snow_layer,
    to_float,
    translate,
    uniform,
)

PERTURBATIONS: tuple[str, ...] = (
    "gaussian_noise",
    "shot_noise",
    "motion_blur",
    "zoom_blur",
    "snow",
    "brightness",
    "translate",
    "rotate",
    "tilt",
    "scale",
)
EXTRA_PERTURBATIONS: tuple[str, ...] = ("speckle_noise", "gaussian_blur", "shear")
NOISE_PERTURBATIONS: frozenset[str] = frozenset({"gaussian_noise", "shot_noise", "speckle_noise"})

GAUSSIAN_NOISE_STD = 0.05
SHOT_NOISE_PHOTONS = 200.0
SPECKLE_NOISE_STD = 0.1
GAUSSIAN_BLUR_MAX_SIGMA = 6.0
MOTION_BLUR_MAX_SIGMA = 6.0
ZOOM_BLUR_MAX = 1.15
ZOOM_BLUR_STEP = 0.01
SNOW_PARAMS = SNOW[1]
SNOW_FALL = 0.25
BRIGHTNESS_MAX_SHIFT = 0.3
TRANSLATE_MAX = 0.125
ROTATE_MAX_DEG = 15.0
TILT_MAX_DEG = 30.0
SCALE_MIN = 0.8
SHEAR_MAX = 0.15


def _identity_theta(n: int, device: torch.device) -> torch.Tensor:
    return torch.eye(2, 3, device=device).unsqueeze(0).repeat(n, 1, 1)


# What a warp samples outside the image: zeros = black, the background of Fashion-MNIST and the fill of
# ImageNet-P's warps; "reflection" would mirror parts of the object into the vacated border.
_PADDING = "zeros"


def _warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample ``x (N, C, H, W)`` at ``theta (N, 2, 3)`` @ (output pixel, in -1..1 coordinates); black outside."""
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=_PADDING, align_corners=False)


def _aspect(x: torch.Tensor) -> tuple[float, float]:
    """Pixels per normalised unit along x and y: rotations must be isotropic in pixels."""
    h, w = x.shape[-2:]
    return w / 2.0, h / 2.0


def _rotation_theta(x: torch.Tensor, angle_rad: torch.Tensor) -> torch.Tensor:
    sx, sy = _aspect(x)
    cos, sin = torch.cos(angle_rad), torch.sin(angle_rad)
    theta = torch.zeros(x.shape[0], 2, 3, device=x.device)
    # rotate in pixel units: normalised -> pixels (scale), rotate, back to normalised
    theta[:, 0, 0] = cos
    theta[:, 0, 1] = -sin * sy / sx
    theta[:, 1, 0] = sin * sx / sy
    theta[:, 1, 1] = cos
    return theta


def _tilt(x: torch.Tensor, tilt_rad: torch.Tensor, axis_rad: torch.Tensor) -> torch.Tensor:
    """Perspective view of the image plane rotated by ``tilt_rad`` about an in-plane axis.

    The axis has direction ``axis_rad`` (both ``(N,)``). The camera sits on the optical axis at
    distance f = max(H, W) px looking at the image centre; output pixels are mapped back to the
    plane with the inverse homography; points off the image are black.
    """
    n, _, h, w = x.shape
    f = float(max(h, w))
    ux, uy = torch.cos(axis_rad), torch.sin(axis_rad)
    c, s = torch.cos(tilt_rad), torch.sin(tilt_rad)
    # Rodrigues rotation about the unit axis (ux, uy, 0): R = cI + s[u]x + (1 - c) u u^T
    rot = torch.zeros(n, 3, 3, device=x.device)
    rot[:, 0, 0] = c + (1 - c) * ux * ux
    rot[:, 0, 1] = (1 - c) * ux * uy
    rot[:, 0, 2] = s * uy
    rot[:, 1, 0] = (1 - c) * ux * uy
    rot[:, 1, 1] = c + (1 - c) * uy * uy
    rot[:, 1, 2] = -s * ux
    rot[:, 2, 0] = -s * uy
    rot[:, 2, 1] = s * ux
    rot[:, 2, 2] = c
    # plane point (px, py, 0) in pixels from the centre -> camera coordinates R p + (0, 0, f) -> image f (X/Z, Y/Z)
    hom = torch.zeros(n, 3, 3, device=x.device)
    hom[:, 0, :2] = f * rot[:, 0, :2]
    hom[:, 1, :2] = f * rot[:, 1, :2]
    hom[:, 2, :2] = rot[:, 2, :2]
    hom[:, 2, 2] = f
    inverse = torch.linalg.inv(hom)
    ys = (torch.arange(h, device=x.device, dtype=torch.float32) + 0.5) - h / 2.0
    xs = (torch.arange(w, device=x.device, dtype=torch.float32) + 0.5) - w / 2.0
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    points = torch.stack([gx, gy, torch.ones_like(gx)], dim=-1).view(1, h * w, 3)
    src = points @ inverse.transpose(1, 2)
    src = src[..., :2] / src[..., 2:3]
    grid = torch.stack([src[..., 0] / (w / 2.0), src[..., 1] / (h / 2.0)], dim=-1).view(n, h, w, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=_PADDING, align_corners=False)


def perturbation_sequence(
    images: torch.Tensor,
    name: str,
    frames: int,
    generator: GeneratorLike = None,
) -> torch.Tensor:
    """Turn every image into a ``frames``-long perturbation video.

    ``images``: ``(N, C, H, W)`` uint8 0..255 or float 0..1, C = 1 or 3. ``name``: one of
    ``PERTURBATIONS`` or ``EXTRA_PERTURBATIONS``. Returns ``(N, frames, C, H, W)`` in the input's
    dtype, range and device. Frame t of a non-noise sequence has progress t / (frames - 1) of the
    parameter's range (module docstring); noise sequences start with the clean image, then i.i.d.
    draws at one level.
    """
    known = PERTURBATIONS + EXTRA_PERTURBATIONS
    if name not in known:
        raise ValueError(f"unknown perturbation '{name}'; known: {', '.join(known)}")
    if frames < 2:
        raise ValueError(f"a sequence needs at least 2 frames, got {frames}")
    check_images(images)
    g = as_generator(generator)
    x = to_float(images)
    n, c, h, w = x.shape
    dev = x.device
    s = pixel_scale(x)
    progress = torch.linspace(0.0, 1.0, frames).tolist()
    sign = torch.where(uniform((n,), g, dev) < 0.5, -1.0, 1.0)
    out = []
    if name == "snow":
        # a layer taller than the image slides down behind a fixed window
        fall = max(1, math.ceil(SNOW_FALL * h))
        flakes = snow_layer(n, (h + fall, w), SNOW_PARAMS, g, dev)
    if name == "motion_blur":
        angle = uniform((n,), g, dev) * 360.0
    if name == "translate":
        direction = uniform((n,), g, dev) * 2.0 * math.pi
    if name == "tilt":
        axis = uniform((n,), g, dev) * math.pi
    for index, t in enumerate(progress):
        if name == "gaussian_noise":
            frame = x + normal((n, c, h, w), g, dev) * GAUSSIAN_NOISE_STD
        elif name == "shot_noise":
            rates = (x * SHOT_NOISE_PHOTONS).to(g.device)
            frame = torch.poisson(rates, generator=g).to(dev) / SHOT_NOISE_PHOTONS
        elif name == "speckle_noise":
            frame = x + x * normal((n, c, h, w), g, dev) * SPECKLE_NOISE_STD
        elif name == "gaussian_blur":
            frame = gaussian_blur(x, t * GAUSSIAN_BLUR_MAX_SIGMA * s)
        elif name == "motion_blur":
            sigma = t * MOTION_BLUR_MAX_SIGMA * s
            # radius 2.5 sigma keeps the Gaussian tail; the kernel grows continuously from a point
            frame = motion_blur(x, 2.5 * sigma, sigma, angle)
        elif name == "zoom_blur":
            top = 1.0 + t * (ZOOM_BLUR_MAX - 1.0)
            zooms = torch.linspace(1.0, top, max(2, math.ceil((top - 1.0) / ZOOM_BLUR_STEP) + 1)).tolist()
            frame = sum((center_zoom(x, z) for z in zooms[1:]), x.clone()) / len(zooms)
        elif name == "snow":
            # sub-pixel fall, so that consecutive frames differ even when frames > fall in pixels
            moved = translate(flakes, torch.zeros(n), torch.full((n,), t * fall))
            frame = add_snow(x, moved[..., fall:, :], SNOW_PARAMS[6])
        elif name == "brightness":
            frame = adjust_value(x, (sign * t * BRIGHTNESS_MAX_SHIFT).view(n, 1, 1, 1))
        elif name == "translate":
            theta = _identity_theta(n, dev)
            shift = t * TRANSLATE_MAX * min(h, w)
            sx, sy = _aspect(x)
            theta[:, 0, 2] = -shift * torch.cos(direction) / sx
            theta[:, 1, 2] = -shift * torch.sin(direction) / sy
            frame = _warp(x, theta)
        elif name == "rotate":
            frame = _warp(x, _rotation_theta(x, sign * math.radians(t * ROTATE_MAX_DEG)))
        elif name == "tilt":
            frame = _tilt(x, torch.full((n,), math.radians(t * TILT_MAX_DEG), device=dev), axis)
        elif name == "scale":
            zoom = 1.0 + t * (SCALE_MIN - 1.0)
            theta = _identity_theta(n, dev)
            theta[:, 0, 0] = 1.0 / zoom
            theta[:, 1, 1] = 1.0 / zoom
            frame = _warp(x, theta)
        else:  # shear
            theta = _identity_theta(n, dev)
            sx, sy = _aspect(x)
            theta[:, 0, 1] = sign * t * SHEAR_MAX * sy / sx
            frame = _warp(x, theta)
        if index == 0 and name in NOISE_PERTURBATIONS:
            # ImageNet-P's noise videos start from the unperturbed image. Frame 0's noise is still drawn
            # (and dropped) so the generator advances as before: the noisy frames, and every sequence
            # drawn after this one from a shared generator (robustness.build), stay the same.
            frame = x
        out.append(from_float(frame, images.dtype))
    return torch.stack(out, dim=1)
