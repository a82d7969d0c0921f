"""How a model file is shown to be the one registered, before anything loads it.

- sha256, where the source publishes one or it was measured from the published file;
- the git blob id at a pinned commit (sha1 of b"blob <size>\\0" + bytes), for files whose
  repository records no sha256 (bryandlee/animegan2-pytorch's checkpoints): the id is what
  `git ls-tree` of that commit shows, so a download can be checked against the repository itself;
- for files this project makes from a verified source (an ONNX converted from a CoreML
  .mlmodel), a record beside the result: `NAME.json` holding the source's sha256, the converter
  version and the sha256 of what it wrote, checked on every later use.

Pure file work over paths; the registry decides where to look and what to download.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def git_blob_id(path: Path) -> str:
    """The id git gives a file's content: sha1 of b"blob <size>\\0" followed by the bytes."""
    path = Path(path)
    h = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def record_path(path: Path) -> Path:
    """Where the record of a derived or blob-verified file lives: beside it, NAME.json."""
    return Path(path).with_name(Path(path).name + ".json")


def write_record(path: Path, record: dict) -> None:
    """Write NAME.json atomically (a reader sees the old record or the new one, never half)."""
    target = record_path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(record, f, indent=2, sort_keys=True)
    os.replace(tmp, target)


def read_record(path: Path) -> dict | None:
    try:
        data = json.loads(record_path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def matches_record(path: Path, expected: dict) -> bool:
    """True when `path` exists, its record holds every key of `expected` with that value, and
    the file's sha256 is the one the record wrote down."""
    path = Path(path)
    record = read_record(path)
    if not path.is_file() or record is None:
        return False
    if any(record.get(k) != v for k, v in expected.items()):
        return False
    return record.get("sha256") == sha256_file(path)
