"""Face parsing: per-pixel CelebAMask-HQ labels for an aligned face crop, and soft region masks.

Two parsers share one interface, ``parse(crop_rgb, landmarks) -> (S, S) uint8 label ids``:

- ``BiSeNetParser`` runs the BiSeNetV2 CelebAMask-HQ 448 int8 TFLite model.
- ``LandmarkParser`` needs no weights: it draws plausible regions from the five landmarks, so
  the refine stage still has skin, eyes, brows, nose and lips to work with on a fresh machine.

Label ids follow ``types.LABELS`` (CelebAMask-HQ order; checked against the model's outputs on
real faces). ``l_``/``r_`` are the *person's* left/right, so ``l_eye`` is on the image's right
for a frontal, unmirrored photo.
"""

from __future__ import annotations

import threading

import cv2
import numpy as np

from .sessions import LiteRTSession
from .types import LABEL_ID

_ID = LABEL_ID
# Left/right label pairs (person's left, person's right).
_SIDED = (("l_brow", "r_brow"), ("l_eye", "r_eye"), ("l_ear", "r_ear"))


def _eye_frame(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Eye midpoint, unit vector along the eyes (image left -> right), unit 'down' vector, and
    the eye distance, from the five landmarks."""
    lm = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    mid = (lm[0] + lm[1]) / 2.0
    ex = lm[1] - lm[0]
    d = float(np.linalg.norm(ex))
    if d < 1e-6:
        ex, d = np.array([1.0, 0.0]), 1.0
    ex = ex / d
    ey = np.array([-ex[1], ex[0]])  # image y grows downwards, so this points from eyes to chin
    return mid, ex, ey, d


def fix_sides(labels: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """Make left/right labels consistent with the face's midline.

    The int8 model often gets the *class* (eye, brow, ear) right but the *side* wrong (both brows
    as l_brow, swapped eyes under white face paint, mixed pixels within one eye). The side is
    pure geometry, so take it from the landmarks: pixels on the image-left of the perpendicular
    bisector of the eyes belong to the person's right.
    """
    mid, ex, _, _ = _eye_frame(landmarks)
    out = labels.copy()
    for left, right in _SIDED:
        sel = (labels == _ID[left]) | (labels == _ID[right])
        if not sel.any():
            continue
        ys, xs = np.nonzero(sel)
        side = (xs - mid[0]) * ex[0] + (ys - mid[1]) * ex[1]
        out[ys, xs] = np.where(side < 0, _ID[right], _ID[left]).astype(labels.dtype)
    return out


def _normalise_exposure(rgb: np.ndarray) -> np.ndarray:
    """Brighten badly under-exposed crops before parsing.

    The parser was trained on well-exposed CelebA-HQ portraits; on a face lit at a tenth of
    normal brightness it finds skin and hair but no eyes, brows or lips. A gamma that brings the
    central region's median luminance to mid-grey, then CLAHE on the lightness for the local
    contrast the gamma cannot restore, recovers them (tk_lowlight_trio: brows, glasses and lips
    on all three faces instead of none). Normally exposed crops are left untouched.
    """
    h, w = rgb.shape[:2]
    centre = rgb[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4]
    lum = cv2.cvtColor(centre, cv2.COLOR_RGB2GRAY)
    med = float(np.median(lum))
    if med >= 70.0:
        return rgb
    med = max(med, 2.0)
    gamma = np.log(110.0 / 255.0) / np.log(med / 255.0)  # maps med -> 110
    lut = (255.0 * (np.arange(256) / 255.0) ** gamma).clip(0, 255).astype(np.uint8)
    lab = cv2.cvtColor(cv2.LUT(rgb, lut), cv2.COLOR_RGB2LAB)
    lab[..., 0] = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(lab[..., 0])
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)


class BiSeNetParser:
    """BiSeNetV2 (CelebAMask-HQ, 448x448, int8 TFLite) face parser.

    Input [1,448,448,3] float32 RGB scaled to [-1, 1]; output [448,448] int64 class ids with the
    argmax already inside the graph. The crop must be an aligned portrait including hair (what
    ``align.align_face`` produces).
    """

    input_size = 448

    def __init__(self, session: LiteRTSession, model_id: str = "bisenetv2-celebamaskhq-448-int8"):
        self.model_id = model_id
        self._interp = session.interpreter()
        inp = self._interp.get_input_details()[0]
        out = self._interp.get_output_details()[0]
        self._in_index, self._out_index = inp["index"], out["index"]
        shape = tuple(int(v) for v in inp["shape"])
        if shape != (1, self.input_size, self.input_size, 3):
            raise ValueError(f"{model_id}: unexpected input shape {shape}")
        # A TFLite interpreter is not re-entrant; a worker may share one parser between threads.
        self._lock = threading.Lock()

    def parse(self, crop_rgb: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        if crop_rgb.ndim != 3 or crop_rgb.shape[2] != 3:
            raise ValueError("parse expects an (H, W, 3) RGB crop")
        h, w = crop_rgb.shape[:2]
        n = self.input_size
        rgb = _normalise_exposure(np.ascontiguousarray(crop_rgb, dtype=np.uint8))
        interp = cv2.INTER_AREA if min(h, w) > n else cv2.INTER_LINEAR
        x = cv2.resize(rgb, (n, n), interpolation=interp).astype(np.float32)
        x = (x - 127.5) / 127.5
        with self._lock:
            self._interp.set_tensor(self._in_index, x[None])
            self._interp.invoke()
            ids = self._interp.get_tensor(self._out_index)
        ids = np.asarray(ids).reshape(n, n).clip(0, 255).astype(np.uint8)
        labels = cv2.resize(ids, (w, h), interpolation=cv2.INTER_NEAREST)
        return fix_sides(labels, landmarks)


class LandmarkParser:
    """Weight-free fallback: plausible face regions drawn from the five landmarks.

    Proportions are relative to the eye distance ``d`` and the eye-to-mouth distance ``h``, in a
    frame that follows the eye line, so they hold for any roll and scale. Hair is unknown and
    left as background (paste-back then relies on the face region alone).
    """

    model_id = "landmark-regions"
    # Drawn regions cannot tell glasses, makeup or lighting apart: don't derive flags from them.
    supports_flags = False

    def parse(self, crop_rgb: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        hgt, wid = crop_rgb.shape[:2]
        lm = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
        mid, ex, ey, d = _eye_frame(lm)
        mouth_mid = (lm[3] + lm[4]) / 2.0
        h = float(np.dot(mouth_mid - mid, ey))
        if h < 0.3 * d:  # degenerate landmarks: fall back to typical proportions
            h = 0.9 * d
        labels = np.zeros((hgt, wid), np.uint8)

        def to_img(pts_local: np.ndarray, origin: np.ndarray) -> np.ndarray:
            pts = origin + pts_local[:, :1] * ex + pts_local[:, 1:] * ey
            # fillPoly with 4 fractional bits, for sub-pixel accurate small shapes.
            return np.round(pts * 16).astype(np.int32)

        def ellipse(origin, ax, ay, t0=0.0, t1=2 * np.pi, n=64):
            t = np.linspace(t0, t1, n)
            return np.stack([ax * np.cos(t), ay * np.sin(t)], axis=1), origin

        def fill(shape, label):
            pts, origin = shape
            cv2.fillPoly(labels, [to_img(pts, origin)], int(_ID[label]), lineType=cv2.LINE_8, shift=4)

        # Face outline (fitted to BiSeNet skin on aligned portraits): about 2.1 eye distances wide
        # at the eyes, from the forehead one eye-mouth distance above the eyes to the chin 1.85
        # below them; the lower half is longer and narrows towards the chin (an egg, not an oval).
        centre = mid + 0.3 * h * ey
        t = np.linspace(0.0, 2 * np.pi, 96)
        lower = np.sin(t) > 0
        ax = 1.07 * d * np.cos(t) * np.where(lower, 1.0 - 0.18 * np.sin(t) ** 2, 1.0)
        ay = np.sin(t) * np.where(lower, 1.55 * h, 1.3 * h)
        fill((np.stack([ax, ay], axis=1), centre), "skin")

        # Nose: a tapered wedge from between the eyes down to just under the tip, wide at the alae.
        nose = lm[2]
        top = mid
        n_loc = np.array([np.dot(nose - top, ex), np.dot(nose - top, ey)])
        wedge = np.array(
            [
                [-0.08 * d, 0.0],
                [0.08 * d, 0.0],
                [n_loc[0] + 0.17 * d, n_loc[1] - 0.14 * d],
                [n_loc[0] + 0.28 * d, n_loc[1] + 0.03 * d],
                [n_loc[0] + 0.14 * d, n_loc[1] + 0.12 * d],
                [n_loc[0] - 0.14 * d, n_loc[1] + 0.12 * d],
                [n_loc[0] - 0.28 * d, n_loc[1] + 0.03 * d],
                [n_loc[0] - 0.17 * d, n_loc[1] - 0.14 * d],
            ]
        )
        fill((wedge, top), "nose")

        # Lips: an ellipse through the mouth corners, split along the corner line; the lower lip
        # is fuller than the upper one.
        ml, mr = lm[3], lm[4]
        mc = (ml + mr) / 2.0
        half_w = 0.5 * float(np.linalg.norm(mr - ml))
        # Upper half of the local frame is negative y (towards the eyes).
        fill(ellipse(mc, half_w, 0.11 * d, np.pi, 2 * np.pi), "u_lip")
        fill(ellipse(mc, half_w, 0.24 * d, 0.0, np.pi), "l_lip")

        # Eyes (person's right = image left = landmark 0) and brows (arcs above, slightly lateral).
        for i, (eye_label, brow_label, outward) in enumerate(
            (("r_eye", "r_brow", -1.0), ("l_eye", "l_brow", 1.0))
        ):
            eye = lm[i]
            fill(ellipse(eye, 0.17 * d, 0.085 * d), eye_label)
            brow_c = eye + outward * 0.04 * d * ex + 0.05 * d * ey  # arc centre under the brow
            outer = ellipse(brow_c, 0.31 * d, 0.38 * d, 1.15 * np.pi, 1.85 * np.pi, 24)[0]
            inner = ellipse(brow_c, 0.30 * d, 0.30 * d, 1.85 * np.pi, 1.15 * np.pi, 24)[0]
            fill((np.concatenate([outer, inner]), brow_c), brow_label)
        return labels


# ---------------------------------------------------------------------------------------------
# Soft region masks

_REGIONS = {
    "skin": ("skin",),
    "eyes": ("l_eye", "r_eye"),
    "brows": ("l_brow", "r_brow"),
    "glasses": ("eye_g",),
    "nose": ("nose",),
    "lips": ("u_lip", "l_lip"),
    "mouth": ("mouth",),
    "hair": ("hair",),
    "ears": ("l_ear", "r_ear"),
    "neck": ("neck",),
}
FACE_LABELS = ("skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "nose", "mouth", "u_lip",
         "l_lip", "l_ear", "r_ear")


def label_mask(labels: np.ndarray, names) -> np.ndarray:
    """uint8 0/1 mask of the pixels whose label is one of ``names`` (a lookup, not a loop)."""
    lut = np.zeros(256, np.uint8)
    for n in names:
        lut[_ID[n]] = 1
    return lut[labels]


def region_masks(labels: np.ndarray, smooth: bool = True, size_hint=None,
                 names=None) -> dict[str, np.ndarray]:
    """Float32 0..1 masks for the refine stage (paste-back's mask is `face.paste_mask`).

    Keys: skin, eyes, brows, glasses, nose, lips, mouth, hair, ears, neck, face.
    ``smooth`` (the recipe's ``parsing_smooth``) blurs every mask with a Gaussian whose sigma is
    relative to the crop size, so hard label edges never reach the refiners or the generator.
    ``size_hint`` ((h, w) or a side length) returns masks at that size (labels resized with
    nearest neighbour first), e.g. when labels were computed at a different resolution.
    ``names`` limits the result to those keys (`refine.masks_needed`): each mask is a blur of
    the whole crop, and refinement uses about half of them.
    """
    labels = np.asarray(labels)
    if labels.dtype != np.uint8:
        labels = labels.astype(np.uint8)
    if size_hint is not None:
        th, tw = (size_hint, size_hint) if np.isscalar(size_hint) else tuple(size_hint)[:2]
        if (th, tw) != labels.shape:
            labels = cv2.resize(labels, (int(tw), int(th)), interpolation=cv2.INTER_NEAREST)
    s = min(labels.shape)
    sigma = max(0.6, 0.004 * s)  # ~2 px at 512: softens the label staircase, keeps small parts

    masks: dict[str, np.ndarray] = {}
    wanted = None if names is None else set(names)
    for key, label_names in list(_REGIONS.items()) + [("face", FACE_LABELS)]:
        if wanted is not None and key not in wanted:
            continue
        m = label_mask(labels, label_names).astype(np.float32)
        if smooth and m.any():
            m = np.clip(cv2.GaussianBlur(m, (0, 0), sigma), 0.0, 1.0)
        masks[key] = m
    return masks
