from __future__ import annotations

import pytest
import torch
from torchvision.transforms import v2

from noisy_student.config import NoiseParams
from noisy_student.noise import BatchAugment, batched_randaugment, draw_randaugment, random_crop


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


@pytest.mark.parametrize("channels", [1, 3])
def test_batched_randaugment_equals_the_per_image_loop_for_the_same_draws(channels: int) -> None:
    g = torch.Generator().manual_seed(channels)
    images = torch.randint(0, 256, (64, channels, 28, 28), dtype=torch.uint8, generator=g)
    ra = v2.RandAugment(num_ops=2, magnitude=9)
    torch.manual_seed(3)
    ops, negative = draw_randaugment(ra, len(images), images.device)
    assert set(ops.unique().tolist()) == set(range(14)), "64 x 2 draws should cover every op"
    got = batched_randaugment(ra, images, ops, negative)
    names = list(ra._AUGMENTATION_SPACE)
    for i, img in enumerate(images):
        expected = img
        for layer in range(2):
            name = names[int(ops[layer, i])]
            magnitudes_fn, signed = ra._AUGMENTATION_SPACE[name]
            mags = magnitudes_fn(ra.num_magnitude_bins, 28, 28)
            magnitude = float(mags[ra.magnitude]) if mags is not None else 0.0
            if signed and bool(negative[layer, i]):
                magnitude = -magnitude
            expected = ra._apply_image_or_video_transform(
                expected, name, magnitude, interpolation=ra.interpolation, fill=ra._fill
            )
        torch.testing.assert_close(got[i], expected, rtol=0, atol=0, msg=f"image {i}")


def test_batched_impl_is_selected_by_params_and_keeps_shape_and_dtype() -> None:
    torch.manual_seed(0)
    images = torch.randint(0, 256, (16, 1, 28, 28), dtype=torch.uint8)
    out = BatchAugment(NoiseParams(randaugment_impl="batched"))(images)
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert not torch.equal(out, images)
