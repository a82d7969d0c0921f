"""Loading and saving images with Pillow (no OpenCV: the API process imports this too).

`load_image` turns whatever a user uploads into one RGB uint8 array the pipeline can trust:
EXIF orientation applied, first frame of animations, every Pillow mode converted to RGB
(transparency composited over white, high bit depths scaled by their actual range), and the
longest side capped. Anything wrong raises `ImageError` with a message meant for the user.

Formats: what Pillow reads itself (JPEG, PNG, WebP, GIF, BMP, TIFF, the Netpbm family
PBM/PGM/PPM, and AVIF where Pillow was built with libavif), plus HEIF/HEIC (iPhone photos)
through pillow-heif's opener, registered on import. Outputs are encoded from the pixel array
alone (`encode_image`), so no metadata of the input (EXIF with its GPS position, XMP, ICC,
comments) ever reaches them: orientation is applied to the pixels and colour converted to sRGB
on load, which is all of the metadata a result needs.
"""

from __future__ import annotations

import io
import math
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError


def _register_plugins() -> frozenset[str]:
    """The optional decoders this process has: HEIF through pillow-heif, AVIF through Pillow's
    own plugin (Pillow 11.3+ wheels) or, for an older Pillow, pillow-heif's."""
    extra = set()
    try:
        import pillow_heif
    except ImportError:  # an install without it reads every other format
        pillow_heif = None
    if pillow_heif is not None:
        pillow_heif.register_heif_opener()
        extra.add("HEIF")
    from PIL import features

    if features.check("avif"):
        extra.add("AVIF")
    elif pillow_heif is not None and hasattr(pillow_heif, "register_avif_opener"):
        pillow_heif.register_avif_opener()
        extra.add("AVIF")
    return frozenset(extra)


# Pillow format names we accept (MPO is the multi-picture JPEG many phone cameras write; PPM is
# Pillow's name for all of PBM, PGM and PPM).
ALLOWED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF", "PPM"}) | _register_plugins()
_ALLOWED_TEXT = "send " + ", ".join(
    ["JPEG", "PNG", "WebP"] + [n for f, n in (("HEIF", "HEIC"), ("AVIF", "AVIF")) if f in ALLOWED_FORMATS]
    + ["GIF", "BMP", "TIFF"]) + " or PGM/PPM/PBM"
# The Content-Type of each input format, for what the API stores (never what a client declared).
INPUT_MIME = {"JPEG": "image/jpeg", "MPO": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp",
              "GIF": "image/gif", "BMP": "image/bmp", "TIFF": "image/tiff", "HEIF": "image/heif",
              "AVIF": "image/avif", "PPM": "image/x-portable-anymap"}


def formats_text() -> str:
    """'send JPEG, PNG, ...': the formats this process reads, for error messages."""
    return _ALLOWED_TEXT


@dataclass(frozen=True)
class OutputFormat:
    name: str  # the job option's value
    pillow: str  # Pillow's format name
    extension: str
    mime: str
    lossy: bool


# The quality of a JPEG or WebP result when the job names none.
DEFAULT_OUTPUT_QUALITY = 90
# The result formats a job may ask for, by option value.
OUTPUT_FORMATS = {
    "png": OutputFormat("png", "PNG", "png", "image/png", False),
    "jpeg": OutputFormat("jpeg", "JPEG", "jpg", "image/jpeg", True),
    "webp": OutputFormat("webp", "WEBP", "webp", "image/webp", True),
}

_ORIENTATION_TAG = 0x0112
_SUFFIX_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


class ImageError(ValueError):
    """The input is not an image we can use; the message says what is wrong and what to do."""


@dataclass
class LoadedImage:
    rgb: np.ndarray  # (H, W, 3) uint8, EXIF orientation applied, possibly downscaled
    original_size: tuple[int, int]  # (w, h) after EXIF orientation, before capping
    format: str  # Pillow format name, e.g. "JPEG"
    mode: str  # the file's own Pillow mode, e.g. "P", "I;16", "CMYK"
    frames: int


def load_image(
    source: str | Path | bytes | BinaryIO,
    max_side: int = 1920,
    max_pixels: int = 60_000_000,
) -> LoadedImage:
    """Decode `source` into an RGB uint8 array; raise ImageError for anything unusable."""
    fp = _open_source(source)
    # Pillow warns (and above 2x its own limit raises) on huge images while reading the
    # header; we apply our own limit right after, so both become ImageError. The filter is
    # process-global state, which is acceptable: at worst another thread sees an exception
    # where it would have seen a warning for an image it would reject anyway.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(fp)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageError(f"image too large: {exc} The limit is {max_pixels} pixels.") from exc
        except UnidentifiedImageError as exc:
            raise ImageError(
                f"not an image: cannot identify image file; {_ALLOWED_TEXT}"
            ) from exc
        except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
            raise ImageError(f"corrupt image header: {exc}") from exc

    try:
        return _decode(im, max_side=max_side, max_pixels=max_pixels)
    finally:
        im.close()


