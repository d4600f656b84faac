"""The one image decoder: an image file (or a decoded video frame) to uint8 pixels of a fixed size.

Every reader of user or benchmark images goes through here (``data.folders`` for the prepared
sets, ``robustness.loaders`` for the released ImageNet-A/-C/-P), so an image looks the same to
the pipeline whichever path reads it:

- EXIF orientation is applied (a photo is seen upright, as a viewer shows it);
- 16-bit greyscale (``I;16*``, ``I``) is scaled from 0..65535 to 0..255, not clipped at 255;
- transparency (``RGBA``, ``LA``, ``PA``, a palette with a transparent index) is composited over
  white, since transparent pixels hold arbitrary colours;
- palette, CMYK, bilevel and other modes are converted by PIL;
- the result has 1 channel (PIL ``L``, ITU-R 601 luma) or 3 (``RGB``).

Then one of three fits brings it to the output size (bilinear, antialiased):

- ``"stretch"``: resized straight to ``(H, W)``, aspect ratio not kept;
- ``"crop"``: the shorter side resized to ``size / crop_fraction``, then the centre ``(H, W)`` cut
  out (0.875 = the usual Resize(256) + CenterCrop(224));
- ``"square"``: the shorter side resized to ``size`` and the centre square kept, in a single
  resampling of the centre box (sub-pixel box, no intermediate image).

Arrays are uint8 ``(H, W)`` for 1 channel, ``(H, W, 3)`` for 3.

A file whose shorter side is below :data:`MIN_IMAGE_SIDE` px is refused (:class:`ImageTooSmallError`)
rather than stretched into a flat output image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageOps

ImageSize = int | tuple[int, int]  # side of a square, or (height, width), in pixels
Fit = Literal["stretch", "crop", "square"]

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")
_ALPHA_MODES = ("RGBA", "LA", "PA")
_WHITE = (255, 255, 255, 255)

# Why 8 px: it is the smallest output size params allow (every image_size in config.py is >= 8), and
# below it a file holds no recognisable content (1x1 / 2x2 placeholders, tracking pixels, broken
# exports): bilinear upscaling turns it into a flat image that would silently enter training or an
# evaluation with a label. Real small inputs (Fashion-MNIST's 28 px, CIFAR's 32 px, thumbnails)
# stay well above it, so a 28 px image resized to 32 is still accepted.
MIN_IMAGE_SIDE = 8


class ImageTooSmallError(ValueError):
    """An image file too small to be a real input; the message names the file, its size and the minimum."""


def image_hw(size: ImageSize) -> tuple[int, int]:
    """``(height, width)`` in pixels of an output size; ValueError unless both are positive."""
    h, w = (size, size) if isinstance(size, int) else size
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {size}")
    return int(h), int(w)


def channel_mode(channels: int) -> str:
    """PIL mode of ``channels`` output channels: 1 -> ``L``, 3 -> ``RGB``; ValueError otherwise."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}")
    return "L" if channels == 1 else "RGB"


def to_channels(image: Image.Image, channels: int) -> Image.Image:
    """``image`` as ``L`` (1 channel) or ``RGB`` (3): 16-bit scaled to 8 bits, transparency over white."""
    mode = channel_mode(channels)
    if image.mode in _SIXTEEN_BIT_MODES:
        # PIL clips 16-bit values at 255 when converting to L: a normal 16-bit photo would come out white
        values = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(values * (255.0 / 65535.0), 0, 255).round().astype(np.uint8), "L")
    if image.mode in _ALPHA_MODES or (image.mode == "P" and "transparency" in image.info):
        # transparent pixels hold arbitrary colours; show them over white, as a viewer would
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE), rgba)
    return image.convert(mode)


def fit_image(image: Image.Image, size: ImageSize, fit: Fit = "stretch", crop_fraction: float = 1.0) -> Image.Image:
    """``image`` brought to ``size`` pixels by ``fit`` (see the module docstring).

    ``crop_fraction`` (0..1], used by ``"crop"`` only: the side of the crop as a fraction of the
    resized shorter side. ``"square"`` needs a square ``size``.
    """
    h, w = image_hw(size)
    if fit == "stretch":
        return image if image.size == (w, h) else image.resize((w, h), Image.Resampling.BILINEAR)
    if fit == "crop":
        if not 0.0 < crop_fraction <= 1.0:
            raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction}")
        # resize so that the crop of size (h, w) is crop_fraction of the shorter side
        factor = max(h, w) / crop_fraction / min(image.size)
        resized = (max(w, round(image.width * factor)), max(h, round(image.height * factor)))
        image = image.resize(resized, Image.Resampling.BILINEAR)
        left, top = (image.width - w) // 2, (image.height - h) // 2
        return image.crop((left, top, left + w, top + h))
    if fit == "square":
        if h != w:
            raise ValueError(f"fit 'square' needs a square size, got {size}")
        side = min(image.size)
        box = ((image.width - side) / 2, (image.height - side) / 2, (image.width + side) / 2, (image.height + side) / 2)
        return image.resize((w, h), Image.Resampling.BILINEAR, box=box)
    raise ValueError(f"fit must be 'stretch', 'crop' or 'square', got {fit!r}")


def prepare_image(
    image: Image.Image, size: ImageSize, channels: int, fit: Fit = "stretch", crop_fraction: float = 1.0
) -> np.ndarray:
    """A decoded PIL image as uint8 ``(H, W)`` (``channels`` 1) or ``(H, W, 3)``: channels first, then the fit."""
    out = fit_image(to_channels(image, channels), size, fit, crop_fraction)
    return np.array(out, dtype=np.uint8)


def check_image_size(width: int, height: int, source: str | Path, size: ImageSize) -> None:
    """Refuse an image of ``width`` x ``height`` px whose shorter side is below :data:`MIN_IMAGE_SIDE`.

    ``source`` names the file in the message; ``size`` is the output size it was to be brought to.
    Raises :class:`ImageTooSmallError`.
    """
    if min(width, height) < MIN_IMAGE_SIDE:
        h, w = image_hw(size)
        raise ImageTooSmallError(
            f"{source}: image is {width}x{height} px (width x height), too small to be a real input; "
            f"expected a shorter side of at least {MIN_IMAGE_SIDE} px (it would be resized to {w}x{h} px)"
        )


def decode_image(
    path: str | Path,
    size: ImageSize,
    channels: int,
    fit: Fit = "stretch",
    crop_fraction: float = 1.0,
    draft: bool = False,
) -> np.ndarray:
    """One image file as uint8 ``(H, W)`` (``channels`` 1) or ``(H, W, 3)``, upright (EXIF applied).

    ``draft``: let a JPEG decoder downscale by 1/2..1/8 while both sides stay >= the output size
    (much faster on large photos; the pixels differ slightly from a full decode). PIL's errors
    (``OSError``, ``SyntaxError``, ...) propagate; the callers name the file in their own message.
    An image whose shorter side is below :data:`MIN_IMAGE_SIDE` px raises :class:`ImageTooSmallError`.
    """
    with Image.open(path) as image:
        # the stored size, before a draft shrinks it (the EXIF rotation below keeps the shorter side)
        check_image_size(image.width, image.height, path, size)
        if draft:
            image.draft(channel_mode(channels), image_hw(size)[::-1])
        upright = ImageOps.exif_transpose(image)
        return prepare_image(upright, size, channels, fit, crop_fraction)
