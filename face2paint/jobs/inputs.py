"""The uploaded files of a new job: their display names, their object keys' extensions, and
storing them (and removing them again when the job is not created)."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from .keys import input_key
from .storage import Storage

log = logging.getLogger("face2paint.jobs")

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_EXT_BY_FORMAT = {
    "JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp",
    "TIFF": "tiff", "HEIF": "heic", "AVIF": "avif", "PPM": "pnm",
}
_EXT_BY_TYPE = {
    "image/jpeg": "jpg", "image/jpg": "jpg", "image/png": "png", "image/webp": "webp",
    "image/gif": "gif", "image/bmp": "bmp", "image/tiff": "tiff", "image/heif": "heic",
    "image/heic": "heic", "image/avif": "avif", "image/x-portable-anymap": "pnm",
}


@dataclass
class NewFile:
    filename: str
    content_type: str
    data: bytes
    error: str | None = None  # set when the upload can never be processed: the item fails
    format: str | None = None  # image format sniffed from the header (PIL name), if known

    @classmethod
    def coerce(cls, f: Any) -> "NewFile":
        """A NewFile from itself, a (filename, content_type, data[, error]) tuple, or any
        object with those attributes."""
        if isinstance(f, NewFile):
            return f
        if isinstance(f, (tuple, list)):
            if len(f) not in (3, 4):
                raise TypeError("a file is (filename, content_type, data) or with an error as 4th")
            return cls(*f)
        return cls(
            filename=getattr(f, "filename"),
            content_type=getattr(f, "content_type", None) or "application/octet-stream",
            data=getattr(f, "data"),
            error=getattr(f, "error", None),
            format=getattr(f, "format", None),
        )

    @property
    def extension(self) -> str:
        # From the sniffed format or declared type, never from the user's file name.
        if self.format and self.format.upper() in _EXT_BY_FORMAT:
            return _EXT_BY_FORMAT[self.format.upper()]
        return _EXT_BY_TYPE.get((self.content_type or "").split(";")[0].strip().lower(), "bin")


def sanitize_filename(raw: str | None, index: int) -> str:
    """A name for display only: no directories, no control characters, at most 255 chars."""
    name = (raw or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = _CONTROL.sub("", name).strip()
    if name in ("", ".", ".."):
        name = f"image-{index + 1}"
    return name[:255]


def store_inputs(storage: Storage, job_id: str, files: Sequence[tuple[str, NewFile]]) -> list[str]:
    """Store each (item_id, file) under its input key; returns the keys. If one fails, the ones
    already stored are removed again before the error goes on."""
    stored: list[str] = []
    try:
        for item_id, f in files:
            key = input_key(job_id, item_id, f.extension)
            storage.put_bytes(key, f.data, f.content_type)
            stored.append(key)
    except BaseException:
        delete_quietly(storage, stored)
        raise
    return stored


def delete_quietly(storage: Storage, keys: Iterable[str]) -> None:
    for key in keys:
        try:
            storage.delete(key)
        except Exception:  # noqa: BLE001 - cleanup of orphans is best effort
            log.warning("could not delete orphaned input %s", key, exc_info=True)
