"""The one image decoder (``noisy_student.data.images``) on real files written by PIL.

Special files (EXIF rotation, transparency, 16 bits, CMYK) must look the same to the prepared
folders (``data.folders.decode_image``) and to the release loaders (``robustness.loaders.read_image``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from noisy_student.data import folders
from noisy_student.data.images import (
    MIN_IMAGE_SIDE,
    ImageTooSmallError,
    decode_image,
    fit_image,
    image_hw,
    prepare_image,
)
from noisy_student.robustness import loaders

SIDE = 12  # the square special files are decoded at their own size: no resampling blurs the checks


def _both_readers(path: Path, channels: int) -> np.ndarray:
    """The folder decoder's ``(H, W[, 3])`` output, checked equal to the release loader's ``(C, H, W)``."""
    from_folders = folders.decode_image(path, SIDE, channels)
    from_loaders = loaders.read_image(path, SIDE, channels)
    as_hwc = from_loaders[0] if channels == 1 else from_loaders.transpose(1, 2, 0)
    assert np.array_equal(from_folders, as_hwc), path.name
    return from_folders


def test_exif_rotated_jpeg_is_decoded_upright(tmp_path: Path) -> None:
    # stored 2 wide x 1 tall: left half white, right half black; orientation 6 shows it rotated
    # 90 degrees clockwise, so a viewer sees it 1 wide x 2 tall, white on top
    stored = np.zeros((SIDE, 2 * SIDE), np.uint8)
    stored[:, :SIDE] = 255
    exif = Image.Image().getexif()
    exif[0x0112] = 6  # Orientation
    path = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(path, exif=exif.tobytes(), quality=95)
    upright = decode_image(path, (2 * SIDE, SIDE), 1)  # (H, W) as displayed: no resize
    assert upright.shape == (2 * SIDE, SIDE)
    assert upright[: SIDE - 2].mean() > 240 and upright[SIDE + 2 :].mean() < 15
    # both readers apply the orientation: the folders' centre square straddles the white / black
    # edge, the loaders' stretched image keeps white on top
    square = folders.decode_image(path, SIDE, 3)
    assert square[: SIDE // 2 - 2].mean() > 240 and square[SIDE // 2 + 2 :].mean() < 15
    stretched = loaders.read_image(path, SIDE, 1)[0]
    assert stretched[: SIDE // 2 - 2].mean() > 240 and stretched[SIDE // 2 + 2 :].mean() < 15


def test_palette_png_with_transparency_is_composited_over_white(tmp_path: Path) -> None:
    indices = np.zeros((SIDE, SIDE), np.uint8)
    indices[:, SIDE // 2 :] = 1
    image = Image.fromarray(indices, "P")
    image.putpalette([200, 0, 0, 0, 0, 255] + [0, 0, 0] * 254)  # 0: red (transparent), 1: blue
    path = tmp_path / "palette.png"
    image.save(path, transparency=0)
    rgb = _both_readers(path, 3)
    assert (rgb[:, : SIDE // 2] == 255).all()  # the transparent red shows the white background
    assert (rgb[:, SIDE // 2 :] == (0, 0, 255)).all()
    grey = _both_readers(path, 1)
    assert (grey[:, : SIDE // 2] == 255).all() and (grey[:, SIDE // 2 :] == 29).all()  # luma of blue: 0.114 * 255


def test_rgba_png_alpha_is_composited_over_white(tmp_path: Path) -> None:
    rgba = np.zeros((SIDE, SIDE, 4), np.uint8)
    rgba[..., 0] = 200  # red everywhere, but only opaque on the right
    rgba[:, SIDE // 2 :, 3] = 255
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, "RGBA").save(path)
    rgb = _both_readers(path, 3)
    assert (rgb[:, : SIDE // 2] == 255).all()
    assert (rgb[:, SIDE // 2 :] == (200, 0, 0)).all()


def test_16_bit_greyscale_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([0, 257, 32768, 65535], np.uint16)  # -> 0, 1, 127.5 (rounds to 128), 255
    path = tmp_path / "deep.png"
    Image.fromarray(np.tile(values.repeat(SIDE // 4), (SIDE, 1))).save(path)
    with Image.open(path) as image:
        assert image.mode.startswith("I")  # PIL really reads it as a 16-bit image
    grey = _both_readers(path, 1)
    assert grey[0, :: SIDE // 4].tolist() == [0, 1, 128, 255]
    rgb = _both_readers(path, 3)
    assert (rgb[..., 0] == grey).all() and (rgb[..., 1] == grey).all() and (rgb[..., 2] == grey).all()


def test_cmyk_jpeg_is_converted_by_pil(tmp_path: Path) -> None:
    cmyk = np.zeros((SIDE, SIDE, 4), np.uint8)
    cmyk[:, SIDE // 2 :, 3] = 255  # no ink on the left (white), full black on the right
    path = tmp_path / "cmyk.jpg"
    Image.fromarray(cmyk, "CMYK").save(path, quality=95)
    rgb = _both_readers(path, 3)
    with Image.open(path) as image:
        assert image.mode == "CMYK"
        assert np.array_equal(rgb, np.asarray(image.convert("RGB")))
    assert rgb[:, : SIDE // 2 - 2].min() > 230 and rgb[:, SIDE // 2 + 2 :].max() < 25
    assert _both_readers(path, 1).shape == (SIDE, SIDE)


def test_ordinary_rgb_and_greyscale_files_decode_unchanged(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "rgb.png")
    assert np.array_equal(decode_image(tmp_path / "rgb.png", SIDE, 3), pixels)
    luma = np.asarray(Image.fromarray(pixels).convert("L"))
    assert np.array_equal(decode_image(tmp_path / "rgb.png", SIDE, 1), luma)
    Image.fromarray(luma).save(tmp_path / "grey.png")
    assert np.array_equal(_both_readers(tmp_path / "grey.png", 1), luma)


def test_fits_keep_the_centre_or_the_whole_image() -> None:
    # 30 wide x 10 tall: a black left third, grey centre third, white right third
    wide = np.repeat(np.array([0, 128, 255], np.uint8), 10)[None].repeat(10, axis=0)
    image = Image.fromarray(wide)
    square = prepare_image(image, 10, 1, fit="square")
    cropped = prepare_image(image, 10, 1, fit="crop", crop_fraction=1.0)
    assert np.array_equal(square, wide[:, 10:20]) and np.array_equal(cropped, wide[:, 10:20])
    stretched = prepare_image(image, 10, 1, fit="stretch")  # the whole width squeezed in
    assert stretched[:, 0].max() < 40 and stretched[:, -1].min() > 215
    # crop_fraction 0.5: the shorter side is resized to 2 x 6 = 12, the centre 6 x 6 of the grey third kept
    assert (prepare_image(image, 6, 1, fit="crop", crop_fraction=0.5) == 128).all()
    assert prepare_image(image, (4, 8), 3, fit="stretch").shape == (4, 8, 3)


def test_large_jpeg_draft_keeps_the_output_size(tmp_path: Path) -> None:
    pixels = np.full((400, 300, 3), 90, np.uint8)
    Image.fromarray(pixels).save(tmp_path / "big.jpg")
    for draft in (False, True):
        out = decode_image(tmp_path / "big.jpg", 16, 3, fit="square", draft=draft)
        assert out.shape == (16, 16, 3) and np.abs(out.astype(int) - 90).max() <= 3


def test_invalid_arguments_are_refused() -> None:
    image = Image.new("RGB", (8, 6))
    with pytest.raises(ValueError, match="channels"):
        prepare_image(image, 4, 2)
    with pytest.raises(ValueError, match="positive"):
        image_hw((0, 4))
    with pytest.raises(ValueError, match="square size"):
        fit_image(image, (4, 6), "square")
    with pytest.raises(ValueError, match="crop_fraction"):
        fit_image(image, 4, "crop", crop_fraction=1.5)
    with pytest.raises(ValueError, match="fit must be"):
        fit_image(image, 4, "zoom")  # type: ignore[arg-type]


@pytest.mark.parametrize(("width", "height"), [(1, 1), (2, 2), (7, 40), (40, 7)])
def test_images_too_small_to_be_inputs_are_refused_naming_file_and_size(
    tmp_path: Path, width: int, height: int
) -> None:
    path = tmp_path / f"tiny_{width}x{height}.png"
    Image.fromarray(np.full((height, width), 200, np.uint8)).save(path)
    expected = rf"tiny_{width}x{height}\.png: image is {width}x{height} px .*at least {MIN_IMAGE_SIDE} px"
    for draft in (False, True):
        with pytest.raises(ImageTooSmallError, match=expected):
            decode_image(path, 32, 1, fit="square", draft=draft)
    with pytest.raises(ImageTooSmallError, match=expected):
        loaders.read_image(path, 32, 1)
    # the prepared folders report it as a folder data error with the same message
    with pytest.raises(folders.FolderDataError, match=expected + r".*delete or replace it"):
        folders.decode_image(path, 32, 1)


def test_small_real_images_are_still_accepted(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for side in (MIN_IMAGE_SIDE, 28):  # the smallest accepted, and a Fashion-MNIST image resized to 32
        pixels = rng.integers(0, 256, (side, side), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"s{side}.png")
        out = folders.decode_image(tmp_path / f"s{side}.png", 32, 1)
        assert out.shape == (32, 32) and out.std() > 10  # upscaled, not a flat image
        assert loaders.read_image(tmp_path / f"s{side}.png", 32, 1).shape == (1, 32, 32)
