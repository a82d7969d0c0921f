"""Downloaded results: their names and their bytes.

A result is named after the file it was made from (its upload name, sanitised when it was
stored, with the result's own extension), in a Content-Disposition header (RFC 6266, with
RFC 5987's `filename*` for names that are not plain ASCII) and inside a job's zip, where names
are made unique. The bytes come from storage in chunks, never whole in memory.
"""

from __future__ import annotations

import re
from typing import Iterator
from urllib.parse import quote

from ..jobs.storage import Storage

CHUNK = 1 << 20

# Characters Windows refuses in file names; replaced so a zip extracts anywhere.
_UNPORTABLE = re.compile(r'[<>:"/\\|?*\x00-\x1f\x7f]')
# RFC 5987 attr-char: what may stand unescaped in filename*.
_ATTR_CHARS = "!#$&+-.^_`|~"


def stem(filename: str | None) -> str:
    """The upload name without its extension ('IMG_0001.HEIC' -> 'IMG_0001')."""
    name = (filename or "").strip()
    base, dot, _ext = name.rpartition(".")
    return (base if dot and base else name) or "result"


def result_name(filename: str | None, extension: str) -> str:
    """The download name of a result: the upload's stem, portable, with the result's extension."""
    name = _UNPORTABLE.sub("_", stem(filename)).strip(" .") or "result"
    return f"{name[:200]}.{extension}"


def extension_of(key: str) -> str:
    return key.rsplit(".", 1)[-1] if "." in key.rsplit("/", 1)[-1] else "bin"


def content_disposition(filename: str, disposition: str = "attachment") -> str:
    """`attachment; filename="ascii"; filename*=UTF-8''percent-encoded` (the second only when
    the name is not plain ASCII: browsers take filename*, older clients the ASCII fallback)."""
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in filename)
    header = f'{disposition}; filename="{fallback}"'
    if fallback != filename:
        header += f"; filename*=UTF-8''{quote(filename, safe=_ATTR_CHARS)}"
    return header


class UniqueNames:
    """Names made unique the way file managers do: a.png, a (2).png, a (3).png. Case-insensitive,
    since the zip may be extracted on a file system that is."""

    def __init__(self, reserved: tuple[str, ...] = ()):
        self._taken = {n.lower() for n in reserved}

    def take(self, name: str) -> str:
        base, dot, ext = name.rpartition(".")
        if not dot:
            base, ext = name, ""
        candidate, n = name, 1
        while candidate.lower() in self._taken:
            n += 1
            candidate = f"{base} ({n}).{ext}" if dot else f"{base} ({n})"
        self._taken.add(candidate.lower())
        return candidate


def object_chunks(storage: Storage, key: str) -> Iterator[bytes]:
    """An object's bytes in chunks (for a StreamingResponse). Opened before the first chunk, so
    an ObjectNotFound is raised while the route can still answer 404."""
    src = storage.open_stream(key)

    def chunks() -> Iterator[bytes]:
        try:
            while data := src.read(CHUNK):
                yield data
        finally:
            src.close()

    return chunks()
