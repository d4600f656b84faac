from __future__ import annotations

import torch

from noisy_student.config import NoiseParams
from noisy_student.noise import BatchAugment, random_crop


def test_random_crop_without_padding_is_identity() -> None:
    x = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    assert torch.equal(random_crop(x, 0), x)


def test_random_crop_shifts_content_within_padding() -> None:
    x = torch.zeros(64, 1, 9, 9, dtype=torch.uint8)
    x[:, :, 4, 4] = 255
    out = random_crop(x, 2)
    ys, xs = (out[:, 0] == 255).nonzero()[:, 1], (out[:, 0] == 255).nonzero()[:, 2]
    assert ys.min() >= 2 and ys.max() <= 6 and xs.min() >= 2 and xs.max() <= 6
    assert len(set(zip(ys.tolist(), xs.tolist(), strict=True))) > 1  # per-image offsets differ


def test_batch_augment_keeps_shape_dtype_and_is_seeded() -> None:
    x = torch.randint(0, 256, (16, 1, 28, 28), dtype=torch.uint8)
    aug = BatchAugment(NoiseParams(randaugment_magnitude=15))
    torch.manual_seed(0)
    a = aug(x)
    torch.manual_seed(0)
    b = aug(x)
    assert a.shape == x.shape and a.dtype == torch.uint8
    assert torch.equal(a, b)
    assert not torch.equal(a, x)


def test_disabled_augment_is_identity() -> None:
    x = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    assert torch.equal(BatchAugment(NoiseParams(), augment=False)(x), x)
