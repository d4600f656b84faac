"""The 15 ImageNet-C corruptions x 5 severities as batched torch operations.

After Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
Perturbations" (ICLR 2019). Written from the paper's descriptions and severity tables, in torch, so
a whole batch is corrupted at once on whatever device it lives on.

Input and output: images ``(N, C, H, W)`` with C = 1 (grayscale) or 3 (RGB), either uint8 in
0..255 or floating point in 0..1; the output has the input's shape, dtype and range. Work is done
in float32. Any image size works.

Size: ImageNet-C was made at 224 x 224 px. Parameters that are lengths in pixels (blur radii,
displacements) are multiplied by ``min(H, W) / 224``, so a corruption looks the same relative to the
image at any resolution. Kernels are built to stay continuous below one pixel (area-sampled disks,
sub-pixel motion taps, stochastic rounding of glass displacements), so small images (28-32 px) get a
weaker but still severity-ordered corruption instead of an identity.

Randomness: every random draw uses the ``generator`` argument (a ``torch.Generator``, an int seed,
or None for torch's global CPU generator). Draws are made on the generator's device and moved to the
images' device, so a CPU generator gives the same corruption on CPU and GPU inputs.

Deviations from the original, on purpose:

- frost: the original blends in random crops of six frost photographs shipped with the reference
  code. Here the frost layer is synthesised (see ``frost_layer``): fine ice lines along the
  zero-level curves of smooth noise at many scales, over a fractal haze, with per-pixel grain,
  tinted blue-white; it is blended with the original's weights.
- fog: the original's diamond-square plasma fractal is replaced by multi-octave value noise with
  the same per-octave amplitude decay (``wibbledecay``), normalised to 0..1 like the original.
- glass_blur: the original swaps pixels one at a time in a Python loop. Here each pixel takes the
  value at a random offset (one gather), with the offset's variance equal to the summed variance of
  the original's iterations of uniform swaps, stochastically rounded to whole pixels.
- elastic_transform: the released ImageNet-C elastic severities are not ordered (AlexNet errors
  0.53, 0.70, 0.56, 0.64, 0.81 over severities 1..5). Here a smooth random displacement field and a
  small random affine map both grow with severity.
- defocus_blur: the same radii and anti-alias blur, but the disk is area-sampled (``disk_kernel``)
  rather than thresholded, so it grows continuously with the radius below one pixel.
- motion_blur and snow's motion: ImageMagick's one-sided Gaussian-weighted line kernel, applied by
  summing sub-pixel shifts of the image.
- pixelate: a mosaic of whole-pixel blocks (1-2 px wide for factor 0.6), each the block's mean,
  instead of PIL's box resize down and up, whose fractional windows add misplacement error.
- jpeg_compression: per image through PIL's JPEG encoder and decoder on the CPU, as the original
  (torchvision's JPEG codec is deprecated since 0.29); float inputs are quantised to 8 bits first,
  as a JPEG file would be.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from noisy_student.robustness.metrics import IMAGENET_C_CORRUPTIONS

CORRUPTIONS: tuple[str, ...] = IMAGENET_C_CORRUPTIONS
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
REFERENCE_SIZE = 224
# ITU-R BT.601 luma weights, as PIL and OpenCV use for RGB -> gray
LUMA = (0.299, 0.587, 0.114)

GeneratorLike = torch.Generator | int | None

# Severity tables: the parameters of ImageNet-C's generation script (hendrycks/robustness) where the
# operation is the same; lengths are in pixels of a 224 px image.
GAUSSIAN_NOISE_STD = (0.08, 0.12, 0.18, 0.26, 0.38)
SHOT_NOISE_PHOTONS = (60.0, 25.0, 12.0, 5.0, 3.0)
IMPULSE_NOISE_AMOUNT = (0.03, 0.06, 0.09, 0.17, 0.27)
DEFOCUS_RADIUS_ALIAS = ((3.0, 0.1), (4.0, 0.5), (6.0, 0.5), (8.0, 0.5), (10.0, 0.5))
GLASS_SIGMA_DELTA_ITERATIONS = ((0.7, 1, 2), (0.9, 2, 1), (1.0, 2, 3), (1.1, 3, 2), (1.5, 4, 2))
MOTION_RADIUS_SIGMA = ((10.0, 3.0), (15.0, 5.0), (15.0, 8.0), (15.0, 12.0), (20.0, 15.0))
# (largest zoom, zoom step)
ZOOM_MAX_STEP = ((1.10, 0.01), (1.15, 0.01), (1.20, 0.02), (1.25, 0.02), (1.30, 0.03))
# (noise mean, noise std, zoom, threshold, motion radius, motion sigma, image weight)
SNOW = (
    (0.1, 0.3, 3.0, 0.5, 10.0, 4.0, 0.8),
    (0.2, 0.3, 2.0, 0.5, 12.0, 4.0, 0.7),
    (0.55, 0.3, 4.0, 0.9, 12.0, 8.0, 0.7),
    (0.55, 0.3, 4.5, 0.85, 12.0, 8.0, 0.65),
    (0.55, 0.3, 2.5, 0.85, 12.0, 12.0, 0.55),
)
# (image weight, frost weight)
FROST_WEIGHTS = ((1.0, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75))
# (fog strength, per-octave amplitude decay)
FOG = ((1.5, 2.0), (2.0, 2.0), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4))
BRIGHTNESS_SHIFT = (0.1, 0.2, 0.3, 0.4, 0.5)
CONTRAST_FACTOR = (0.4, 0.3, 0.2, 0.1, 0.05)
# (RMS of the smooth displacement field, largest affine perturbation), both as fractions of min(H, W)
ELASTIC_FIELD_AFFINE = ((0.008, 0.01), (0.012, 0.015), (0.016, 0.02), (0.022, 0.025), (0.03, 0.03))
PIXELATE_FACTOR = (0.6, 0.5, 0.4, 0.3, 0.25)
JPEG_QUALITY = (25, 18, 15, 10, 7)
# control points across the image of the elastic field: smooth at the scale of object parts
ELASTIC_GRID = 8
FROST_TINT = (0.86, 0.93, 1.0)


# ---------------------------------------------------------------------------------------------
# plumbing: dtypes, randomness, convolution


def as_generator(generator: GeneratorLike) -> torch.Generator:
    """A torch.Generator from a generator, an int seed (new CPU generator) or None (global CPU RNG)."""
    if generator is None:
        return torch.default_generator
    if isinstance(generator, int):
        return torch.Generator().manual_seed(generator)
    return generator


def check_images(images: torch.Tensor) -> None:
    """Raise if ``images`` is not a uint8/float ``(N, C, H, W)`` batch with C in (1, 3)."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, C, H, W) with C = 1 or 3, got shape {tuple(images.shape)}")
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise TypeError(f"images must be uint8 (0..255) or float (0..1), got {images.dtype}")


