"""Features in place (models/features.py): the stylized crop's landmarks are moved back to the
input's, gently, with the crop's border fixed; and the dlib 5-point mapping of the eval's
independent landmark check (tools/dlib_landmarks.py)."""

from __future__ import annotations

import numpy as np
import pytest

from face2paint.models import features as ft
from face2paint.models.align import canonical_template
from face2paint.models.face import FaceBatch
from face2paint.models.types import Face, Params

S = 512
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]


class FakeDetector:
    """Returns one face whose landmarks are the given points (or nothing)."""

    model_id = "retinaface-mnet025"

    def __init__(self, points=None, score=0.99):
        self.points, self.score, self.calls = points, score, 0

    def detect(self, rgb):
        self.calls += 1
        if self.points is None:
            return []
        p = np.asarray(self.points, np.float32)
        box = (*(p.min(axis=0) - 40), *(p.max(axis=0) + 40))
        return [Face(box=box, landmarks=p, score=self.score)]


def _crop_with_blobs(points: np.ndarray) -> np.ndarray:
    """A textured grey crop with one coloured disc at each point."""
    import cv2

    rng = np.random.default_rng(0)
    crop = (96 + rng.integers(0, 64, (S, S, 3))).astype(np.uint8)
    crop = cv2.GaussianBlur(crop, (0, 0), 2)
    for (x, y), c in zip(points, COLOURS):
        cv2.circle(crop, (int(round(x)), int(round(y))), 6, c, -1, cv2.LINE_AA)
    return crop


def _blob_centres(crop: np.ndarray) -> np.ndarray:
    out = []
    for c in COLOURS:
        d = np.abs(crop.astype(np.int32) - np.array(c)).sum(axis=2)
        ys, xs = np.nonzero(d < 60)
        out.append((xs.mean(), ys.mean()))
    return np.array(out)


def _target() -> np.ndarray:
    return canonical_template(S, 0.2).astype(np.float64)


def test_displaced_landmarks_come_back_within_tolerance():
    target = _target()
    iod = np.linalg.norm(target[1] - target[0])
    # The face model moved the eyes up and apart, the nose down, the mouth in: 0.06-0.1 iod.
    shift = np.array([[-8, -7], [8, -7], [0, 6], [5, 4], [-5, 4]], np.float64)
    found = target + shift
    crop = _crop_with_blobs(found)
    warped, info = ft.features_in_place(crop, target, FakeDetector(found))
    assert info["applied"] and info["factor"] == 1.0
    assert info["nle_before"] == pytest.approx(np.linalg.norm(shift, axis=1).mean() / iod, rel=1e-3)
    err = np.linalg.norm(_blob_centres(warped) - target, axis=1)
    assert err.max() < 1.0, err  # px, of ~100 px between the eyes
    assert warped.shape == crop.shape and warped.dtype == np.uint8


def test_border_is_untouched_and_far_pixels_barely_move():
    target = _target()
    found = target + np.array([[-8, -7], [8, -7], [0, 6], [5, 4], [-5, 4]])
    crop = _crop_with_blobs(found)
    warped, info = ft.features_in_place(crop, target, FakeDetector(found))
    assert info["applied"]
    for a, b in ((warped[0], crop[0]), (warped[-1], crop[-1]), (warped[:, 0], crop[:, 0]),
                 (warped[:, -1], crop[:, -1])):
        assert np.array_equal(a, b)
    field, factor = ft.displacement_field((S, S), target, found, 0.2 * 102)
    assert factor == 1.0
    # Near the border (where the paste mask is 0: its feather ends ~20 px in) it fades out.
    for width, most in ((8, 0.5), (24, 1.5)):
        band = np.ones((S, S), bool)
        band[width:-width, width:-width] = False
        assert np.abs(field[band]).max() < most, width
    assert np.abs(field[0]).max() == 0 and np.abs(field[:, -1]).max() == 0


def test_no_op_when_landmarks_are_not_found_or_not_trusted():
    target = _target()
    crop = _crop_with_blobs(target)
    for det, reason in ((FakeDetector(None), "no confident face"),
                        (FakeDetector(target + 5, score=0.5), "no confident face"),
                        (FakeDetector(target + 300), "no confident face"),  # another face
                        (FakeDetector(target + np.array([[0, 0], [0, 0], [0, 120], [-90, 90], [90, 90]])),
                         "implausible")):
        out, info = ft.features_in_place(crop, target, det)
        assert out is crop and not info["applied"] and reason in info["reason"]
    # Unknown input landmarks (an old artifact): the detector is not even asked.
    det = FakeDetector(target)
    out, info = ft.features_in_place(crop, np.full((5, 2), np.nan), det)
    assert out is crop and not info["applied"] and det.calls == 0


def test_displacement_is_capped_and_never_folds():
    target = _target()
    iod = np.linalg.norm(target[1] - target[0])
    found = target.copy()
    found[2] += (0, 0.4 * iod)  # the nose 0.4 iod too low: capped at 0.2
    crop = _crop_with_blobs(found)
    warped, info = ft.features_in_place(crop, target, FakeDetector(found))
    assert info["applied"] and 0 < info["factor"] <= 1
    moved = np.linalg.norm(_blob_centres(warped)[2] - found[2])
    # Moved back part of the way, never more than the cap (the pixel that lands on the target
    # is the one 0.2 iod from it; the nose itself, farther, moves by less).
    assert 0.5 * 0.2 * iod < moved < 0.2 * iod + 1
    # Nose and mouth pulled towards each other, hard (60 px apart, each moved 20 px): the
    # field is scaled down until it folds nothing.
    found = target + np.array([[0, 0], [0, 0], [0, 20], [0, -20], [0, -20]])
    field, factor = ft.displacement_field((S, S), target, found, 0.2 * iod)
    assert 0 < factor < 1
    assert ft._min_jacobian(field[::8, ::8], 8) > ft.MIN_JACOBIAN - 0.1


