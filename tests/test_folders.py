"""ImageNet-style folders: scanning, decoding (resize + centre crop, modes) and layout errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from noisy_student.config import ParamsError, parse_params
from noisy_student.data.folders import (
    FolderDataError,
    decode_image,
    decode_stream,
    image_files,
    scan_class_folders,
    scan_unlabeled_folder,
    subsample,
)

CLASSES = ("bird", "cat", "dog")  # sorted: the class indices 0, 1, 2
# (width, height, PIL mode, extension) of the 4 images of every class: sizes, modes and formats differ
IMAGES = ((40, 30, "RGB", ".jpg"), (20, 50, "L", ".png"), (64, 64, "RGBA", ".png"), (33, 17, "RGB", ".png"))


def _write(path: Path, width: int, height: int, mode: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def make_tree(root: Path, test_classes: tuple[str, ...] = ("cat", "dog")) -> dict[str, Path]:
    """Write labeled/ (3 classes x 4 images), test/ (``test_classes`` x 2) and unlabeled/ (7 nested images).

    Class folders are created in reverse order so the sorted order is not the creation order;
    every folder also holds a non-image file and a hidden file, which must be skipped.
    """
    dirs = {name: root / name for name in ("labeled", "unlabeled", "test")}
    seed = 0
    for cls in reversed(CLASSES):
        for i, (w, h, mode, ext) in enumerate(IMAGES):
            seed += 1
            _write(dirs["labeled"] / cls / f"img{i}{ext}", w, h, mode, seed)
        (dirs["labeled"] / cls / "notes.txt").write_text("not an image")
        (dirs["labeled"] / cls / ".DS_Store").write_bytes(b"\x00\x01")
    for cls in test_classes:
        for i, (w, h, mode, ext) in enumerate(IMAGES[:2]):
            seed += 1
            _write(dirs["test"] / cls / f"t{i}{ext}", w, h, mode, seed)
    nested = ("a.jpg", "sub/b.png", "sub/deeper/c.JPG", "sub/deeper/d.png", "other/e.png", "other/f.jpeg", "g.bmp")
    for i, rel in enumerate(nested):
        seed += 1
        _write(dirs["unlabeled"] / rel, 30 + 7 * i, 60 - 5 * i, ("RGB", "L")[i % 2], seed)
    (dirs["unlabeled"] / "sub" / "README.md").write_text("ignored")
    (dirs["unlabeled"] / ".hidden").mkdir()
    _write(dirs["unlabeled"] / ".hidden" / "skip.png", 8, 8, "RGB", 99)
    return dirs


def test_scan_class_folders_sorted_classes_and_labels(tmp_path: Path) -> None:
    dirs = make_tree(tmp_path)
    lab = scan_class_folders(dirs["labeled"], "data.labeled_dir")
    assert lab.classes == CLASSES
    assert lab.labels.dtype == np.int64 and lab.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert [p.relative_to(dirs["labeled"]).as_posix() for p in lab.files[:4]] == [
        "bird/img0.jpg",
        "bird/img1.png",
        "bird/img2.png",
        "bird/img3.png",
    ]
    unl = scan_unlabeled_folder(dirs["unlabeled"], "data.unlabeled_dir")
    rel = [p.relative_to(dirs["unlabeled"]).as_posix() for p in unl]
    # recursive, sorted by relative path, upper-case extension accepted, hidden + non-image files skipped
    assert rel == ["a.jpg", "g.bmp", "other/e.png", "other/f.jpeg", "sub/b.png", "sub/deeper/c.JPG", "sub/deeper/d.png"]


@pytest.mark.parametrize("channels", [1, 3])
def test_decode_shapes_dtypes_and_modes(tmp_path: Path, channels: int) -> None:
    dirs = make_tree(tmp_path)
    files = image_files(dirs["labeled"])
    x = np.stack(list(decode_stream(files, 24, channels, workers=1)))
    assert x.dtype == np.uint8
    assert x.shape == ((12, 24, 24) if channels == 1 else (12, 24, 24, 3))
    assert x.std() > 20  # real pixels, not blank


def test_resize_shorter_side_then_centre_crop(tmp_path: Path) -> None:
    # 96 x 32: red | green | blue thirds. The centre square is the green third.
    arr = np.zeros((32, 96, 3), np.uint8)
    arr[:, :32, 0] = 255
    arr[:, 32:64, 1] = 255
    arr[:, 64:, 2] = 255
    Image.fromarray(arr).save(tmp_path / "wide.png")
    out = decode_image(tmp_path / "wide.png", 16, 3)
    assert out.shape == (16, 16, 3)
    assert (out[:, 1:-1] == [0, 255, 0]).all()  # inner columns: only green (edges may blend)
    # tall image, greyscale output: top / middle / bottom thirds black / white / black
    tall = np.zeros((90, 30), np.uint8)
    tall[30:60] = 255
    Image.fromarray(tall).save(tmp_path / "tall.png")
    grey = decode_image(tmp_path / "tall.png", 10, 1)
    assert grey.shape == (10, 10) and (grey[1:-1] == 255).all()


def test_alpha_is_composited_over_white(tmp_path: Path) -> None:
    rgba = np.zeros((8, 8, 4), np.uint8)  # fully transparent black
    Image.fromarray(rgba, "RGBA").save(tmp_path / "clear.png")
    assert (decode_image(tmp_path / "clear.png", 8, 3) == 255).all()


def test_pool_decode_matches_serial_decode(tmp_path: Path) -> None:
    for i in range(300):  # above the in-process threshold (POOL_MIN_IMAGES), so the pool is used
        _write(tmp_path / f"{i:03d}.png", 12 + i % 5, 10 + i % 7, "RGB", i)
    files = image_files(tmp_path)
    serial = np.stack(list(decode_stream(files, 8, 3, workers=1)))
    assert serial.shape == (300, 8, 8, 3)
    assert all(np.array_equal(serial[i], decode_image(files[i], 8, 3)) for i in (0, 299))  # as one file decodes
    # several rounds of 64 in flight: results still come back in file order
    pooled = np.stack(list(decode_stream(files, 8, 3, workers=2, chunk=64)))
    assert np.array_equal(serial, pooled)
    (tmp_path / "999.png").write_bytes(b"truncated")
    with pytest.raises(FolderDataError, match=r"999\.png: cannot read this image"):
        list(decode_stream(image_files(tmp_path), 8, 3, workers=2, chunk=64))


def test_subsample_is_seeded_sorted_and_capped() -> None:
    a = subsample(100, 10, seed=0)
    assert len(a) == 10 and np.array_equal(a, np.sort(a)) and np.array_equal(a, subsample(100, 10, seed=0))
    assert not np.array_equal(a, subsample(100, 10, seed=1))
    assert subsample(5, 10, seed=0).tolist() == [0, 1, 2, 3, 4]
    assert subsample(5, None, seed=0).tolist() == [0, 1, 2, 3, 4]


def test_layout_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(FolderDataError, match=r"data\.labeled_dir: .*nowhere does not exist"):
        scan_class_folders(tmp_path / "nowhere", "data.labeled_dir")
    dirs = make_tree(tmp_path)
    (dirs["labeled"] / "empty").mkdir()
    (dirs["labeled"] / "empty" / "notes.txt").write_text("no image here")
    with pytest.raises(FolderDataError, match=r"class folder .*labeled/empty holds no image"):
        scan_class_folders(dirs["labeled"], "data.labeled_dir")
    (dirs["labeled"] / "empty" / "notes.txt").unlink()
    (dirs["labeled"] / "empty").rmdir()
    _write(dirs["labeled"] / "stray.png", 8, 8, "RGB", 0)
    with pytest.raises(FolderDataError, match=r"stray\.png lies directly in .*expected every image inside a class"):
        scan_class_folders(dirs["labeled"], "data.labeled_dir")
    with pytest.raises(FolderDataError, match=r"has 1 class folder\(s\); expected at least 2"):
        scan_class_folders(_one_class(tmp_path), "data.labeled_dir")
    (tmp_path / "blank").mkdir()
    (tmp_path / "blank" / "a.txt").write_text("x")
    with pytest.raises(FolderDataError, match=r"data\.unlabeled_dir: .*blank holds no image file"):
        scan_unlabeled_folder(tmp_path / "blank", "data.unlabeled_dir")


def _one_class(tmp_path: Path) -> Path:
    root = tmp_path / "one"
    _write(root / "only" / "a.png", 8, 8, "RGB", 0)
    return root


def test_params_require_folders_for_source_folders() -> None:
    with pytest.raises(ParamsError) as err:
        parse_params({"data": {"source": "folders", "labeled_dir": "x", "unlabeled_dir": "y"}})
    assert "data.test_dir" in str(err.value) and "data.labeled_dir" not in str(err.value)
    with pytest.raises(ParamsError, match=r"data\.labeled_dir.*data\.source: folders"):
        parse_params({"data": {"labeled_dir": "x"}})  # set, but the source is still fashion_mnist
    folders = {"source": "folders", "labeled_dir": "x", "unlabeled_dir": "y", "test_dir": "z"}
    with pytest.raises(ParamsError, match=r"data\.channels"):
        parse_params({"data": {**folders, "channels": 2}})
    ok = parse_params({"data": folders})
    assert ok.data.image_size == 32 and ok.data.channels == 3 and ok.data.max_unlabeled is None
