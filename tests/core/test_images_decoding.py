"""Image decoding in `ImageFiles`: 16-bit grey, transparency and EXIF orientation, on hand-built images."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmrerank.core.items import ImageFiles, ImageLoadError, to_rgb

ORIENTATION = 0x0112  # the EXIF tag


def encode(img: Image.Image, fmt: str = "PNG", **save_kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **save_kwargs)
    return buf.getvalue()


def read(data: bytes) -> np.ndarray:
    """`[H, W, 3]` uint8 pixels as `ImageFiles` returns them, from encoded bytes."""
    img = ImageFiles(["x"], [("x.png", data)])[0]
    assert img.mode == "RGB"
    return np.asarray(img)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_grey_is_scaled_to_8_bits_not_clipped(fmt):
    values = np.array([[65535, 32896, 0, 257, 384]], dtype=np.uint16)
    img = Image.fromarray(values)
    assert img.mode == "I;16"  # the mode the decoder gives back, the one RGB conversion used to clip
    assert Image.open(io.BytesIO(encode(img, fmt))).mode == "I;16"
    got = read(encode(img, fmt))
    # by hand: round(v / 257); 384 / 257 = 1.49 -> 1
    assert got[0, :, 0].tolist() == [255, 128, 0, 1, 1]
    assert (got[..., 0] == got[..., 1]).all() and (got[..., 1] == got[..., 2]).all()


def test_32_bit_integer_grey_in_the_16_bit_range_is_scaled_and_beyond_it_refused(tmp_path: Path):
    img = Image.fromarray(np.array([[65535, 32896]], dtype=np.int32))
    assert img.mode == "I"
    assert np.asarray(to_rgb(img))[0, :, 0].tolist() == [255, 128]
    path = tmp_path / "wide.tiff"
    Image.fromarray(np.array([[70000]], dtype=np.int32)).save(path)
    with pytest.raises(ImageLoadError, match=r"wide\.tiff.*16-bit"):
        ImageFiles(["w"], [path])[0]


def test_transparent_pixels_are_composited_on_white():
    pixels = np.array([[[255, 0, 0, 0], [255, 0, 0, 255], [255, 0, 0, 128], [0, 0, 255, 64]]], dtype=np.uint8)
    got = read(encode(Image.fromarray(pixels, "RGBA")))
    assert got[0, 0].tolist() == [255, 255, 255]  # fully transparent: the background
    assert got[0, 1].tolist() == [255, 0, 0]  # opaque: the colour
    # by hand: a * colour + (1 - a) * 255 with a = alpha / 255
    for col in (2, 3):
        a = pixels[0, col, 3] / 255
        expected = a * pixels[0, col, :3] + (1 - a) * 255
        assert np.abs(got[0, col].astype(float) - expected).max() <= 1, (col, got[0, col], expected)


def test_grey_alpha_and_palette_transparency_are_composited_on_white():
    la = Image.fromarray(np.array([[[0, 0], [0, 255]]], dtype=np.uint8), "LA")
    assert read(encode(la))[0].tolist() == [[255, 255, 255], [0, 0, 0]]
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    palette.putpixel((0, 0), 0)
    palette.putpixel((1, 0), 1)
    data = encode(palette, transparency=0)  # palette entry 0 (black) is transparent
    assert "transparency" in Image.open(io.BytesIO(data)).info
    assert read(data)[0].tolist() == [[255, 255, 255], [0, 255, 0]]


def test_exif_orientation_is_applied(tmp_path: Path):
    stored = np.zeros((2, 4, 3), dtype=np.uint8)  # H=2, W=4
    stored[0, 0] = (255, 0, 0)  # mark the stored top-left corner
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "rotated.png"
    Image.fromarray(stored).save(path, exif=exif)
    assert Image.open(path).getexif()[ORIENTATION] == 6 and Image.open(path).size == (4, 2)
    img = ImageFiles(["r"], [path])[0]
    assert img.size == (2, 4)  # width and height swapped
    got = np.asarray(img)
    assert got[0, 1].tolist() == [255, 0, 0]  # the stored top-left is now top-right
    assert (got == np.rot90(stored, k=-1)).all()  # independent: numpy's clockwise quarter turn


def test_plain_rgb_and_grey_are_unchanged():
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 7
    assert (read(encode(Image.fromarray(rgb))) == rgb).all()
    grey = np.array([[0, 100, 255]], dtype=np.uint8)
    assert read(encode(Image.fromarray(grey)))[0, :, 1].tolist() == [0, 100, 255]
