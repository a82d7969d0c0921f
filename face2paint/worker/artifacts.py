"""Artifacts passed between stages through object storage.

Intermediate images and per-face arrays travel as uncompressed .npy/.npz (lossless, about
1 ms to write or read a 512² image, where PNG took 25-35 ms: a tenth of the job system's whole
per-image overhead, to save bytes that live for seconds), one object per stage; the small
outputs (detected faces) travel in the next stage's message instead (worker/tasks.py). Results,
which users download, are encoded in the job's output format (PNG unless it asks for JPEG or
WebP) from the pixels alone, so they carry none of the input's metadata. Keys are deterministic per item and stage, so a stage
that runs twice overwrites its own output and changes nothing else.
"""

from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image


def png_bytes(rgb: np.ndarray) -> bytes:
    """A PNG of the pixels alone. libpng's row filters with Huffman-only deflate: about a
    quarter of the time of zlib level 1 (Pillow's fastest) for a 512² photo, and no larger on
    stylized photos (docs/BENCHMARKS.md, "Job-system cost")."""
    import cv2

    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]),
                           [cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY])
    if not ok:
        raise ValueError(f"could not encode a {rgb.shape} image as PNG")
    return buf.tobytes()


def result_bytes(rgb: np.ndarray, options: dict) -> tuple[bytes, str, str]:
    """(data, extension, content type) of a result in the format the job's options name."""
    from ..models.image_io import DEFAULT_OUTPUT_QUALITY, OUTPUT_FORMATS, encode_image

    fmt = OUTPUT_FORMATS[options.get("output_format") or "png"]
    if not fmt.lossy:
        return png_bytes(rgb), fmt.extension, fmt.mime
    quality = int(options.get("output_quality") or DEFAULT_OUTPUT_QUALITY)
    return encode_image(rgb, fmt.pillow, quality=quality), fmt.extension, fmt.mime


def png_array(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB")).copy()


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def npy_array(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def npz_arrays(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def json_bytes(obj) -> bytes:
    return json.dumps(obj).encode()


def json_obj(data: bytes):
    return json.loads(data)
