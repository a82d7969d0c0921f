"""A job's results as one zip, written while it is sent: each object is read from storage in
chunks and passed on, so neither the API's memory nor its disk ever holds the whole archive.

The standard library's zipfile writes to an unseekable stream (sizes and CRCs go in data
descriptors after each member); members are stored, not deflated, since PNG, JPEG and WebP are
compressed already.
"""

from __future__ import annotations

import json
import logging
import zipfile
from dataclasses import dataclass
from datetime import datetime
from typing import Iterator

from ..jobs.storage import ObjectNotFound, Storage
from .downloads import CHUNK

log = logging.getLogger("face2paint.api")

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Member:
    name: str  # inside the zip
    key: str  # in storage
    modified: datetime | None


class _Sink:
    """What zipfile writes to: collects the bytes until the generator passes them on."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


def _date_time(when: datetime | None) -> tuple[int, int, int, int, int, int]:
    if when is None or when.year < 1980:
        return (1980, 1, 1, 0, 0, 0)
    return when.timetuple()[:6]


def stream_zip(storage: Storage, members: list[Member], manifest: dict) -> Iterator[bytes]:
    """The zip of `members`, then `manifest` (with any member that vanished from storage in the
    meantime listed under "missing") as manifest.json, in chunks."""
    sink = _Sink()
    missing = []
    with zipfile.ZipFile(sink, mode="w", compression=zipfile.ZIP_STORED) as zf:
        for m in members:
            try:
                src = storage.open_stream(m.key)
            except ObjectNotFound:
                # Deleted since the listing (retention, a DELETE): say so instead of failing.
                missing.append(m.name)
                continue
            try:
                info = zipfile.ZipInfo(m.name, date_time=_date_time(m.modified))
                info.compress_type = zipfile.ZIP_STORED
                with zf.open(info, mode="w") as dst:
                    while chunk := src.read(CHUNK):
                        dst.write(chunk)
                        yield sink.take()
            finally:
                src.close()
            yield sink.take()
        if missing:
            log.warning("results zip: %d result object(s) gone from storage", len(missing))
            manifest = {**manifest, "missing": missing}
        zf.writestr(MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    yield sink.take()
