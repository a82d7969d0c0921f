"""Where tests find real weights and photos: from configuration, never from the repository."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def model_dir() -> Path:
    d = os.environ.get("FACE2PAINT_MODEL_DIR")
    if not d or not Path(d).is_dir():
        pytest.skip("needs real weights: set FACE2PAINT_MODEL_DIR (CI uses ../shared/models)")
    return Path(d)


def faces_dir() -> Path:
    d = Path(os.environ.get("FACE2PAINT_FACES_DIR") or ROOT.parent / "shared" / "faces")
    if not d.is_dir():
        pytest.skip(f"needs the test photos in {d} (set FACE2PAINT_FACES_DIR)")
    return d


def manifest() -> list[dict]:
    with open(faces_dir() / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def astronaut_path() -> Path:
    """scikit-image's astronaut, from the installed package."""
    skimage_data = pytest.importorskip("skimage.data")
    return Path(skimage_data.__file__).parent / "astronaut.png"
