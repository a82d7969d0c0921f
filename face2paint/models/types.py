"""Plain data exchanged between pipeline stages (and, serialised, between workers)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# CelebAMask-HQ label ids, as the BiSeNet parsers emit them.
LABELS = (
    "background", "skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear",
    "ear_r", "nose", "mouth", "u_lip", "l_lip", "neck", "neck_l", "cloth", "hair", "hat",
)
LABEL_ID = {name: i for i, name in enumerate(LABELS)}


@dataclass
class Face:
    """One detected face in image pixel coordinates.

    box is (x1, y1, x2, y2); landmarks is a (5, 2) float array in the order
    left eye, right eye, nose, mouth left, mouth right (image left/right).
    """

    box: tuple[float, float, float, float]
    landmarks: np.ndarray
    score: float

    def __post_init__(self) -> None:
        self.box = tuple(float(v) for v in self.box)  # type: ignore[assignment]
        self.landmarks = np.asarray(self.landmarks, dtype=np.float32).reshape(5, 2)
        self.score = float(self.score)

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    def to_dict(self) -> dict:
        return {
            "box": [round(v, 2) for v in self.box],
            "landmarks": [[round(float(x), 2), round(float(y), 2)] for x, y in self.landmarks],
            "score": round(self.score, 4),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Face":
        return cls(box=tuple(d["box"]), landmarks=np.array(d["landmarks"]), score=d["score"])


@dataclass
class Params:
    """The face2paint knobs. Defaults are the recipe's published values."""

    alignment_threshold: float = 0.9
    parsing_smooth: bool = True
    skin_smoothing_factor: float = 0.6
    eye_enhance_ratio: float = 1.4
    post_sharpen_weight: float = 0.3
    # Faces whose eye distance is below this many pixels are left to the background pass.
    min_face_eye_distance: float = 12.0
    face_size: int = 512
    # Faces are stylized at their own resolution in the photo (rounded up), at least this: at
    # 128 small faces lost structure (26 vs 22 of 86 crowd faces distorted), 256 costs half of 512.
    face_min_size: int = 256
    # Longest side the background is stylized at (then resized back to the image's size).
    background_max_side: int = 1024
    # Move the stylized skin's colour back toward the photo's (CIELAB, under the parsing skin
    # mask), keeping the model's shading; glasses and beards get their structure back where the
    # face model smudged them (models/keep.py). Face models whiten dark skin without it.
    skin_tone: bool = True
    # Faces small in the photo (eyes closer than 32 px): blend the input's lightness structure
    # back into the stylized face (models/keep.py), since a face model draws a featureless face
    # from an upscaled blur.
    small_face_structure: bool = True
    # Face models only (registry kind "face"): find the five landmarks again on the stylized
    # crop and warp it gently (thin-plate spline, border fixed, displacement capped) so eyes,
    # nose and mouth corners return to the input's positions (models/features.py). Off by
    # default: it moves RetinaFace's landmarks back, but dlib's independent landmarks on the
    # same outputs move further away on large faces (docs/QUALITY.md, 2026-12-02 realign).
    features_in_place: bool = False


@dataclass
class AlignedFace:
    """A face warped to the canonical crop, with what paste-back needs to undo it."""

    face: Face
    crop: np.ndarray  # (S, S, 3) uint8 RGB
    matrix: np.ndarray  # (2, 3) image -> crop
    inverse: np.ndarray  # (2, 3) crop -> image
    landmarks: np.ndarray  # (5, 2) in crop coordinates
    labels: np.ndarray | None = None  # (S, S) uint8 CelebAMask-HQ ids
    flags: dict = field(default_factory=dict)  # e.g. glasses, heavy_makeup, harsh_light
    refined: np.ndarray | None = None  # crop after the region refiners: the generator's input
    paste_mask: np.ndarray | None = None  # (S, S) float32 0..1, feathered
    keep: np.ndarray | None = None  # (S, S, 3) uint8: skin, glasses, beard regions (models/keep.py)
    skin_lab: np.ndarray | None = None  # (3,) mean CIELAB of the input's skin
