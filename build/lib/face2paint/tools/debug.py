"""Pictures for looking at what the pipeline did (`face2paint stylize --debug`)."""

from __future__ import annotations

import cv2
import numpy as np

from ..models.types import LABELS, Face

# One colour per CelebAMask-HQ class (background black).
PALETTE = np.array(
    [
        [0, 0, 0], [255, 204, 153], [102, 51, 0], [153, 76, 0], [0, 0, 255], [0, 128, 255],
        [0, 255, 255], [255, 0, 255], [204, 0, 204], [255, 255, 0], [255, 128, 0],
        [255, 0, 0], [204, 0, 102], [153, 0, 51], [0, 153, 0], [0, 204, 102],
        [128, 128, 128], [102, 0, 153], [0, 102, 102],
    ],
    dtype=np.uint8,
)
assert len(PALETTE) == len(LABELS)

_LANDMARK_COLOURS = [(255, 0, 0), (0, 0, 255), (0, 255, 0), (255, 0, 255), (255, 255, 0)]


def draw_faces(rgb: np.ndarray, faces: list[Face], threshold: float) -> np.ndarray:
    """Boxes (green when processed, grey when below the alignment threshold) and landmarks."""
    out = rgb.copy()
    thick = max(1, round(max(rgb.shape[:2]) / 500))
    for f in faces:
        colour = (0, 220, 0) if f.score >= threshold else (160, 160, 160)
        x1, y1, x2, y2 = (int(round(v)) for v in f.box)
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, thick)
        cv2.putText(out, f"{f.score:.2f}", (x1, max(0, y1 - 3)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.4 * thick, colour, thick)
        for (x, y), c in zip(f.landmarks, _LANDMARK_COLOURS):
            cv2.circle(out, (int(round(x)), int(round(y))), 2 * thick, c, -1)
    return out


def overlay_labels(crop: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    colour = PALETTE[labels]
    mixed = crop.astype(np.float32) * (1 - alpha) + colour.astype(np.float32) * alpha
    return np.where(labels[..., None] > 0, mixed, crop).astype(np.uint8)
