from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from noisy_student.evaluation import topk_accuracy
from noisy_student.robustness.loaders import (
    LayoutError,
    VideoDecodingError,
    iter_imagenet_c,
    iter_imagenet_p,
    load_image_folder,
    load_imagenet_a,
)
from noisy_student.robustness.metrics import masked_topk

MODEL_WNIDS = ["n01440764", "n01443537", "n01484850", "n01491361", "n01494475"]


def write_image(path: Path, value: int, size: tuple[int, int] = (20, 14), mode: str = "RGB") -> None:
    """A flat image (width, height) = ``size`` with a brighter left half; JPEG or PNG by suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    array = np.full((h, w, 3), value, dtype=np.uint8)
    array[:, : w // 2] = min(255, value + 60)
    array[..., 2] //= 2  # some colour, so that grayscale conversion is visible
    options = {"quality": 95} if path.suffix.lower() in {".jpg", ".jpeg"} else {}
    Image.fromarray(array).convert(mode).save(path, **options)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    root = tmp_path / "val"
    # class n01443537: one JPEG (grayscale file) and one PNG of another size
    write_image(root / "n01443537" / "b.JPEG", 100, mode="L")
    write_image(root / "n01443537" / "a10.png", 40, size=(31, 17))
    write_image(root / "n01494475" / "x.jpg", 180)
    (root / "n01494475" / "notes.txt").write_text("not an image")
    return root


def test_image_folder_sorted_wnids_and_given_list(image_folder: Path) -> None:
    images, labels, classes = load_image_folder(image_folder, size=8, channels=3)
    assert images.shape == (3, 3, 8, 8) and images.dtype == torch.uint8
    assert classes == ["n01443537", "n01494475"]
    assert labels.tolist() == [0, 0, 1]
    # files in natural name order: a10.png (value 40) before b.JPEG (value 100)
    assert images[0].float().mean() < images[1].float().mean()
    images, labels, classes = load_image_folder(image_folder, size=(6, 10), channels=1, wnids=MODEL_WNIDS)
    assert images.shape == (3, 1, 6, 10)
    assert labels.tolist() == [1, 1, 4]
    assert classes == MODEL_WNIDS


def test_image_folder_center_crop_and_limit(image_folder: Path) -> None:
    images, labels, _ = load_image_folder(image_folder, size=8, channels=3, crop_fraction=0.5, max_per_class=1)
    assert images.shape == (2, 3, 8, 8) and labels.tolist() == [0, 1]
    # the centre crop keeps the middle: left (bright) and right (dark) halves both show up
    row = images[1, 0, 4].float()
    assert row[0] > row[-1]


def test_image_folder_layout_errors(tmp_path: Path, image_folder: Path) -> None:
    with pytest.raises(LayoutError, match="not found"):
        load_image_folder(tmp_path / "missing", size=8)
    (tmp_path / "flat").mkdir()
    write_image(tmp_path / "flat" / "img.png", 10)
    with pytest.raises(LayoutError, match=r"no class folders.*root/<wnid>/<image>"):
        load_image_folder(tmp_path / "flat", size=8)
    with pytest.raises(LayoutError, match="n01494475"):
        load_image_folder(image_folder, size=8, wnids=MODEL_WNIDS[:3])
    with pytest.raises(ValueError, match="channels"):
        load_image_folder(image_folder, size=8, channels=2)


def test_imagenet_a_subset_indices(tmp_path: Path) -> None:
    root = tmp_path / "imagenet-a"
    write_image(root / "n01494475" / "0.000116_x.jpg", 200)
    write_image(root / "n01443537" / "0.000231_y.jpg", 50)
    write_image(root / "n01443537" / "0.000999_z.jpg", 60)
    (root / "README.txt").write_text("n01443537 goldfish\nn01494475 hammerhead\n")
    images, labels, class_indices = load_imagenet_a(root, MODEL_WNIDS, size=10, channels=3)
    assert images.shape == (3, 3, 10, 10)
    assert class_indices == [1, 4]  # subset in sorted wnid order, as model logit indices
    assert labels.tolist() == [0, 0, 1]  # positions in the subset
    logits = np.zeros((3, len(MODEL_WNIDS)))
    logits[:, 0] = 10.0  # a class outside the subset: masked away
    logits[[0, 1], 1] = 1.0
    logits[2, 4] = 1.0
    assert topk_accuracy(masked_topk(logits, class_indices), labels.numpy(), ks=(1,))["top1"] == 1.0
    write_image(root / "n09999999" / "q.jpg", 10)
    with pytest.raises(LayoutError, match="n09999999"):
        load_imagenet_a(root, MODEL_WNIDS, size=10)


def test_imagenet_c_iteration(tmp_path: Path) -> None:
    root = tmp_path / "imagenet-c"
    for corruption in ("fog", "gaussian_noise"):
        for severity in (1, 2):
            for wnid in MODEL_WNIDS[:2]:
                write_image(root / corruption / str(severity) / wnid / "ILSVRC2012_val_0001.JPEG", 30 * severity)
    (root / "README").write_text("extra files are ignored")
    seen = []
    for corruption, severity, images, labels in iter_imagenet_c(root, size=12, channels=1, severities=(1, 2)):
        assert images.shape == (2, 1, 12, 12) and images.dtype == torch.uint8
        assert labels.tolist() == [0, 1]
        seen.append((corruption, severity))
    # benchmark order of CORRUPTIONS, not alphabetical
    assert seen == [("gaussian_noise", 1), ("gaussian_noise", 2), ("fog", 1), ("fog", 2)]
    sets = iter_imagenet_c(root, size=12, corruptions=["fog"], wnids=MODEL_WNIDS)
    _, _, _, labels = next(sets)
    assert labels.tolist() == [0, 1]
    with pytest.raises(LayoutError, match=r"fog/3.*<severity 1..5>"):
        list(sets)
    with pytest.raises(LayoutError, match="none of the ImageNet-C corruption folders"):
        next(iter_imagenet_c(root / "fog", size=12))


def write_frames(folder: Path, count: int, start: int) -> None:
    for t in range(count):
        write_image(folder / f"{t + 1}.png", start + 10 * t, size=(16, 16))


def test_imagenet_p_frame_folders(tmp_path: Path) -> None:
    root = tmp_path / "imagenet-p"
    write_frames(root / "rotate" / MODEL_WNIDS[0] / "ILSVRC2012_val_00000001", 11, 0)
    write_frames(root / "rotate" / MODEL_WNIDS[3] / "ILSVRC2012_val_00000002", 11, 50)
    write_frames(root / "gaussian_noise" / MODEL_WNIDS[3] / "v", 11, 20)
    out = list(iter_imagenet_p(root, size=8, channels=3, wnids=MODEL_WNIDS))
    assert [name for name, _, _ in out] == ["gaussian_noise", "rotate"]
    _, videos, labels = out[1]
    assert videos.shape == (2, 11, 3, 8, 8) and videos.dtype == torch.uint8
    assert labels.tolist() == [0, 3]
    # frames in natural order: 1.png, 2.png, ..., 10.png, 11.png get brighter one by one
    brightness = videos[0].float().mean((1, 2, 3))
    assert (brightness[1:] > brightness[:-1]).all()
    write_frames(root / "rotate" / MODEL_WNIDS[4] / "short", 5, 0)
    with pytest.raises(ValueError, match="equal length"):
        list(iter_imagenet_p(root, size=8, perturbations=["rotate"]))


def test_imagenet_p_mp4_without_pyav_says_how_to_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # PyAV is in the dev extra; a None entry in sys.modules makes `import av` fail as if it were absent
    monkeypatch.setitem(sys.modules, "av", None)
    video = tmp_path / "imagenet-p" / "scale" / MODEL_WNIDS[0] / "ILSVRC2012_val_00000003.mp4"
    video.parent.mkdir(parents=True)
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42")
    with pytest.raises(VideoDecodingError) as err:
        list(iter_imagenet_p(tmp_path / "imagenet-p", size=8))
    message = str(err.value)
    assert str(video) in message and "pip install av" in message and "ffmpeg" in message
    # frames extracted next to the video replace it
    write_frames(video.with_suffix(""), 3, 0)
    (_, videos, _) = next(iter_imagenet_p(tmp_path / "imagenet-p", size=8))
    assert videos.shape == (1, 3, 3, 8, 8)
