"""Same person or not: distance between dlib's ResNet face descriptors (128-D, the model behind
the `face_recognition` package) of a face before and after stylization. dlib's own threshold: the
same person below 0.6.

The weights ship in the `face-recognition-models` package, whose `__init__` imports
`pkg_resources` (gone from recent setuptools); its files are located with importlib without
importing it. dlib comes from `dlib-bin` (prebuilt wheels). Both are in the eval extra.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

SAME_PERSON_BELOW = 0.6
SHAPE_PREDICTOR = "shape_predictor_5_face_landmarks.dat"
RESNET = "dlib_face_recognition_resnet_model_v1.dat"
_INSTALL = "pip install 'face2paint[eval]'"


def model_folder() -> Path:
    """The `models` folder of the installed face-recognition-models, found without importing it."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the identity metric needs face-recognition-models: {_INSTALL}")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def model_files() -> tuple[Path, Path]:
    """(5-point shape predictor, ResNet descriptor) from the installed face-recognition-models."""
    folder = model_folder()
    files = folder / SHAPE_PREDICTOR, folder / RESNET
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise RuntimeError(f"face-recognition-models in {folder} lacks {missing}; reinstall it: {_INSTALL}")
    return files


class FaceDescriptor:
    """dlib's 5-point landmarks inside a given face box, then its ResNet descriptor of the
    aligned 150 x 150 chip. Each image gets its own landmarks: a face that a stylizer distorted
    is described as a recogniser would see it."""

    def __init__(self):
        try:
            import dlib
        except ImportError as e:
            raise RuntimeError(f"the identity metric needs dlib: {_INSTALL} ({e})") from None
        predictor, resnet = model_files()
        self._dlib = dlib
        self._shape = dlib.shape_predictor(str(predictor))
        self._net = dlib.face_recognition_model_v1(str(resnet))

    def describe(self, rgb: np.ndarray, box) -> np.ndarray:
        """128-D descriptor of the face inside `box` (x1, y1, x2, y2) of an RGB uint8 image."""
        rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) RGB image, got {rgb.shape}")
        x1, y1, x2, y2 = (int(round(float(v))) for v in box)
        rect = self._dlib.rectangle(x1, y1, x2, y2)
        shape = self._shape(rgb, rect)
        return np.asarray(self._net.compute_face_descriptor(rgb, shape, 0), np.float64)

    def distance(self, rgb_a: np.ndarray, rgb_b: np.ndarray, box, box_b=None) -> float:
        """Euclidean distance between the descriptors of one face in two images (the same box
        in both unless `box_b` is given)."""
        a = self.describe(rgb_a, box)
        b = self.describe(rgb_b, box if box_b is None else box_b)
        return float(np.linalg.norm(a - b))


def same_person(distance: float, threshold: float = SAME_PERSON_BELOW) -> bool:
    return distance < threshold
