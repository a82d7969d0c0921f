"""Compact artifacts passed between stages through object storage.

Images travel as fast-compressed PNG (lossless, a fraction of raw size), per-face arrays as one
compressed npz, small metadata as JSON. Keys are deterministic per item and stage, so a stage
that runs twice overwrites its own output and changes nothing else.
"""

from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image


def png_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def png_array(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB")).copy()


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def npz_arrays(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def json_bytes(obj) -> bytes:
    return json.dumps(obj).encode()


def json_obj(data: bytes):
    return json.loads(data)
