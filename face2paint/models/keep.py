"""Keep what makes the person through a face model: skin tone, glasses, beard.

Face models trained on one look repaint every face into it: AnimeGANv3 JP_face whitens dark
skin (CIEDE2000 30 on a brown-skinned man), smudges a beard into grey and merges glasses into
the eyes. The stylized crop is corrected here, in crop coordinates, with the parsing regions of
the input crop (computed at the parse stage, `keep_masks`, and carried with the face batch):

- skin tone (Params.skin_tone): the mean CIELAB colour of the stylized skin is moved onto the
  input's mean skin colour under the parsing skin mask (skin, nose, ears, neck), by adding one
  offset per channel. An offset keeps the model's shading, line art and highlights (its
  variation around the mean) and brings back the person's lightness and hue.
- glasses (the parser's eye_g region): where the input has thin dark structures (the frames, by
  a black-hat filter), the input's darker lightness and its colour, so frames the model erased
  come back; the eyes behind the lenses stay as the model painted them.
- beard (dark, textured pixels of the lower face that the parser did not call lips, mouth or
  hair): a gentler treatment, a blend towards an edge-preserving smoothing of the input, so the
  beard keeps its shape and colour with a painted look instead of the model's grey smudge.

- small faces (`small_face_structure`, eye distance in the photo below SMALL_FACE_EYE_PX[1]):
  the crop is an upscaled blur and the face model draws a featureless face (eyes as dashes, no
  nose, the mouth a blob) that at the face's own size in the photo reads as no face at all.
  The input's lightness structure (its variation around the skin's mean: eye sockets, nose and
  mouth shading) is blended back into the stylized face, a larger share the smaller the face;
  colour and mean lightness stay the stylized (skin-tone kept) ones.

Expressions need nothing here: the model paints the crop's own geometry (features.py moves
features the model shifted back into place).
"""

from __future__ import annotations

import cv2
import numpy as np

from .parse import label_mask

SKIN_LABELS = ("skin", "nose", "l_ear", "r_ear", "neck")
# Share of the way the glasses and beard regions go back towards the input.
GLASSES_KEEP = 0.85
BEARD_KEEP = 0.7
# Small faces: the share of the input's lightness structure blended back, SMALL_FACE_KEEP at an
# eye distance (photo pixels) of SMALL_FACE_EYE_PX[0] or less, none at SMALL_FACE_EYE_PX[1].
SMALL_FACE_EYE_PX = (12.0, 32.0)
SMALL_FACE_KEEP = 0.6
# Beard: lower-face pixels this much darker (CIELAB L) than the cheeks ...
BEARD_DARKER_L = 18.0
# ... covering at least this share of the lower face, else there is no beard (stubble shadow).
BEARD_MIN_FRACTION = 0.3


def _lab(rgb: np.ndarray) -> np.ndarray:
    """CIELAB (L 0..100, a and b about -127..127), float32, from RGB uint8."""
    return cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)


def _rgb(lab: np.ndarray) -> np.ndarray:
    rgb = cv2.cvtColor(lab.astype(np.float32), cv2.COLOR_LAB2RGB)
    return np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _soft(mask: np.ndarray, sigma: float) -> np.ndarray:
    m = mask.astype(np.float32)
    return np.clip(cv2.GaussianBlur(m, (0, 0), sigma), 0, 1) if m.any() else m