def _open_source(source: str | Path | bytes | BinaryIO) -> BinaryIO:
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageError("empty input: no image data received")
        return io.BytesIO(bytes(source))
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise ImageError(f"no such image file: {path}")
        if path.stat().st_size == 0:
            raise ImageError(f"empty file: {path.name} has no image data")
        # Read into memory so the file handle is not kept open by Pillow's lazy loading.
        return io.BytesIO(path.read_bytes())
    if hasattr(source, "read"):
        return source  # type: ignore[return-value]
    raise TypeError(f"load_image takes a path, bytes or a binary file, not {type(source).__name__}")


def _decode(im: Image.Image, *, max_side: int, max_pixels: int) -> LoadedImage:
    fmt = im.format or "unknown"
    if fmt not in ALLOWED_FORMATS:
        raise ImageError(f"unsupported format {fmt}; {_ALLOWED_TEXT}")
    w, h = im.size
    # Checked on the declared size, before any pixel is decoded.
    if w * h > max_pixels:
        raise ImageError(
            f"image is {w}x{h} = {w * h:.3g} pixels, above the limit of {max_pixels}; "
            "send a smaller image"
        )
    if w < 1 or h < 1:
        raise ImageError(f"image has no pixels ({w}x{h})")
    mode = im.mode

    try:
        frames = int(getattr(im, "n_frames", 1) or 1)
        if frames > 1:
            im.seek(0)
        if fmt in ("JPEG", "MPO") and max(w, h) > max_side:
            # DCT-domain downscale (1/2, 1/4, 1/8) while decoding, never below max_side:
            # much faster than decoding full size, and Lanczos does the rest.
            r = max_side / max(w, h)
            im.draft(None, (math.ceil(w * r), math.ceil(h * r)))
        im.load()
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image too large: {exc}") from exc
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error) as exc:
        detail = str(exc) or type(exc).__name__
        if "truncated" in detail or isinstance(exc, EOFError):
            raise ImageError(
                f"truncated image data ({detail}); the file is incomplete, upload it again"
            ) from exc
        raise ImageError(f"corrupt image data ({detail}); the file cannot be decoded") from exc

    # After load: a PNG may carry its eXIf chunk after the pixel data.
    orientation = _orientation(im)
    original_size = (h, w) if orientation in (5, 6, 7, 8) else (w, h)
    im = _apply_orientation(im, orientation)
    rgb = _to_rgb(im)

    ow, oh = original_size
    if max(ow, oh) > max_side:
        # Target from the original size, so a draft-decoded JPEG (already somewhat smaller,
        # never below the target) lands on exactly the same size as a full decode would.
        t = max_side / max(ow, oh)
        rgb = resize_to(rgb, (max(1, round(ow * t)), max(1, round(oh * t))))
    return LoadedImage(
        rgb=np.ascontiguousarray(rgb), original_size=original_size, format=fmt, mode=mode,
        frames=frames,
    )


def _orientation(im: Image.Image) -> int:
    try:
        value = int(im.getexif().get(_ORIENTATION_TAG, 1))
    except Exception:  # malformed EXIF must not make an otherwise good photo unusable
        return 1
    return value if 1 <= value <= 8 else 1


def _apply_orientation(im: Image.Image, orientation: int) -> Image.Image:
    if orientation == 1:
        return im
    try:
        out = ImageOps.exif_transpose(im)
    except Exception:
        out = None
    if out is None or out is im:
        # exif_transpose could not do it: apply the tag ourselves.
        method = {
            2: Image.Transpose.FLIP_LEFT_RIGHT,
            3: Image.Transpose.ROTATE_180,
            4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE,
            6: Image.Transpose.ROTATE_270,
            7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90,
        }[orientation]
        out = im.transpose(method)
    return out


