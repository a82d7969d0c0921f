"""Artifacts passed between stages through object storage.

Intermediate images and per-face arrays travel as uncompressed .npy/.npz (lossless, about
1 ms to write or read a 512² image, where PNG took 25-35 ms: a tenth of the job system's whole
per-image overhead, to save bytes that live for seconds); small metadata as JSON. Results,
which users download, are encoded in the job's output format (PNG unless it asks for JPEG or
WebP) from the pixels alone, so they carry none of the input's metadata. Keys are deterministic per item and stage, so a stage
that runs twice overwrites its own output and changes nothing else.
"""

from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image


def png_bytes(rgb: np.ndarray, compress_level: int = 1) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


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


def faces_bytes(faces, original_size) -> bytes:
    """The detect stage's faces and the input's original size. Full precision: rounded
    landmarks would shift the alignment and change the output."""
    return json_bytes({"original_size": list(original_size),
                       "faces": [{"box": list(f.box), "landmarks": f.landmarks.tolist(),
                                  "score": f.score} for f in faces]})


def faces_from(data: bytes):
    """(faces, original_size) of faces_bytes."""
    from ..models.types import Face

    meta = json_obj(data)
    return [Face.from_dict(d) for d in meta["faces"]], tuple(meta["original_size"])


def images_npz(images: list[np.ndarray]) -> bytes:
    """Same-size images (the stylized face crops) as one stacked array."""
    return npz_bytes(images=np.stack(images) if images else np.zeros((0, 1, 1, 3), np.uint8))


def images_from(data: bytes) -> list[np.ndarray]:
    return list(npz_arrays(data)["images"])