def _disk(r: int) -> np.ndarray:
    r = max(1, int(r))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def _close_coarse(mask: np.ndarray, radius: float, factor: int = 4) -> np.ndarray:
    """Closing with a disk of `radius`, done at 1/`factor` of the resolution and kept a
    superset of `mask`: an elliptic kernel costs in proportion to its height at every pixel
    (a 41 px disk on a 512 crop: ~60 times the coarse closing), and the result is feathered
    by several pixels afterwards, so its coarser outline does not show."""
    h, w = mask.shape
    if radius < 4 * factor or min(h, w) < 8 * factor:
        return cv2.morphologyEx(mask, cv2.MORPH_CLOSE, _disk(radius))
    small = cv2.resize(mask.astype(np.float32), (w // factor, h // factor), interpolation=cv2.INTER_AREA)
    closed = cv2.morphologyEx((small >= 0.5).astype(np.uint8), cv2.MORPH_CLOSE, _disk(radius / factor))
    up = cv2.resize(closed.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR) >= 0.5
    return (up | (mask > 0)).astype(np.uint8)


def beard_mask(crop: np.ndarray, labels: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """0/1 uint8: the beard, or all zeros. Skin below the nose, darker than the cheeks by
    BEARD_DARKER_L over at least BEARD_MIN_FRACTION of it."""
    s = crop.shape[0]
    face = label_mask(labels, ("skin", "nose", "mouth", "u_lip", "l_lip"))
    cheeks = label_mask(labels, ("skin",)) > 0
    if face.sum() < 100 or cheeks.sum() < 100:
        return np.zeros(labels.shape, np.uint8)
    lm = np.asarray(landmarks, np.float64).reshape(5, 2)
    nose_y, eye_y = lm[2, 1], lm[:2, 1].mean()
    L = _lab(crop)[..., 0]
    # Cheek lightness: skin between the eyes and the nose tip (where beards do not grow).
    rows = np.zeros_like(cheeks)
    rows[int(max(0, eye_y)):int(max(0, nose_y))] = True
    ref = cheeks & rows
    if ref.sum() < 50:
        return np.zeros(labels.shape, np.uint8)
    cheek_l = float(np.median(L[ref]))
    # Only what the parser calls skin: beards are parsed as skin, while the shadow under the
    # chin is neck and a dark collar cloth (both gave Grace Hopper a beard).
    region = cv2.dilate(label_mask(labels, ("skin",)), _disk(0.005 * s)) > 0
    region &= label_mask(labels, ("mouth", "u_lip", "l_lip", "hair", "eye_g", "neck", "cloth")) == 0
    region[: int(max(0, nose_y + 0.25 * (lm[3:, 1].mean() - nose_y)))] = False
    dark = region & (L < cheek_l - BEARD_DARKER_L)
    dark = cv2.morphologyEx(dark.astype(np.uint8), cv2.MORPH_OPEN, _disk(0.006 * s))
    dark = cv2.morphologyEx(dark, cv2.MORPH_CLOSE, _disk(0.015 * s))
    lower = region.sum()
    if lower == 0 or dark.sum() < BEARD_MIN_FRACTION * lower:
        return np.zeros(labels.shape, np.uint8)
    return dark


def keep_masks(crop: np.ndarray, labels: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """(S, S, 3) uint8 masks 0..255 of the input crop: skin, glasses, beard (feathered)."""
    s = crop.shape[0]
    sigma = max(1.0, 0.008 * s)
    skin = label_mask(labels, SKIN_LABELS)
    glasses = cv2.dilate(label_mask(labels, ("eye_g",)), _disk(0.006 * s))
    beard = beard_mask(crop, labels, landmarks)
    skin = skin & (beard == 0)
    out = np.stack([_soft(m, sigma) for m in (skin, glasses, beard)], axis=-1)
    return np.round(out * 255).astype(np.uint8)


def skin_mean_lab(crop: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Mean CIELAB of the input's skin (the core of the skin mask); NaN when there is none."""
    core = keep[..., 0] > 200
    if core.sum() < 100:
        return np.full(3, np.nan, np.float32)
    return _lab(crop)[core].mean(axis=0).astype(np.float32)


def apply_keep(stylized: np.ndarray, reference: np.ndarray, keep: np.ndarray,
               skin_lab: np.ndarray | None, skin_tone: bool = True) -> np.ndarray:
    """The stylized crop with the person's skin tone, glasses and beard brought back.

    reference: the generator's input crop (same size); keep: keep_masks' masks; skin_lab: the
    input's mean skin colour (skin_mean_lab of the unrefined crop).
    """
    if not keep.any():
        return stylized
    m = keep.astype(np.float32) / 255.0
    skin, glasses, beard = m[..., 0], m[..., 1], m[..., 2]
    lab = _lab(stylized)
    ref = None
    if skin_tone and skin_lab is not None and np.isfinite(skin_lab).all():
        core = skin > 0.8
        if core.sum() >= 100:
            shift = np.asarray(skin_lab, np.float32) - lab[core].mean(axis=0)
            lab += skin[..., None] * shift
            lab[..., 0] = np.clip(lab[..., 0], 0, 100)
    if glasses.any():
        # Only the frames: thin structures darker than their surroundings in the input (a
        # black-hat), so the model's own eyes behind the lenses stay as it drew them.
        ref = _lab(reference)
        s = reference.shape[0]
        hat = cv2.morphologyEx(ref[..., 0], cv2.MORPH_BLACKHAT, _disk(0.012 * s))
        frames = np.clip((hat - 4.0) / 10.0, 0, 1) * glasses
        darker = np.minimum(lab[..., 0], ref[..., 0])
        w = GLASSES_KEEP * frames
        lab[..., 0] = lab[..., 0] * (1 - w) + darker * w
        lab[..., 1:] = lab[..., 1:] * (1 - w[..., None]) + ref[..., 1:] * w[..., None]
    if beard.any():
        s = reference.shape[0]
        smooth = cv2.bilateralFilter(reference, 0, 25, max(2.0, 0.01 * s))
        b = _lab(smooth)
        w = (BEARD_KEEP * beard)[..., None]
        lab = lab * (1 - w) + b * w
    return _rgb(lab)


def small_face_share(eye_px: float) -> float:
    lo, hi = SMALL_FACE_EYE_PX
    if not np.isfinite(eye_px):
        return 0.0
    return SMALL_FACE_KEEP * float(np.clip((hi - eye_px) / (hi - lo), 0.0, 1.0))


def small_face_structure(stylized: np.ndarray, reference: np.ndarray, keep: np.ndarray,
                         eye_px: float) -> np.ndarray:
    """The stylized crop with the input's lightness structure blended back on a small face
    (see the module docstring); unchanged for faces of SMALL_FACE_EYE_PX[1] px and more."""
    share = small_face_share(eye_px)
    if share <= 0 or not keep.any():
        return stylized
    s = reference.shape[0]
    skin = keep[..., 0] > 127
    if skin.sum() < 100:
        return stylized
    # The face: the skin with its holes (eyes, brows, nose, mouth) closed, feathered.
    face = _close_coarse(skin.astype(np.uint8), 0.08 * s)
    w = share * _soft(face, max(1.0, 0.015 * s))
    lab = _lab(stylized)
    ref_l = _lab(reference)[..., 0]
    core = skin
    detail_ref = ref_l - float(ref_l[core].mean())
    detail_sty = lab[..., 0] - float(lab[..., 0][core].mean())
    lab[..., 0] = np.clip(lab[..., 0] + w * (detail_ref - detail_sty), 0, 100)
    return _rgb(lab)
