"""Per-face metrics of what users see, for `face2paint eval`: is it still the same person
(identity.py), is the skin still its colour (skin_tone.py), and did the features stay in place by
a second landmark model, independent of the pipeline's detector (dlib_landmarks.py). All need
the eval extra."""

from __future__ import annotations

import numpy as np

from ..models.types import Face
from .dlib_landmarks import DlibLandmarks
from .identity import FaceDescriptor, same_person
from .skin_tone import face_skin_tone_shift


class FaceMetrics:
    """Identity distance and skin-tone shift of one face between a photo and its stylized copy
    (same size). The skin mask comes from `parser` (the pipeline's own) on the input face."""

    def __init__(self, parser, descriptor: FaceDescriptor | None = None,
                 landmarks: DlibLandmarks | None = None):
        self.parser = parser
        self.descriptor = descriptor or FaceDescriptor()
        self.landmarks = landmarks or DlibLandmarks()

    def measure(self, rgb_in: np.ndarray, rgb_out: np.ndarray, face: Face) -> dict:
        from .evaluate import is_distorted

        d = self.descriptor.distance(rgb_in, rgb_out, face.box)
        de = face_skin_tone_shift(rgb_in, rgb_out, face, self.parser)
        nle = self.landmarks.nle(rgb_in, rgb_out, face.box)
        return {"identity": round(d, 4), "same_person": same_person(d),
                "skin_de": None if de is None else round(de, 3),
                "dlib_nle": None if nle is None else round(nle, 4),
                "dlib_distorted": is_distorted(nle)}


def load_face_metrics(parser) -> tuple[FaceMetrics | None, str | None]:
    """The metrics, or None and the reason (the eval extra is not installed)."""
    try:
        return FaceMetrics(parser), None
    except RuntimeError as e:
        return None, str(e)
