"""load_image / resize_to / encode_image / save_image on inputs generated here with Pillow,
plus a few real files from the shared photo set."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests import helpers
from face2paint.models.image_io import (
    ImageError,
    LoadedImage,
    encode_image,
    load_image,
    resize_to,
    save_image,
)


def _save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _gradient(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    r = (x * 255 // max(w - 1, 1)).astype(np.uint8)
    g = (y * 255 // max(h - 1, 1)).astype(np.uint8)
    return np.stack([r, g, np.full_like(r, 90)], axis=2)


def _png_header(w: int, h: int) -> bytes:
    """A PNG signature and IHDR declaring w x h RGB, plus an empty IDAT and IEND."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


# -- modes ------------------------------------------------------------------------------------


def test_rgb_png_roundtrip_exact():
    rgb = _noise(20, 30)
    out = load_image(_save(Image.fromarray(rgb), "PNG"))
    assert isinstance(out, LoadedImage)
    assert out.rgb.dtype == np.uint8 and out.rgb.shape == (20, 30, 3)
    np.testing.assert_array_equal(out.rgb, rgb)
    assert (out.format, out.mode, out.frames, out.original_size) == ("PNG", "RGB", 1, (30, 20))


def test_grayscale():
    g = np.arange(256, dtype=np.uint8).reshape(16, 16)
    out = load_image(_save(Image.fromarray(g, "L"), "PNG"))
    assert out.mode == "L" and out.rgb.shape == (16, 16, 3)
    for c in range(3):
        np.testing.assert_array_equal(out.rgb[..., c], g)


def test_bilevel():
    b = Image.new("1", (8, 4), 0)
    b.putpixel((0, 0), 1)
    out = load_image(_save(b, "PNG"))
    assert out.mode == "1"
    assert out.rgb[0, 0].tolist() == [255, 255, 255] and out.rgb[1, 1].tolist() == [0, 0, 0]