def to_float(images: torch.Tensor) -> torch.Tensor:
    """float32 copy in 0..1 of a uint8 (0..255) or float (0..1) batch."""
    if images.dtype == torch.uint8:
        return images.float().div(255.0)
    return images.float().clone()


def from_float(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Back to ``dtype`` after clamping to 0..1; uint8 is rounded to the nearest level."""
    x = x.clamp(0.0, 1.0)
    if dtype == torch.uint8:
        return x.mul(255.0).round().to(torch.uint8)
    return x.to(dtype)


def uniform(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """float32 U(0, 1) draws of ``shape`` from ``generator``, on ``device``."""
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def normal(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """float32 N(0, 1) draws of ``shape`` from ``generator``, on ``device``."""
    return torch.randn(shape, generator=generator, device=generator.device).to(device)


def pixel_scale(x: torch.Tensor) -> float:
    """Factor from 224 px reference lengths to this batch's pixels: min(H, W) / 224."""
    return min(x.shape[-2:]) / REFERENCE_SIZE


def gray(x: torch.Tensor) -> torch.Tensor:
    """Luma ``(N, 1, H, W)`` of a float batch with C = 1 or 3."""
    if x.shape[1] == 1:
        return x
    weights = torch.tensor(LUMA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * weights).sum(1, keepdim=True)


def _pad(x: torch.Tensor, pad_h: int, pad_w: int) -> torch.Tensor:
    # mirror padding like OpenCV's default border; replicate when the image is too small to mirror
    mode = "reflect" if pad_h < x.shape[-2] and pad_w < x.shape[-1] else "replicate"
    return F.pad(x, (pad_w, pad_w, pad_h, pad_h), mode=mode)


def filter2d(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Convolve every channel of ``x (N, C, H, W)`` with one odd-sized ``kernel (kh, kw)``; same size out."""
    kh, kw = kernel.shape
    c = x.shape[1]
    weight = kernel.to(x).expand(c, 1, kh, kw)
    return F.conv2d(_pad(x, kh // 2, kw // 2), weight, groups=c)


def gaussian_kernel1d(sigma: float, device: torch.device | None = None) -> torch.Tensor:
    """Discrete Gaussian kernel ``(2r+1,)`` of variance exactly ``sigma**2`` pixels^2, float32, sum 1.

    Lindeberg's discrete analogue exp(-t) I_n(t), t = sigma^2, computed from its Fourier transform
    exp(t (cos w - 1)). Unlike a sampled exp(-n^2 / 2 sigma^2), which is a delta for sigma < ~0.3,
    it blurs continuously from sigma = 0 (neighbour weight ~ sigma^2 / 2), so sub-pixel blurs of
    small images are not silently dropped. ``[1.]`` for sigma <= 0.
    """
    if sigma <= 0.0:
        return torch.ones(1, device=device)
    radius = math.ceil(4.0 * sigma) + 2
    size = 4 * radius + 4
    freq = 2.0 * math.pi * torch.arange(size, dtype=torch.float64) / size
    k = torch.fft.ifft(torch.exp(sigma**2 * (torch.cos(freq) - 1.0))).real
    k = torch.cat([k[size - radius :], k[: radius + 1]]).clamp_min(0.0)
    return (k / k.sum()).float().to(device)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``x (N, C, H, W)`` float with standard deviation ``sigma`` pixels."""
    if sigma <= 0.0:
        return x
    k = gaussian_kernel1d(sigma, x.device)
    return filter2d(filter2d(x, k.view(1, -1)), k.view(-1, 1))


def disk_kernel(radius: float, supersample: int = 8) -> torch.Tensor:
    """Area-sampled disk of ``radius`` pixels, normalised to sum 1, float32 ``(k, k)``.

    Entry (i, j) is the probability that a point uniform in pixel (0, 0) and a point uniform in
    pixel (i, j) are within ``radius`` of each other, i.e. the disk integrated over both pixel
    footprints. Unlike a thresholded disk this is continuous in the radius, so sub-pixel radii of
    small images still blur a little, and more for a larger radius.
    """
    reach = math.ceil(radius + 1.0)
    # offsets between two uniform points of unit cells: a tent in [-1, 1] per axis
    s = (torch.arange(2 * supersample, dtype=torch.float64) + 0.5) / supersample - 1.0
    tent = 1.0 - s.abs()
    offsets = torch.arange(-reach, reach + 1, dtype=torch.float64)
    px = (offsets.view(-1, 1) + s.view(1, -1)).view(-1, 1, 2 * supersample, 1)
    py = (offsets.view(-1, 1) + s.view(1, -1)).view(1, -1, 1, 2 * supersample)
    inside = (px**2 + py**2 <= radius**2).double()
    weights = tent.view(-1, 1) * tent.view(1, -1)
    k = (inside * weights).sum((-2, -1))
    if k.sum() <= 0.0:
        k = torch.zeros_like(k)
        k[reach, reach] = 1.0
    return (k / k.sum()).float()


def affine_sample(x: torch.Tensor, theta: torch.Tensor, padding_mode: str = "reflection") -> torch.Tensor:
    """Bilinear resampling of ``x (N, C, H, W)`` at ``theta (N, 2, 3)`` @ output coordinates.

    Coordinates are normalised to -1..1 (align_corners=False); ``theta`` maps output to input, so
    a translation column of +t samples from further right/down (content moves left/up).
    """
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)


def translate(x: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, padding_mode: str = "border") -> torch.Tensor:
    """Shift each image of ``x (N, C, H, W)`` by ``(dx, dy)`` pixels (float ``(N,)``), bilinear, sub-pixel."""
    n, _, h, w = x.shape
    theta = torch.zeros(n, 2, 3, device=x.device)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = -2.0 * dx.to(x.device) / w
    theta[:, 1, 2] = -2.0 * dy.to(x.device) / h
    return affine_sample(x, theta, padding_mode)


def motion_blur(x: torch.Tensor, radius: float, sigma: float, angle_deg: torch.Tensor) -> torch.Tensor:
    """One-sided motion blur of ``x (N, C, H, W)`` float, direction ``angle_deg (N,)`` per image.

    ImageMagick's kernel: a line of length ``2 * radius`` pixels from the pixel backwards along the
    motion, weighted by exp(-d^2 / (2 sigma^2)) at distance d. Applied as a weighted sum of
    sub-pixel shifts, which costs O(taps * H * W): taps every pixel along long lines (bilinear
    shifts fill in between), and 4 or more taps on sub-pixel lines so these still blur a little.
    """
    length = 2.0 * radius
    if length <= 0.0 or sigma <= 0.0:
        return x
    step = min(1.0, length / 4.0)
    taps = torch.arange(0.0, length + 1e-6, step)
    weights = torch.exp(-0.5 * (taps / sigma) ** 2)
    weights = weights / weights.sum()
    n, _, h, w = x.shape
    rad = torch.deg2rad(angle_deg.float().to(x.device))
    # one identity grid, offset per tap: cheaper than an affine grid per tap
    identity = torch.eye(2, 3, device=x.device).unsqueeze(0)
    base = F.affine_grid(identity, [1, 1, h, w], align_corners=False)
    # sampling at -d along the motion makes content trail behind by d (normalised units: 2 / size)
    direction = torch.stack([-torch.cos(rad) * 2.0 / w, -torch.sin(rad) * 2.0 / h], dim=-1).view(n, 1, 1, 2)
    out = torch.zeros_like(x)
    for d, wgt in zip(taps.tolist(), weights.tolist(), strict=True):
        if d == 0.0:
            out += wgt * x
        else:
            grid = base + d * direction
            out += wgt * F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out


def center_zoom(x: torch.Tensor, zoom: float) -> torch.Tensor:
    """Zoom into the centre of ``x (N, C, H, W)`` by ``zoom`` (> 1 enlarges), keeping the size."""
    n = x.shape[0]
    theta = torch.zeros(n, 2, 3, device=x.device)
    theta[:, 0, 0] = 1.0 / zoom
    theta[:, 1, 1] = 1.0 / zoom
    return affine_sample(x, theta, "border")


def value_noise(
    n: int,
    size: tuple[int, int],
    cells: int,
    generator: torch.Generator,
    device: torch.device,
) -> torch.Tensor:
    """Smooth N(0, 1)-valued noise ``(n, 1, H, W)``: a ``cells`` x ``cells`` random grid, bicubic upsampled."""
    h, w = size
    cells = max(2, cells)
    grid = normal((n, 1, cells + 1, cells + 1), generator, device)
    return F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=True)