def test_finalize_warps_face_models_only_and_records_it():
    from face2paint.models.pipeline import Face2Paint

    class FakeGen:
        model_id = "animeganv3-jp-face"

        def __call__(self, rgb):
            return rgb

    target = _target()
    found = target + 6
    crop = _crop_with_blobs(found)
    inverse = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    batch = FaceBatch(crop[None], inverse[None], np.zeros((1, S, S), np.uint8),
                      landmarks=target[None].astype(np.float32))
    bg = np.zeros((S, S, 3), np.uint8)
    det = FakeDetector(found)
    class FakeParser:
        model_id = "landmark-regions"

    pipe = Face2Paint(detector=det, parser=FakeParser(), style=FakeGen())
    infos: list = []
    assert not Params().features_in_place  # off by default (docs/QUALITY.md)
    pipe.finalize(bg, batch, [crop], (S, S), Params(features_in_place=True), True, infos)
    assert infos and infos[0]["applied"] and det.calls == 1
    infos = []
    pipe.finalize(bg, batch, [crop], (S, S), Params(features_in_place=False), True, infos)
    assert infos == [{"applied": False, "reason": "off"}] and det.calls == 1
    assert FaceBatch.from_arrays(batch.arrays()).landmarks.shape == (1, 5, 2)


# --- the eval's independent landmark check ------------------------------------------------


def test_five_from_68_mapping():
    from face2paint.tools.dlib_landmarks import five_from_68

    pts = np.zeros((68, 2))
    pts[36:42] = [[10, 20], [12, 18], [14, 18], [16, 20], [14, 22], [12, 22]]  # centre (13, 20)
    pts[42:48] = pts[36:42] + (40, 2)  # centre (53, 22)
    pts[30] = (33, 40)
    pts[48], pts[54] = (20, 60), (46, 61)
    five = five_from_68(pts)
    assert five.shape == (5, 2) and five.dtype == np.float32
    np.testing.assert_allclose(five, [[13, 20], [53, 22], [33, 40], [20, 60], [46, 61]])


def test_dlib_five_points_agree_with_retinaface_and_see_a_shift():
    pytest.importorskip("dlib")
    from PIL import Image

    from face2paint.tools.dlib_landmarks import DlibLandmarks
    from tests.helpers import aligned_face, faces_dir

    try:
        dl = DlibLandmarks()
    except RuntimeError as e:
        pytest.skip(str(e))
    face = aligned_face("sk_astronaut.png").face
    rgb = np.asarray(Image.open(faces_dir() / "sk_astronaut.png").convert("RGB"))
    five = dl.five(rgb, face.box)
    iod = np.linalg.norm(face.landmarks[1] - face.landmarks[0])
    # The same five features as RetinaFace's, within a fraction of the eye distance.
    assert np.linalg.norm(five - face.landmarks, axis=1).max() < 0.2 * iod
    assert dl.nle(rgb, rgb, face.box) == 0.0
    # The image moved 6 px right under the same box: dlib follows the features.
    shifted = np.roll(rgb, 6, axis=1)
    nle = dl.nle(rgb, shifted, face.box)
    assert 0.5 * 6 / iod < nle < 1.5 * 6 / iod


# --- small faces keep the input's structure (models/keep.py) -------------------------------


def test_small_face_structure_brings_back_the_inputs_shading_on_small_faces_only():
    import cv2

    from face2paint.models.keep import small_face_share, small_face_structure

    rng = np.random.default_rng(1)
    ref = np.full((S, S, 3), 150, np.uint8)
    cv2.circle(ref, (200, 230), 18, (40, 40, 40), -1)  # a dark eye socket
    cv2.circle(ref, (312, 230), 18, (40, 40, 40), -1)
    flat = np.full((S, S, 3), (120, 90, 80), np.uint8)  # the model's flat, featureless face
    flat = np.clip(flat + rng.integers(-2, 3, flat.shape), 0, 255).astype(np.uint8)
    keep = np.zeros((S, S, 3), np.uint8)
    keep[100:420, 120:400, 0] = 255  # skin, around the sockets
    keep[212:248, 182:218, 0] = keep[212:248, 294:330, 0] = 0
    assert small_face_share(40) == 0 and small_face_share(12) == small_face_share(5) > 0
    assert small_face_share(float("nan")) == 0
    assert small_face_structure(flat, ref, keep, 40.0) is flat
    out = small_face_structure(flat, ref, keep, 12.0)

    def lum(img, y, x):
        return cv2.cvtColor(img, cv2.COLOR_RGB2LAB)[y, x, 0].astype(float)

    # The socket is darker than the cheek again; the cheek keeps the stylized colour.
    assert lum(out, 230, 200) < lum(out, 330, 260) - 20
    assert np.abs(out[330, 260].astype(int) - flat[330, 260].astype(int)).max() < 25
    # Outside the face nothing changes.
    assert np.array_equal(out[:40], flat[:40])
