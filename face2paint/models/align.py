"""Face alignment: a similarity transform of the five landmarks to a canonical template.

The template is a loose, FFHQ-like portrait crop (hair and chin included, eyes level): that is
what both the CelebAMask-HQ parser and the AnimeGANv2 face-portrait generators were trained on.
A similarity transform (rotation, uniform scale, translation) corrects roll without shearing the
face; its inverse is kept so the stylized crop can be warped back into the photo. This module is
the maths; `face.FaceHelper` runs the round trip (warp, paste back) with it.
"""

from __future__ import annotations

import cv2
import numpy as np

from .types import Face

# The widely used 5-point template of 112x112 ArcFace crops (left eye, right eye, nose,
# mouth left, mouth right). Only its proportions are used.
_ARCFACE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)

# Inter-ocular distance as a fraction of the crop side. FFHQ crops are about 4 eye distances
# wide; 0.235 gives a crop of about 2.2 face boxes, what the parser expects.
EYE_DISTANCE_FRACTION = 0.235
# The eye midpoint sits slightly above the crop centre (FFHQ centres on eyes + 0.1 eye-to-mouth).
EYES_Y_FRACTION = 0.455


def canonical_template(size: int = 512, eye_fraction: float | None = None) -> np.ndarray:
    """The five target points for a size x size aligned crop; `eye_fraction` (inter-ocular
    distance / crop side) frames it looser or tighter than EYE_DISTANCE_FRACTION, per face model."""
    eyes_mid = _ARCFACE_112[:2].mean(axis=0)
    eye_dist = np.linalg.norm(_ARCFACE_112[1] - _ARCFACE_112[0])
    scale = (eye_fraction or EYE_DISTANCE_FRACTION) * size / eye_dist
    target_mid = np.array([size / 2.0, EYES_Y_FRACTION * size])
    return ((_ARCFACE_112 - eyes_mid) * scale + target_mid).astype(np.float32)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (Umeyama, no reflection) mapping src points onto dst; 2x3."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    s_c, d_c = src - mu_s, dst - mu_d
    var_s = (s_c**2).sum() / len(src)
    cov = d_c.T @ s_c / len(src)
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1
    rot = u @ np.diag(d) @ vt
    scale = (sig * d).sum() / var_s if var_s > 0 else 1.0
    m = np.zeros((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def invert(matrix: np.ndarray) -> np.ndarray:
    return cv2.invertAffineTransform(np.asarray(matrix, dtype=np.float64))


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return (pts @ matrix[:, :2].T + matrix[:, 2]).astype(np.float32)


def eye_distance(face: Face) -> float:
    return float(np.linalg.norm(face.landmarks[1] - face.landmarks[0]))
