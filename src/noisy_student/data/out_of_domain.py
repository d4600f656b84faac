"""Real out-of-domain images to mix into the unlabeled pool.

Both sources ship inside scikit-learn (no download): the UCI handwritten
``digits`` (1,797 scans, 8x8, 17 grey levels) and the two ``photos`` of
``load_sample_images`` (china.jpg, flower.jpg), from which random square
crops are taken. Neither contains clothing, so a good teacher should be
unsure on them and the confidence filter has real work to do.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def _resize(batch: np.ndarray, size: int) -> np.ndarray:
    """Resize ``(N, h, w)`` float images in 0..255 to ``(N, size, size)`` uint8 (antialiased)."""
    t = torch.from_numpy(batch.astype(np.float32))[:, None]
    out = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out[:, 0].round().clamp(0, 255).to(torch.uint8).numpy()


def digits_images(count: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Up to 1,797 handwritten digits, white on black like Fashion-MNIST, centred with a margin."""
    from sklearn.datasets import load_digits

    images = load_digits().images  # (1797, 8, 8), 0..16
    pick = rng.choice(len(images), size=min(count, len(images)), replace=False)
    inner = max(1, round(size * 20 / 28))  # MNIST-style: glyph in the central 20/28
    glyphs = _resize(images[pick] * (255.0 / 16.0), inner)
    out = np.zeros((len(pick), size, size), np.uint8)
    off = (size - inner) // 2
    out[:, off : off + inner, off : off + inner] = glyphs
    return out


def photo_crops(count: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Random square grey crops (side 24-160 px) of scikit-learn's two sample photos."""
    from sklearn.datasets import load_sample_images

    photos = [
        img.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32) for img in load_sample_images().images
    ]
    out = np.empty((count, size, size), np.uint8)
    for i in range(count):
        photo = photos[int(rng.integers(len(photos)))]
        side = int(rng.integers(24, min(161, *photo.shape)))
        y = int(rng.integers(0, photo.shape[0] - side + 1))
        x = int(rng.integers(0, photo.shape[1] - side + 1))
        out[i] = _resize(photo[None, y : y + side, x : x + side], size)[0]
    return out


def out_of_domain_images(count: int, sources: Sequence[str], size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return ``count`` images ``(N, size, size)`` uint8 and their source names.

    Count is shared equally between sources; ``digits`` is capped at its 1,797
    unique images and the remainder goes to ``photos`` when it is listed.
    """
    rng = np.random.default_rng(seed)
    if count == 0 or not sources:
        return np.zeros((0, size, size), np.uint8), np.zeros((0,), "<U16")
    images: list[np.ndarray] = []
    names: list[str] = []
    remaining = count
    ordered = sorted(sources, key=lambda s: s != "digits")  # digits first: it has a cap
    for i, source in enumerate(ordered):
        share = remaining if i == len(ordered) - 1 else remaining // (len(ordered) - i)
        if source == "digits":
            batch = digits_images(share, size, rng)
        elif source == "photos":
            batch = photo_crops(share, size, rng)
        else:
            raise ValueError(f"unknown out-of-domain source '{source}' (expected 'digits' or 'photos')")
        images.append(batch)
        names += [source] * len(batch)
        remaining -= len(batch)
    return np.concatenate(images), np.array(names)