def fractal_noise(
    n: int,
    size: tuple[int, int],
    decay: float,
    generator: torch.Generator,
    device: torch.device,
) -> torch.Tensor:
    """Plasma-like noise ``(n, 1, H, W)`` min-max normalised per image to 0..1.

    Octaves with 2, 4, 8, ... cells up to the pixel grid; octave k has amplitude ``decay ** -k``,
    as in midpoint displacement where the random wobble shrinks by ``decay`` at every halving.
    """
    h, w = size
    octaves = max(1, math.ceil(math.log2(max(h, w))))
    total = torch.zeros(n, 1, h, w, device=device)
    for k in range(1, octaves + 1):
        total += value_noise(n, size, 2**k, generator, device) * decay ** (-k)
    lo = total.amin((-2, -1), keepdim=True)
    hi = total.amax((-2, -1), keepdim=True)
    return (total - lo) / (hi - lo).clamp_min(1e-12)


def adjust_value(x: torch.Tensor, shift: float | torch.Tensor) -> torch.Tensor:
    """Add ``shift`` to the HSV value channel, keeping hue and saturation, clamped to 0..1.

    ``x`` float ``(N, C, H, W)``; ``shift`` a float or ``(N, 1, 1, 1)`` tensor. For RGB the colour is
    rescaled by V'/V (same H and S); black pixels become gray V'. For grayscale V is the pixel.
    """
    if x.shape[1] == 1:
        return (x + shift).clamp(0.0, 1.0)
    v = x.amax(1, keepdim=True)
    v_new = (v + shift).clamp(0.0, 1.0)
    scaled = x * (v_new / v.clamp_min(1e-8))
    return torch.where(v > 1e-8, scaled, v_new.expand_as(x)).clamp(0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# the corruptions: float (N, C, H, W) in 0..1 -> float, severity 1..5


def _gaussian_noise(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    return x + normal(tuple(x.shape), g, x.device) * GAUSSIAN_NOISE_STD[severity - 1]


def _shot_noise(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    photons = SHOT_NOISE_PHOTONS[severity - 1]
    rates = (x * photons).to(g.device)
    return torch.poisson(rates, generator=g).to(x.device) / photons


def _impulse_noise(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    # salt and pepper: a fraction `amount` of the values, half set to 1, half to 0
    amount = IMPULSE_NOISE_AMOUNT[severity - 1]
    u = uniform(tuple(x.shape), g, x.device)
    out = torch.where(u < amount / 2, torch.zeros_like(x), x)
    return torch.where((u >= amount / 2) & (u < amount), torch.ones_like(x), out)


def _defocus_blur(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    radius, alias = DEFOCUS_RADIUS_ALIAS[severity - 1]
    s = pixel_scale(x)
    return gaussian_blur(filter2d(x, disk_kernel(radius * s)), alias * s)


def _glass_blur(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    sigma, delta, iterations = GLASS_SIGMA_DELTA_ITERATIONS[severity - 1]
    s = pixel_scale(x)
    n, c, h, w = x.shape
    x = gaussian_blur(x, sigma * s)
    # variance of one uniform integer offset in -delta..delta is delta (delta + 1) / 3; iterations add
    std = s * math.sqrt(iterations * delta * (delta + 1) / 3.0)
    offsets = normal((n, 2, h, w), g, x.device) * std
    # stochastic rounding keeps the expected offset, so sub-pixel spreads still move some pixels
    offsets = torch.floor(offsets + uniform((n, 2, h, w), g, x.device)).long()
    rows = (torch.arange(h, device=x.device).view(1, h, 1) + offsets[:, 0]).clamp(0, h - 1)
    cols = (torch.arange(w, device=x.device).view(1, 1, w) + offsets[:, 1]).clamp(0, w - 1)
    index = (rows * w + cols).view(n, 1, h * w).expand(n, c, h * w)
    x = x.flatten(2).gather(2, index).view(n, c, h, w)
    return gaussian_blur(x, sigma * s)


def _motion_blur(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    radius, sigma = MOTION_RADIUS_SIGMA[severity - 1]
    s = pixel_scale(x)
    angle = uniform((x.shape[0],), g, x.device) * 90.0 - 45.0
    return motion_blur(x, radius * s, sigma * s, angle)


def _zoom_blur(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    top, step = ZOOM_MAX_STEP[severity - 1]
    zooms = torch.arange(1.0, top + step / 2, step).tolist()
    out = x.clone()
    for zoom in zooms:
        out += center_zoom(x, zoom)
    return out / (len(zooms) + 1)


def snow_layer(
    n: int,
    size: tuple[int, int],
    params: tuple[float, ...],
    generator: torch.Generator,
    device: torch.device,
    angle_deg: torch.Tensor | None = None,
) -> torch.Tensor:
    """Motion-blurred snowflakes ``(n, 1, H, W)`` in 0..1, drawn at the scale of a 224 px image.

    ``params`` is a row of ``SNOW``: Gaussian noise (mean, std) on a grid ``zoom`` times coarser than
    a 224 px image, bilinearly enlarged to at least 224 px, zeroed below the threshold (this fixes
    how many flakes there are and how big, so it runs at the reference scale whatever the image
    size), then area-resampled to a canvas with min side max(min(H, W), 112), motion-blurred there
    (radius, sigma in reference pixels) along ``angle_deg (n,)`` (default: uniform in -135..-45
    degrees) and resampled to ``size``.
    """
    loc, scale, zoom, threshold, radius, sigma = params[:6]
    h, w = size
    s = min(h, w) / REFERENCE_SIZE
    ref_h, ref_w = h / s, w / s
    fine = max(1.0, s)
    cells = (max(2, math.ceil(ref_h / zoom)), max(2, math.ceil(ref_w / zoom)))
    flakes = normal((n, 1, *cells), generator, device) * scale + loc
    flakes = F.interpolate(flakes, size=(round(ref_h * fine), round(ref_w * fine)), mode="bilinear")
    flakes = torch.where(flakes < threshold, torch.zeros_like(flakes), flakes).clamp(0.0, 1.0)
    canvas_scale = max(min(h, w), 112) / REFERENCE_SIZE
    canvas = (max(1, round(ref_h * canvas_scale)), max(1, round(ref_w * canvas_scale)))
    if canvas != tuple(flakes.shape[-2:]):
        flakes = F.interpolate(flakes, size=canvas, mode="area")
    if angle_deg is None:
        angle_deg = uniform((n,), generator, device) * 90.0 - 135.0
    flakes = motion_blur(flakes, radius * canvas_scale, sigma * canvas_scale, angle_deg)
    if canvas != (h, w):
        flakes = F.interpolate(flakes, size=(h, w), mode="bilinear", antialias=True)
    return flakes.clamp(0.0, 1.0)


def add_snow(x: torch.Tensor, flakes: torch.Tensor, image_weight: float) -> torch.Tensor:
    """Whiten ``x`` towards its brightened gray as snowy light does, then add ``flakes`` and their 180° turn."""
    whitened = torch.maximum(x, gray(x) * 1.5 + 0.5)
    x = image_weight * x + (1.0 - image_weight) * whitened
    return x + flakes + flakes.flip(-2, -1)


def _snow(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    params = SNOW[severity - 1]
    flakes = snow_layer(x.shape[0], tuple(x.shape[-2:]), params, g, x.device)
    return add_snow(x, flakes, params[6])


def frost_layer(n: int, channels: int, size: tuple[int, int], g: torch.Generator, device: torch.device) -> torch.Tensor:
    """Synthetic frost ``(n, channels, H, W)`` in 0..1, blue-white for RGB.

    Ice lines are where smooth noise crosses zero (exp(-(v/width)^2) is near 1 only there); summing
    them over octaves from 3 cells to 2 px per cell, with slowly decaying weight, gives a dense
    network of fine crystal-like lines over coarser ones. Added to a fractal haze and multiplied by
    per-pixel grain; mean about 0.45, like a bright frost photograph.
    """
    h, w = size
    finest = max(4, min(h, w) // 2)
    lines = torch.zeros(n, 1, h, w, device=device)
    cells, weight = 3, 1.0
    while cells <= finest:
        v = value_noise(n, size, cells, g, device)
        lines += weight * torch.exp(-((v / 0.12) ** 2))
        cells, weight = cells * 2, weight * 0.9
    lines = lines / lines.amax((-2, -1), keepdim=True).clamp_min(1e-12)
    haze = fractal_noise(n, size, 1.6, g, device)
    grain = uniform((n, 1, h, w), g, device)
    frost = (0.25 + 0.3 * haze + 0.6 * lines) * (0.8 + 0.2 * grain)
    tint = torch.tensor(FROST_TINT, device=device).view(1, 3, 1, 1)
    if channels == 1:
        tint = (tint * torch.tensor(LUMA, device=device).view(1, 3, 1, 1)).sum(1, keepdim=True)
    return (frost * tint).clamp(0.0, 1.0)


def _frost(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    image_weight, frost_weight = FROST_WEIGHTS[severity - 1]
    frost = frost_layer(x.shape[0], x.shape[1], tuple(x.shape[-2:]), g, x.device)
    return image_weight * x + frost_weight * frost


def _fog(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    strength, decay = FOG[severity - 1]
    peak = x.amax((1, 2, 3), keepdim=True)
    fog = fractal_noise(x.shape[0], tuple(x.shape[-2:]), decay, g, x.device)
    # rescaled so that the brightest clean pixel keeps its value where the fog is thickest
    return (x + strength * fog) * peak / (peak + strength)


def _brightness(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    return adjust_value(x, BRIGHTNESS_SHIFT[severity - 1])


def _contrast(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    mean = x.mean((2, 3), keepdim=True)
    return (x - mean) * CONTRAST_FACTOR[severity - 1] + mean


def _elastic_transform(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    field_rms, affine = ELASTIC_FIELD_AFFINE[severity - 1]
    n, _, h, w = x.shape
    theta = torch.zeros(n, 2, 3, device=x.device)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    # normalised coordinates span 2 per side, so a fraction f of the size is 2 f
    theta = theta + (uniform((n, 2, 3), g, x.device) * 2.0 - 1.0) * (2.0 * affine)
    grid = F.affine_grid(theta, [n, 1, h, w], align_corners=False)
    field = torch.cat([value_noise(n, (h, w), ELASTIC_GRID, g, x.device) for _ in range(2)], dim=1)
    field = field / field.pow(2).mean((1, 2, 3), keepdim=True).sqrt().clamp_min(1e-12)
    side = min(h, w)
    scale = torch.tensor([2.0 * side / w, 2.0 * side / h], device=x.device).view(1, 2, 1, 1)
    grid = grid + (field * field_rms * scale).permute(0, 2, 3, 1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _block_average(size: int, cells: int, device: torch.device) -> torch.Tensor:
    """``(size, size)`` matrix averaging each pixel with the pixels of its block along one axis.

    Pixel j belongs to block floor((j + 0.5) * cells / size), the centre-aligned nearest-neighbour
    map, so blocks are whole pixels (sizes differ by at most one) and the matrix is a projection.
    """
    block = ((torch.arange(size, device=device) + 0.5) * cells / size).floor().long()
    same = (block.view(-1, 1) == block.view(1, -1)).float()
    return same / same.sum(1, keepdim=True)


def _pixelate(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    # a mosaic of whole-pixel blocks, each the mean of the pixels it covers: PIL's box down- then
    # up-sampling, but without the half-pixel misplacement that fractional box windows add
    factor = PIXELATE_FACTOR[severity - 1]
    h, w = x.shape[-2:]
    rows = _block_average(h, max(1, round(h * factor)), x.device)
    cols = _block_average(w, max(1, round(w * factor)), x.device)
    return rows @ x @ cols.T


def _jpeg_compression(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    quality = JPEG_QUALITY[severity - 1]
    levels = x.clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    out = []
    for image in levels:
        buffer = io.BytesIO()
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, "JPEG", quality=quality)
        buffer.seek(0)
        with Image.open(buffer) as decoded:
            array = np.asarray(decoded.convert("L" if image.shape[-1] == 1 else "RGB"))
        out.append(torch.from_numpy(array.copy()).view(*array.shape[:2], -1))
    return torch.stack(out).permute(0, 3, 1, 2).to(x.device).float().div(255.0)


_CORRUPTION_FNS: dict[str, Callable[[torch.Tensor, int, torch.Generator], torch.Tensor]] = {
    "gaussian_noise": _gaussian_noise,
    "shot_noise": _shot_noise,
    "impulse_noise": _impulse_noise,
    "defocus_blur": _defocus_blur,
    "glass_blur": _glass_blur,
    "motion_blur": _motion_blur,
    "zoom_blur": _zoom_blur,
    "snow": _snow,
    "frost": _frost,
    "fog": _fog,
    "brightness": _brightness,
    "contrast": _contrast,
    "elastic_transform": _elastic_transform,
    "pixelate": _pixelate,
    "jpeg_compression": _jpeg_compression,
}
# corruptions whose output depends on the generator
RANDOM_CORRUPTIONS: frozenset[str] = frozenset(
    {
        "gaussian_noise",
        "shot_noise",
        "impulse_noise",
        "glass_blur",
        "motion_blur",
        "snow",
        "frost",
        "fog",
        "elastic_transform",
    }
)


def corrupt(images: torch.Tensor, name: str, severity: int, generator: GeneratorLike = None) -> torch.Tensor:
    """Apply ImageNet-C corruption ``name`` at ``severity`` (1..5) to a batch.

    ``images``: ``(N, C, H, W)``, C = 1 or 3, uint8 0..255 or float 0..1, any device. Returns a new
    tensor of the same shape, dtype, range and device. Every image gets its own random draw (noise,
    angle, flakes, ...); the same ``generator`` state or seed gives the same output.
    """
    if name not in _CORRUPTION_FNS:
        raise ValueError(f"unknown corruption '{name}'; known: {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity}")
    check_images(images)
    if images.shape[0] == 0:
        return images.clone()
    x = to_float(images)
    out = _CORRUPTION_FNS[name](x, severity, as_generator(generator))
    return from_float(out, images.dtype)
