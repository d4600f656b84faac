"""Input noise: random crop + flip + RandAugment, applied per image on a batch.

Model noise (dropout, stochastic depth) lives in the network (see
``models.create_classifier``); this module only transforms pixels.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from noisy_student.config import NoiseParams


class BatchAugment:
    """Augment a uint8 batch ``(B, C, H, W)`` with an independent draw per image.

    Crop and flip are vectorised; RandAugment (torchvision v2, magnitude on
    the paper's 0..30 scale) is drawn per image because the paper samples ops
    per image. Uses torch's global RNG, so ``torch.manual_seed`` makes it
    reproducible.
    """

    def __init__(self, noise: NoiseParams, augment: bool = True) -> None:
        self.enabled = augment
        self.padding = noise.crop_padding
        self.hflip = noise.hflip
        self.batched = noise.randaugment_impl == "batched"
        self.randaugment = (
            v2.RandAugment(num_ops=noise.randaugment_num_ops, magnitude=noise.randaugment_magnitude)
            if noise.randaugment_num_ops > 0
            else None
        )

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if not self.enabled or len(images) == 0:
            return images
        out = random_crop(images, self.padding) if self.padding else images
        if self.hflip:
            flip = torch.rand(len(out), device=out.device) < 0.5
            out = torch.where(flip.view(-1, 1, 1, 1), out.flip(-1), out)
        if self.randaugment is not None and self.batched:
            ops, negative = draw_randaugment(self.randaugment, len(out), out.device)
            out = batched_randaugment(self.randaugment, out, ops, negative)
        elif self.randaugment is not None:
            out = torch.stack([self.randaugment(img) for img in out])
        return out


def draw_randaugment(ra: v2.RandAugment, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image RandAugment draws: op indices ``(num_ops, B)`` uniform over the op space, and signs
    ``(num_ops, B)`` (True = negated magnitude, probability 1/2), as torchvision draws them per call."""
    ops = torch.randint(len(ra._AUGMENTATION_SPACE), (ra.num_ops, batch), device=device)
    negative = torch.rand((ra.num_ops, batch), device=device) <= 0.5
    return ops, negative


def batched_randaugment(
    ra: v2.RandAugment, images: torch.Tensor, ops: torch.Tensor, negative: torch.Tensor
) -> torch.Tensor:
    """Apply per-image RandAugment draws to a uint8 batch ``(B, C, H, W)`` with one call per (op, sign) group.

    Every image gets exactly the ops it drew, in order, with torchvision's own op
    definitions and magnitudes; only the grouping differs from calling
    ``ra(img)`` image by image, so the result equals that loop for the same
    draws (tested) at a fraction of the Python overhead.
    """
    names = list(ra._AUGMENTATION_SPACE)
    height, width = images.shape[-2:]
    out = images.clone()
    for layer in range(ops.shape[0]):
        for op_index in torch.unique(ops[layer]).tolist():
            name = names[op_index]
            magnitudes_fn, signed = ra._AUGMENTATION_SPACE[name]
            magnitudes = magnitudes_fn(ra.num_magnitude_bins, height, width)
            base = float(magnitudes[ra.magnitude]) if magnitudes is not None else 0.0
            members = ops[layer] == op_index
            groups = (
                ((members & negative[layer], -base), (members & ~negative[layer], base))
                if signed
                else ((members, base),)
            )
            for mask, magnitude in groups:
                idx = mask.nonzero().squeeze(1)
                if len(idx):
                    out[idx] = ra._apply_image_or_video_transform(
                        out[idx], name, magnitude, interpolation=ra.interpolation, fill=ra._fill
                    )
    return out


def random_crop(images: torch.Tensor, padding: int) -> torch.Tensor:
    """Zero-pad by ``padding`` and crop back to the original size at a random offset per image."""
    b, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (b,), device=images.device)
    dx = torch.randint(0, 2 * padding + 1, (b,), device=images.device)
    rows = (dy.view(b, 1) + torch.arange(h, device=images.device)).view(b, 1, h, 1)
    cols = (dx.view(b, 1) + torch.arange(w, device=images.device)).view(b, 1, 1, w)
    batch = torch.arange(b, device=images.device).view(b, 1, 1, 1)
    chans = torch.arange(images.shape[1], device=images.device).view(1, -1, 1, 1)
    return padded[batch, chans, rows, cols]