def test_rgba_composited_over_white():
    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[:, :3] = (255, 0, 0, 255)  # opaque red
    rgba[:, 3:] = (0, 0, 0, 0)  # fully transparent black
    rgba[0, 5] = (0, 0, 0, 128)  # half-transparent black
    out = load_image(_save(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert out.mode == "RGBA"
    assert out.rgb[0, 0].tolist() == [255, 0, 0]
    assert out.rgb[1, 4].tolist() == [255, 255, 255]
    assert np.all(np.abs(out.rgb[0, 5].astype(int) - 127) <= 1)


def test_la_composited_over_white():
    la = Image.new("LA", (4, 4), (0, 0))
    la.putpixel((0, 0), (50, 255))
    out = load_image(_save(la, "PNG"))
    assert out.rgb[0, 0].tolist() == [50, 50, 50]
    assert out.rgb[3, 3].tolist() == [255, 255, 255]


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_transparency(fmt):
    p = Image.new("P", (6, 4), 0)
    p.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    for x in range(3):
        for y in range(4):
            p.putpixel((x, y), 1)
    p.putpixel((5, 0), 2)
    out = load_image(_save(p, fmt, transparency=0))
    assert out.mode == "P"
    assert out.rgb[0, 0].tolist() == [255, 0, 0]
    assert out.rgb[0, 5].tolist() == [0, 0, 255]
    assert out.rgb[3, 4].tolist() == [255, 255, 255]  # index 0 is transparent, not black


def test_palette_without_transparency():
    p = Image.fromarray(_noise(8, 8)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    out = load_image(_save(p, "PNG"))
    np.testing.assert_array_equal(out.rgb, np.asarray(p.convert("RGB")))


def test_grayscale_colour_key_transparency():
    g = Image.new("L", (4, 4), 0)
    g.putpixel((0, 0), 200)
    out = load_image(_save(g, "PNG", transparency=0))
    assert out.rgb[0, 0].tolist() == [200, 200, 200]
    assert out.rgb[2, 2].tolist() == [255, 255, 255]


@pytest.mark.parametrize(
    "mode,fmt,dtype",
    [("I;16", "PNG", "<u2"), ("I;16B", "TIFF", ">u2"), ("I", "TIFF", "<i4"), ("F", "TIFF", "<f4")],
)
def test_high_bit_depth_scaled_by_actual_range(mode, fmt, dtype):
    # A gradient from 1000 to 5000: Pillow's own convert clips this to all white.
    ramp = np.linspace(1000, 5000, 64).astype(dtype)
    arr = np.tile(ramp, (8, 1))
    if mode == "I;16B":
        im = Image.frombytes("I;16B", (64, 8), arr.tobytes())
    else:
        im = Image.fromarray(arr)
    assert im.mode == mode
    out = load_image(_save(im, fmt))
    assert out.mode == mode
    row = out.rgb[0, :, 0].astype(int)
    assert row[0] <= 1 and row[-1] >= 254
    assert np.all(np.diff(row) >= 0)
    assert len(np.unique(row)) > 50
    np.testing.assert_array_equal(out.rgb[..., 0], out.rgb[..., 2])


def test_cmyk_jpeg():
    cmyk = Image.new("CMYK", (32, 16), (0, 0, 0, 0))  # white
    cmyk.paste((0, 255, 255, 0), (0, 0, 16, 16))  # magenta + yellow = red
    cmyk.paste((0, 0, 0, 255), (16, 8, 32, 16))  # black ink
    out = load_image(_save(cmyk, "JPEG", quality=95))
    assert out.mode == "CMYK" and out.format == "JPEG"
    assert np.abs(out.rgb[8, 4].astype(int) - [255, 0, 0]).max() <= 12
    assert np.abs(out.rgb[2, 28].astype(int) - [255, 255, 255]).max() <= 12
    assert out.rgb[14, 28].max() <= 12


def test_lab_tiff():
    out = load_image(_save(Image.fromarray(_gradient(8, 8)).convert("LAB"), "TIFF"))
    assert out.mode == "LAB"
    # 8-bit Lab loses a little on the saturated corners of the round trip.
    assert np.abs(out.rgb.astype(int) - _gradient(8, 8)).mean() < 4


@pytest.mark.parametrize("mode", ["YCbCr", "HSV"])
def test_other_colour_spaces(mode):
    # No lossless file format stores these here, so go through the converter directly.
    from face2paint.models.image_io import _to_rgb

    got = _to_rgb(Image.fromarray(_gradient(8, 8)).convert(mode))
    assert got.shape == (8, 8, 3)
    assert np.abs(got.astype(int) - _gradient(8, 8)).max() <= 8


# -- EXIF orientation -------------------------------------------------------------------------

# What the viewer shows for a stored array `a`, per EXIF: where stored row 0 / column 0 go.
_EXPECTED = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],  # row0 top, col0 right
    3: lambda a: a[::-1, ::-1],  # row0 bottom, col0 right
    4: lambda a: a[::-1],  # row0 bottom, col0 left
    5: lambda a: a.transpose(1, 0, 2),  # row0 left, col0 top
    6: lambda a: np.rot90(a, -1),  # row0 right, col0 top (rotate 90 clockwise)
    7: lambda a: np.rot90(a, -1)[::-1],  # row0 right, col0 bottom
    8: lambda a: np.rot90(a, 1),  # row0 left, col0 bottom
}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation(orientation):
    stored = _noise(24, 40, seed=orientation)
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = load_image(_save(Image.fromarray(stored), "PNG", exif=exif))
    expected = _EXPECTED[orientation](stored)
    assert out.rgb.shape == expected.shape
    assert out.original_size == (expected.shape[1], expected.shape[0])
    np.testing.assert_array_equal(out.rgb, expected)


def test_exif_orientation_on_capped_jpeg():
    # A phone photo stored landscape with orientation 6, above the cap (uses draft decoding).
    stored = _gradient(1200, 2400)
    exif = Image.Exif()
    exif[0x0112] = 6
    out = load_image(_save(Image.fromarray(stored), "JPEG", quality=95, exif=exif), max_side=1920)
    assert out.original_size == (1200, 2400)
    assert out.rgb.shape == (1920, 960, 3)
    expected = resize_to(np.ascontiguousarray(np.rot90(stored, -1)), (960, 1920))
    assert np.abs(out.rgb.astype(int) - expected).mean() < 3


# -- frames, formats, sizes -------------------------------------------------------------------


def test_animated_gif_first_frame():
    frames = [Image.new("RGB", (10, 8), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    data = _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    out = load_image(data)
    assert out.format == "GIF" and out.frames == 3
    assert out.rgb.shape == (8, 10, 3)
    assert np.abs(out.rgb.astype(int) - [255, 0, 0]).max() <= 2


def test_webp_lossless():
    rgb = _noise(12, 18)
    out = load_image(_save(Image.fromarray(rgb), "WEBP", lossless=True))
    assert out.format == "WEBP"
    np.testing.assert_array_equal(out.rgb, rgb)


@pytest.mark.parametrize("fmt", ["BMP", "TIFF"])
def test_bmp_tiff(fmt):
    rgb = _noise(9, 7)
    out = load_image(_save(Image.fromarray(rgb), fmt))
    assert out.format == fmt
    np.testing.assert_array_equal(out.rgb, rgb)


def test_one_pixel():
    out = load_image(_save(Image.new("RGB", (1, 1), (10, 20, 30)), "PNG"))
    assert out.rgb.shape == (1, 1, 3) and out.rgb[0, 0].tolist() == [10, 20, 30]


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_cap_longest_side(fmt):
    out = load_image(_save(Image.fromarray(_gradient(1000, 3000)), fmt))
    assert out.rgb.shape == (640, 1920, 3)
    assert out.original_size == (3000, 1000)
    expected = resize_to(_gradient(1000, 3000), (1920, 640))
    assert np.abs(out.rgb.astype(int) - expected).mean() < 3


def test_no_cap_at_limit():
    out = load_image(_save(Image.fromarray(_noise(10, 1920)), "PNG"))
    assert out.rgb.shape == (10, 1920, 3)


def test_sources_path_and_file_object(tmp_path):
    rgb = _noise(5, 6)
    data = _save(Image.fromarray(rgb), "PNG")
    p = tmp_path / "x.png"
    p.write_bytes(data)
    for src in (p, str(p), io.BytesIO(data), bytearray(data)):
        np.testing.assert_array_equal(load_image(src).rgb, rgb)


# -- errors -----------------------------------------------------------------------------------


def test_decompression_bomb_header_rejected_before_decoding():
    data = _png_header(100_000, 100_000)
    assert len(data) < 100
    with pytest.raises(ImageError, match="pixels"):
        load_image(data)


def test_pixel_limit_is_ours():
    data = _save(Image.new("RGB", (100, 100)), "PNG")
    with pytest.raises(ImageError, match=r"100x100 = 1e\+04 pixels, above the limit of 5000"):
        load_image(data, max_pixels=5000)


@pytest.mark.parametrize("side", [12_000, 20_000])  # Pillow's warning, then its error
def test_pillow_bomb_checks_become_image_error(side):
    with pytest.raises(ImageError, match="too large"):
        load_image(_png_header(side, side), max_pixels=10**9)


def test_empty_bytes():
    with pytest.raises(ImageError, match="empty"):
        load_image(b"")


def test_empty_file(tmp_path):
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        load_image(p)


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="no such image file"):
        load_image(tmp_path / "nope.jpg")


def test_text_named_jpg(tmp_path):
    p = tmp_path / "photo.jpg"
    p.write_text("hello, this is not a photo\n")
    with pytest.raises(ImageError, match="not an image: cannot identify image file"):
        load_image(p)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated(fmt):
    data = _save(Image.fromarray(_noise(64, 64)), fmt)
    with pytest.raises(ImageError, match="truncated|corrupt") as info:
        load_image(data[: len(data) // 2])
    assert "upload" in str(info.value) or "decoded" in str(info.value)


def test_unsupported_format():
    data = _save(Image.new("RGB", (4, 4)), "PCX")
    msg = r"unsupported format PCX; send JPEG, PNG, WebP, HEIC, AVIF, GIF, BMP, TIFF or PGM/PPM/PBM"
    with pytest.raises(ImageError, match=msg):
        load_image(data)


def test_image_error_is_value_error():
    assert issubclass(ImageError, ValueError)


# -- resize / encode / save -------------------------------------------------------------------


def test_resize_to():
    rgb = _gradient(100, 200)
    np.testing.assert_array_equal(resize_to(rgb, (200, 100)), rgb)
    small = resize_to(rgb, (50, 25))
    assert small.shape == (25, 50, 3) and small.dtype == np.uint8
    big = resize_to(small, (200, 100))
    assert big.shape == (100, 200, 3)
    assert np.abs(big.astype(int) - rgb).mean() < 4
    with pytest.raises(ValueError):
        resize_to(rgb, (0, 10))


def test_encode_png_lossless_and_jpeg_close():
    rgb = _gradient(40, 60)
    np.testing.assert_array_equal(load_image(encode_image(rgb, "PNG")).rgb, rgb)
    jpg = encode_image(rgb, "JPEG", quality=95)
    assert jpg[:2] == b"\xff\xd8"
    assert np.abs(load_image(jpg).rgb.astype(int) - rgb).mean() < 2
    with pytest.raises(ValueError):
        encode_image(rgb, "GIF")
    with pytest.raises(ValueError):
        encode_image(rgb.astype(np.float32), "PNG")


def test_save_image_format_from_suffix(tmp_path):
    rgb = _noise(8, 8)
    assert load_image(save_image(rgb, tmp_path / "a.jpg")).format == "JPEG"
    assert load_image(save_image(rgb, tmp_path / "a.JPEG")).format == "JPEG"
    assert load_image(save_image(rgb, tmp_path / "a.webp")).format == "WEBP"
    p = save_image(rgb, tmp_path / "sub" / "a.png")
    np.testing.assert_array_equal(load_image(p).rgb, rgb)
    assert Image.open(save_image(rgb, tmp_path / "noext")).format == "PNG"


# -- real files -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def faces_dir() -> Path:
    return helpers.faces_dir()


def test_real_grayscale_jpeg(faces_dir):
    out = load_image(faces_dir / "pil_hopper_gray.jpg")
    assert (out.mode, out.format, out.rgb.shape) == ("L", "JPEG", (128, 128, 3))
    np.testing.assert_array_equal(out.rgb[..., 0], out.rgb[..., 1])


def test_real_rgba_png(faces_dir):
    out = load_image(faces_dir / "fr_miranda_mic.png")
    assert (out.mode, out.format, out.rgb.shape) == ("RGBA", "PNG", (612, 704, 3))


def test_real_webp_capped(faces_dir):
    out = load_image(faces_dir / "ul_mask_kids.webp")
    assert out.format == "WEBP" and out.original_size == (2000, 792)
    assert out.rgb.shape == (760, 1920, 3)


def test_real_tiny_animated_gif(faces_dir):
    out = load_image(faces_dir / "sk_tiny_anim.gif")
    assert out.format == "GIF" and out.frames == 24
    assert out.rgb.shape == (25, 14, 3)
