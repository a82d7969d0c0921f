"""Face parsing: BiSeNetV2 labels on real aligned faces, the landmark fallback, region masks.

BiSeNet tests need FACE2PAINT_MODEL_DIR and the shared photos; the landmark parser and mask
tests also run on synthetic input, so the fallback is covered on any machine.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest

from face2paint.models.align import canonical_template
from face2paint.models.face import FaceHelper
from face2paint.models.parse import (
    LandmarkParser,
    _normalise_exposure,
    fix_sides,
    region_masks,
)
from face2paint.models.types import LABEL_ID
from tests.helpers import aligned_face, bisenet

PLAIN = ["sk_astronaut.png", "fp_celebahq_116.png"]
FIVE = {"skin": ("skin",), "eyes": ("l_eye", "r_eye"), "brows": ("l_brow", "r_brow"),
        "nose": ("nose",), "lips": ("u_lip", "l_lip")}


def _count(labels, *names) -> int:
    return int(np.isin(labels, [LABEL_ID[n] for n in names]).sum())


def _centroid(labels, *names) -> np.ndarray:
    ys, xs = np.nonzero(np.isin(labels, [LABEL_ID[n] for n in names]))
    return np.array([xs.mean(), ys.mean()])






@lru_cache(maxsize=None)
def _bisenet_labels(name: str) -> np.ndarray:
    a = aligned_face(name)
    return bisenet().parse(a.crop, a.landmarks)


# --- BiSeNet on real faces --------------------------------------------------------------------

@pytest.mark.parametrize("name", PLAIN)
def test_bisenet_finds_face_parts_with_sensible_sizes(name):
    labels = _bisenet_labels(name)
    assert labels.shape == (512, 512) and labels.dtype == np.uint8
    assert 30_000 < _count(labels, "skin") < 150_000
    for side in ("l", "r"):
        assert 200 < _count(labels, f"{side}_eye") < 3_000
        assert 200 < _count(labels, f"{side}_brow") < 4_000
    assert 2_000 < _count(labels, "nose") < 12_000
    assert 1_000 < _count(labels, "u_lip", "l_lip") < 8_000
    assert _count(labels, "hair") > 20_000


@pytest.mark.parametrize("name", PLAIN)
def test_bisenet_parts_sit_at_the_landmarks(name):
    """Label order check: eyes at the eye landmarks, lips at the mouth, hair on top.

    CelebAMask-HQ's l_/r_ are the person's sides: r_eye is the image-left eye (landmark 0).
    """
    labels, lm = _bisenet_labels(name), aligned_face(name).landmarks
    assert np.linalg.norm(_centroid(labels, "r_eye") - lm[0]) < 25
    assert np.linalg.norm(_centroid(labels, "l_eye") - lm[1]) < 25
    assert _centroid(labels, "r_brow")[0] < _centroid(labels, "l_brow")[0]
    assert (_centroid(labels, "r_brow")[1] < lm[0][1]) and (_centroid(labels, "l_brow")[1] < lm[1][1])
    mouth = (lm[3] + lm[4]) / 2
    assert np.linalg.norm(_centroid(labels, "u_lip", "l_lip") - mouth) < 30
    assert _centroid(labels, "u_lip")[1] < _centroid(labels, "l_lip")[1]
    assert np.linalg.norm(_centroid(labels, "nose") - lm[2]) < 40
    # Hair on top: it starts above the skin (long hair pulls its centroid down, so not that).
    top = lambda *n: np.nonzero(np.isin(labels, [LABEL_ID[x] for x in n]))[0].min()  # noqa: E731
    assert top("hair") < top("skin") - 20


def test_bisenet_labels_glasses():
    labels = _bisenet_labels("df_sundar_glasses.jpg")
    lm = aligned_face("df_sundar_glasses.jpg").landmarks
    glasses = labels == LABEL_ID["eye_g"]
    assert glasses.sum() > 3_000
    # ... over the eyes, not somewhere else.
    for x, y in lm[:2]:
        assert glasses[int(y) - 10 : int(y) + 10, int(x) - 10 : int(x) + 10].mean() > 0.5


def test_bisenet_resizes_to_any_crop_size():
    a = aligned_face("sk_astronaut.png")
    import cv2

    small = cv2.resize(a.crop, (256, 256), interpolation=cv2.INTER_AREA)
    labels = bisenet().parse(small, a.landmarks / 2)
    assert labels.shape == (256, 256)
    assert _count(labels, "skin") > 7_000 and _count(labels, "l_eye", "r_eye") > 100


# --- side fixing and exposure, synthetic -------------------------------------------------------

def test_fix_sides_assigns_sides_by_the_eye_midline():
    lm = canonical_template(512)
    labels = np.zeros((512, 512), np.uint8)
    for x, y in lm[:2]:  # the model calling both eyes (and brows) "left"
        labels[int(y) - 5 : int(y) + 5, int(x) - 15 : int(x) + 15] = LABEL_ID["l_eye"]
        labels[int(y) - 35 : int(y) - 28, int(x) - 20 : int(x) + 20] = LABEL_ID["l_brow"]
    out = fix_sides(labels, lm)
    assert out[int(lm[0][1]), int(lm[0][0])] == LABEL_ID["r_eye"]
    assert out[int(lm[1][1]), int(lm[1][0])] == LABEL_ID["l_eye"]
    assert out[int(lm[0][1]) - 30, int(lm[0][0])] == LABEL_ID["r_brow"]
    assert (out == LABEL_ID["skin"]).sum() == 0 and (out > 0).sum() == (labels > 0).sum()


def test_exposure_normalisation_only_touches_dark_crops():
    rng = np.random.default_rng(0)
    normal = rng.integers(60, 200, (512, 512, 3), dtype=np.uint8)
    assert _normalise_exposure(normal) is normal
    dark = (normal // 12).astype(np.uint8)
    lifted = _normalise_exposure(dark)
    assert 80 < np.median(lifted) < 160


# --- landmark parser ---------------------------------------------------------------------------

def _assert_five_regions(labels, lm):
    for region, names in FIVE.items():
        assert _count(labels, *names) > 100, region
    assert _count(labels, "skin") > 20_000
    assert _count(labels, "hair") == 0  # unknown without a model
    assert labels[int(lm[0][1]), int(lm[0][0])] == LABEL_ID["r_eye"]
    assert labels[int(lm[1][1]), int(lm[1][0])] == LABEL_ID["l_eye"]
    assert np.linalg.norm(_centroid(labels, "u_lip", "l_lip") - (lm[3] + lm[4]) / 2) < 20


def test_landmark_parser_on_the_canonical_template():
    lm = canonical_template(512)
    labels = LandmarkParser().parse(np.zeros((512, 512, 3), np.uint8), lm)
    assert labels.shape == (512, 512) and labels.dtype == np.uint8
    _assert_five_regions(labels, lm)
    assert LandmarkParser.model_id == "landmark-regions"


def test_landmark_parser_follows_roll():
    lm = canonical_template(512).astype(np.float64)
    c = lm.mean(axis=0)
    t = np.deg2rad(25)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    lm_r = (lm - c) @ rot.T + c
    labels = LandmarkParser().parse(np.zeros((512, 512, 3), np.uint8), lm_r)
    _assert_five_regions(labels, lm_r)
    # Same shapes, just rotated: region sizes match the upright ones within a few percent.
    upright = LandmarkParser().parse(np.zeros((512, 512, 3), np.uint8), lm)
    for names in FIVE.values():
        assert abs(_count(labels, *names) - _count(upright, *names)) < 0.08 * _count(upright, *names) + 30


@pytest.mark.parametrize("name", PLAIN)
def test_landmark_parser_on_real_faces_overlaps_bisenet_skin(name):
    a = aligned_face(name)
    labels = LandmarkParser().parse(a.crop, a.landmarks)
    _assert_five_regions(labels, a.landmarks)
    try:
        ref = _bisenet_labels(name)
    except pytest.skip.Exception:
        return
    face_ids = [LABEL_ID[n] for n in ("skin", "l_eye", "r_eye", "l_brow", "r_brow", "nose",
                                      "u_lip", "l_lip", "mouth", "eye_g")]
    ours, theirs = labels > 0, np.isin(ref, face_ids)
    iou = (ours & theirs).sum() / (ours | theirs).sum()
    assert iou > 0.7, iou


# --- region masks ------------------------------------------------------------------------------

KEYS = {"skin", "eyes", "brows", "glasses", "nose", "lips", "mouth", "hair", "ears", "neck",
        "face"}
paste_mask = FaceHelper().paste_mask  # what paste-back uses, in its stored 1/255 steps


def _assert_paste_clear_of_border(paste):
    assert paste[0].max() == 0 and paste[-1].max() == 0
    assert paste[:, 0].max() == 0 and paste[:, -1].max() == 0


def test_region_masks_on_landmark_labels():
    lm = canonical_template(512)
    labels = LandmarkParser().parse(np.zeros((512, 512, 3), np.uint8), lm)
    hard = region_masks(labels, smooth=False)
    soft = region_masks(labels, smooth=True)
    assert set(hard) == KEYS and set(soft) == KEYS
    for k, m in soft.items():
        assert m.dtype == np.float32 and m.shape == (512, 512), k
        assert 0.0 <= m.min() and m.max() <= 1.0, k
    assert set(np.unique(hard["eyes"])) == {0.0, 1.0}
    # Smoothing leaves no hard edge: intermediate values appear, and the area is about kept.
    assert ((soft["eyes"] > 0.05) & (soft["eyes"] < 0.95)).sum() > 100
    assert abs(soft["skin"].sum() - hard["skin"].sum()) < 0.02 * hard["skin"].sum()
    # face = all face parts; paste covers it (dilated), feathered, clear of the border.
    assert (hard["face"] >= hard["skin"]).all() and (hard["face"] >= hard["eyes"]).all()
    paste = paste_mask(labels)
    assert paste.dtype == np.float32 and paste.shape == (512, 512)
    assert (paste[hard["face"] > 0] > 0.9).mean() > 0.97
    assert ((paste > 0.05) & (paste < 0.95)).sum() > 1000
    _assert_paste_clear_of_border(paste)


def test_paste_mask_never_reaches_the_border_even_when_hair_does():
    labels = np.full((512, 512), LABEL_ID["hair"], np.uint8)  # worst case: hair everywhere
    paste = paste_mask(labels)
    _assert_paste_clear_of_border(paste)
    assert paste[256, 256] > 0.99


def test_region_masks_size_hint_resizes():
    labels = LandmarkParser().parse(np.zeros((448, 448, 3), np.uint8), canonical_template(448))
    m = region_masks(labels, size_hint=512)
    assert all(v.shape == (512, 512) for v in m.values())
    m = region_masks(labels, size_hint=(300, 200))
    assert m["skin"].shape == (300, 200)


@pytest.mark.parametrize("name", PLAIN + ["df_sundar_glasses.jpg"])
def test_region_masks_on_bisenet_labels(name):
    labels = _bisenet_labels(name)
    m, paste = region_masks(labels), paste_mask(labels)
    _assert_paste_clear_of_border(paste)
    assert paste[256, 256] > 0.99 and m["face"][256, 256] > 0.99
    assert m["hair"].sum() > 10_000
    if "glasses" in name:
        assert m["glasses"].sum() > 3_000 and m["eyes"].sum() < 200
    else:
        assert m["eyes"].sum() > 400 and m["glasses"].sum() == 0
