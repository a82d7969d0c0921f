"""Paste-back and post-processing: the last two steps of the recipe."""

from __future__ import annotations

import cv2
import numpy as np


def paste_face(
    background: np.ndarray, face: np.ndarray, inverse: np.ndarray, mask: np.ndarray
) -> np.ndarray:
    """Warp a stylized S x S face crop back into the background through a feathered mask.

    Only the face's bounding rectangle in the image is warped and blended, so many faces on a
    large photo cost little; faces cut by the image border are clipped to it.
    """
    h, w = background.shape[:2]
    s = face.shape[0]
    corners = np.array([[0, 0], [s, 0], [0, s], [s, s]], dtype=np.float64)
    pts = corners @ inverse[:, :2].T + inverse[:, 2]
    x0, y0 = np.floor(pts.min(axis=0)).astype(int)
    x1, y1 = np.ceil(pts.max(axis=0)).astype(int)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if x1 <= x0 or y1 <= y0:
        return background
    shifted = inverse.copy()
    shifted[:, 2] -= (x0, y0)
    size = (x1 - x0, y1 - y0)
    warped = cv2.warpAffine(face, shifted, size, flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT101)
    alpha = cv2.warpAffine(mask.astype(np.float32), shifted, size, flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)[..., None]
    out = background.copy()
    roi = out[y0:y1, x0:x1].astype(np.float32)
    out[y0:y1, x0:x1] = np.clip(roi * (1 - alpha) + warped.astype(np.float32) * alpha + 0.5, 0, 255).astype(np.uint8)
    return out


def unsharp(image: np.ndarray, weight: float, sigma: float = 1.2) -> np.ndarray:
    """Unsharp mask: image + weight * (image - blur). weight 0 returns the image unchanged."""
    if weight <= 0:
        return image
    blurred = cv2.GaussianBlur(image, (0, 0), sigma)
    return cv2.addWeighted(image, 1 + weight, blurred, -weight, 0)


def match_colour(face: np.ndarray, background: np.ndarray, inverse: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Shift the stylized face's chroma (Lab a, b means under the mask) onto the stylized
    background's in the same region, so a face stylized on its own (where the generator may pick
    another tint, e.g. on grey or masked faces) shows no colour seam. Lightness and structure are
    the face pass's own."""
    s = face.shape[0]
    weight = mask.astype(np.float32)
    total = float(weight.sum())
    if total < 1:
        return face
    matrix = cv2.invertAffineTransform(inverse)
    under = cv2.warpAffine(background, matrix, (s, s), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
    lab_face = cv2.cvtColor(face, cv2.COLOR_RGB2LAB).astype(np.float32)
    lab_bg = cv2.cvtColor(under, cv2.COLOR_RGB2LAB).astype(np.float32)
    for c in (1, 2):
        shift = ((lab_bg[..., c] - lab_face[..., c]) * weight).sum() / total
        lab_face[..., c] += shift
    return cv2.cvtColor(np.clip(lab_face, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)


def compose(
    background: np.ndarray,
    faces: list[np.ndarray],
    inverses: list[np.ndarray],
    masks: list[np.ndarray],
    sharpen_weight: float,
) -> np.ndarray:
    """Paste every stylized face (colour-matched) into the stylized background, then sharpen."""
    out = background
    for face, inverse, mask in zip(faces, inverses, masks):
        out = paste_face(out, match_colour(face, background, inverse, mask), inverse, mask)
    return unsharp(out, sharpen_weight)
