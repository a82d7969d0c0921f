"""Checking uploads before anything is stored (options: options.py).

Request-level problems (no files, too many, too large) are answered with a 4xx. A file that
is not a supported image becomes an item marked failed with the reason, so its siblings still
run; only when every file is unsupported does the request get a 415.
"""

from __future__ import annotations

import io
import re
import warnings

from fastapi import HTTPException, UploadFile
from PIL import Image, UnidentifiedImageError

from ..jobs.inputs import NewFile, sanitize_filename
# The formats the workers decode (importing image_io registers the HEIF/AVIF openers here too).
from ..models.image_io import ALLOWED_FORMATS, formats_text
# The stored Content-Type comes from the sniffed format, never from the client's declaration.
from ..models.image_io import INPUT_MIME as _MIME

_SEND = formats_text()
_BOMB_SIZE = re.compile(r"Image size \((\d+) pixels\)")


def sniff(data: bytes, max_pixels: int) -> tuple[str | None, str | None]:
    """(format, error) from the file header alone; the worker decodes fully."""
    if not data:
        return None, "empty file: no image data received"
    try:
        with warnings.catch_warnings():
            # Pillow warns about (and above twice its own limit refuses) huge declared sizes
            # while reading the header; our own limit is applied below either way.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                fmt, (w, h) = im.format, im.size
    except UnidentifiedImageError:
        return None, f"not an image (unrecognised file content); {_SEND}"
    except Image.DecompressionBombError as e:
        m = _BOMB_SIZE.search(str(e))
        declared = f" ({int(m.group(1))} pixels declared)" if m else ""
        return None, (f"image too large{declared}, above the limit of {max_pixels} pixels "
                      "(possible decompression bomb); send a smaller image")
    except Exception as e:  # noqa: BLE001 - any header parse failure is the file's fault
        return None, f"unreadable image header ({type(e).__name__}: {e}); the file is damaged or incomplete"
    if fmt not in ALLOWED_FORMATS:
        return fmt, f"unsupported image format {fmt}; {_SEND}"
    if w < 1 or h < 1:
        return fmt, f"image has no pixels ({w}x{h})"
    if w * h > max_pixels:
        return fmt, (f"image is {w}x{h} = {w * h} pixels, above the limit of {max_pixels} "
                     "(possible decompression bomb); send a smaller image")
    return fmt, None


def read_uploads(files: list[UploadFile], settings) -> list[NewFile]:
    """The uploads checked and read into memory. Blocking (the parts are spooled files): call
    it from a sync route, which runs in the thread pool."""
    if not files:
        raise HTTPException(400, "no files: send one or more images as multipart parts named 'files'")
    if len(files) > settings.max_files_per_job:
        raise HTTPException(413, f"{len(files)} files in one job; the limit is {settings.max_files_per_job}")
    uploads = []
    for i, f in enumerate(files):
        f.file.seek(0)
        data = f.file.read(settings.max_upload_bytes + 1)
        # For display only: storage keys never use it.
        name = sanitize_filename(f.filename, i)
        if len(data) > settings.max_upload_bytes:
            raise HTTPException(413, f"{name} is larger than the limit of {settings.max_upload_bytes} bytes")
        fmt, error = sniff(data, settings.max_image_pixels)
        # What the client declared is not trusted: the type follows the sniffed format.
        ctype = _MIME.get(fmt, "application/octet-stream") if error is None else "application/octet-stream"
        uploads.append(NewFile(name, ctype, data, error=error, format=fmt))
    if all(u.error for u in uploads):
        reasons = "; ".join(f"{u.filename}: {u.error}" for u in uploads[:10])
        if any(u.error.startswith(("unsupported", "not an image")) for u in uploads):
            status = 415
        elif all("above the limit" in u.error for u in uploads):
            status = 413
        else:
            status = 400
        raise HTTPException(status, f"no processable image in the request: {reasons}")
    return uploads
