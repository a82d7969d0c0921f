"""Skin tone kept or not: CIEDE2000 between the mean skin colour of a face before and after
stylization, in CIELAB (D65), under the face parser's skin mask.

The mask comes from the input face (the parser is not asked to find skin on an anime drawing),
and both images are warped into the same aligned crop, so the same skin pixels are compared.
The mask is eroded a little so that pixels at the edge of the skin (hair, background, the lips'
outline) do not enter either mean. Needs scikit-image (the eval extra).
"""

from __future__ import annotations

import cv2
import numpy as np

from ..models.face import align_face
from ..models.parse import label_mask
from ..models.types import Face

# Fewer skin pixels than this (after erosion) and a mean colour says little: no value.
MIN_SKIN_PIXELS = 200
# Erosion of the skin mask as a fraction of the crop side (about 5 px at 512).
ERODE_FRACTION = 0.01


def _color():
    try:
        from skimage import color
    except ImportError as e:
        raise RuntimeError(f"the skin-tone metric needs scikit-image: pip install 'face2paint[eval]' ({e})") from None
    return color


def mean_lab(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean CIELAB colour of the pixels where `mask` is set (weights 0..1 allowed)."""
    w = np.asarray(mask, np.float64)
    if w.shape != rgb.shape[:2]:
        raise ValueError(f"mask {w.shape} does not match image {rgb.shape[:2]}")
    total = w.sum()
    if total <= 0:
        raise ValueError("empty mask")
    lab = _color().rgb2lab(np.asarray(rgb, np.uint8))
    return (lab * w[..., None]).reshape(-1, 3).sum(axis=0) / total


def delta_e00(lab1, lab2) -> float:
    """CIEDE2000 colour difference of two CIELAB colours."""
    return float(_color().deltaE_ciede2000(np.asarray(lab1, np.float64), np.asarray(lab2, np.float64)))


def skin_tone_shift(rgb_in: np.ndarray, rgb_out: np.ndarray, skin: np.ndarray) -> float | None:
    """CIEDE2000 between the mean skin colours of two images of one size, under a 0/1 mask
    (eroded here); None when too little skin is left to measure."""
    skin = (np.asarray(skin) > 0.5).astype(np.uint8)
    side = min(skin.shape)
    k = max(1, int(round(ERODE_FRACTION * side))) * 2 + 1
    skin = cv2.erode(skin, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    if int(skin.sum()) < MIN_SKIN_PIXELS:
        return None
    return delta_e00(mean_lab(rgb_in, skin), mean_lab(rgb_out, skin))


def face_skin_tone_shift(rgb_in: np.ndarray, rgb_out: np.ndarray, face: Face, parser,
                         size: int = 512) -> float | None:
    """Skin tone shift of one face of a photo and its stylized version (same size): both are
    aligned with the input face's transform, the input crop is parsed, and its skin compared."""
    if rgb_in.shape != rgb_out.shape:
        raise ValueError(f"input {rgb_in.shape} and output {rgb_out.shape} differ in size")
    a_in = align_face(rgb_in, face, size)
    a_out = align_face(rgb_out, face, size)
    labels = parser.parse(a_in.crop, a_in.landmarks)
    return skin_tone_shift(a_in.crop, a_out.crop, label_mask(labels, ("skin",)))