def _to_rgb(im: Image.Image) -> np.ndarray:
    """Any Pillow mode -> (H, W, 3) uint8 RGB."""
    mode = im.mode
    if mode == "RGB":
        im = _icc_to_srgb(im)
        return np.asarray(im.convert("RGB") if im.mode != "RGB" else im, dtype=np.uint8)
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return _high_depth_to_rgb(im)
    if mode == "CMYK":
        converted = _icc_to_srgb(im)
        if converted.mode == "RGB":
            return np.asarray(converted)
        # No usable profile: Pillow's plain (255 - C)(255 - K) / 255 formula (Adobe's
        # inverted CMYK is already undone by the JPEG decoder).
        return np.asarray(im.convert("RGB"))
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa") or (
        mode in ("P", "L", "1", "RGB") and "transparency" in im.info
    )
    if has_alpha:
        # Pillow's convert applies palette / colour-key transparency and un-premultiplies.
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float32)
        a = rgba[..., 3:4] / 255.0
        # Composite over white: transparent areas would otherwise show whatever colour the
        # encoder left under alpha 0 (often black), which the stylizer would paint.
        out = rgba[..., :3] * a + 255.0 * (1.0 - a)
        return np.clip(out + 0.5, 0, 255).astype(np.uint8)
    try:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (ValueError, OSError) as exc:
        raise ImageError(f"unsupported image mode {mode}; {_ALLOWED_TEXT} in RGB") from exc


def _high_depth_to_rgb(im: Image.Image) -> np.ndarray:
    """16-bit / 32-bit int / float grayscale -> 8-bit by the actual value range.

    Pillow's own convert clips I and F to 0..255, which turns most 16-bit images white.
    """
    arr = np.asarray(im).astype(np.float64)
    finite = np.isfinite(arr)
    if not finite.any():
        return np.zeros((*arr.shape[:2], 3), np.uint8)
    lo = float(arr[finite].min())
    hi = float(arr[finite].max())
    if hi > lo:
        out = (arr - lo) * (255.0 / (hi - lo))
    else:  # flat image: keep its level on the mode's nominal scale
        nominal = 65535.0 if im.mode.startswith("I;16") else 255.0
        out = np.full(arr.shape, lo * 255.0 / nominal)
    out = np.where(finite, out, 0.0)
    g = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=2)


def _icc_to_srgb(im: Image.Image) -> Image.Image:
    """Convert through an embedded ICC profile (CMYK, wide-gamut RGB) to sRGB RGB.

    Returns the input unchanged when there is no profile, it is already sRGB, or colour
    management is unavailable or fails (a bad profile must not reject the photo).
    """
    icc = im.info.get("icc_profile")
    if not icc:
        return im
    try:
        from PIL import ImageCms

        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if im.mode == "RGB" and "srgb" in ImageCms.getProfileDescription(src).lower():
            return im
        dst = ImageCms.createProfile("sRGB")
        out = ImageCms.profileToProfile(
            im, src, dst, renderingIntent=ImageCms.Intent.PERCEPTUAL, outputMode="RGB"
        )
        return out if out is not None else im
    except Exception:
        return im


def resize_to(rgb: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    """Resize an (H, W, C) uint8 image to (w, h) with Lanczos.

    Pillow's Lanczos widens its kernel by the scale factor when shrinking, so it is
    antialiased (area-like) downwards and sharp upwards; reducing_gap first box-reduces
    large factors, which is faster and indistinguishable.
    """
    w, h = int(size_wh[0]), int(size_wh[1])
    if w < 1 or h < 1:
        raise ValueError(f"target size must be positive, got {size_wh}")
    arr = _check_rgb(rgb)
    if arr.shape[1] == w and arr.shape[0] == h:
        return arr
    out = Image.fromarray(arr).resize((w, h), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return np.asarray(out)


def encode_image(rgb: np.ndarray, fmt: str = "PNG", quality: int = 95) -> bytes:
    """Encode an RGB uint8 array as PNG, JPEG or WebP bytes."""
    fmt = fmt.upper()
    if fmt == "JPG":
        fmt = "JPEG"
    im = Image.fromarray(_check_rgb(rgb))
    buf = io.BytesIO()
    if fmt == "JPEG":
        # 4:4:4 at high quality: stylized output has hard colour edges that 4:2:0 smears.
        subsampling = 0 if quality >= 90 else 2
        im.save(buf, "JPEG", quality=int(quality), subsampling=subsampling, optimize=True)
    elif fmt == "PNG":
        im.save(buf, "PNG", compress_level=6)
    elif fmt == "WEBP":
        im.save(buf, "WEBP", quality=int(quality), method=4)
    else:
        raise ValueError(f"cannot encode {fmt}; use PNG, JPEG or WEBP")
    return buf.getvalue()


def save_image(rgb: np.ndarray, path: str | Path, quality: int = 95) -> Path:
    """Write `rgb` to `path`; the format follows the suffix (.png, .jpg/.jpeg, .webp), else PNG."""
    path = Path(path)
    fmt = _SUFFIX_FORMATS.get(path.suffix.lower(), "PNG")
    data = encode_image(rgb, fmt, quality=quality)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    arr = np.asarray(rgb)
    if arr.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        raise ValueError(f"expected an (H, W, 3) image, got shape {arr.shape}")
    return np.ascontiguousarray(arr)
