import numpy as np

from face2paint.models.face import FaceHelper, align_face, compose, match_colour, paste_face, unsharp
from face2paint.models.image_io import load_image
from face2paint.models.types import Face, Params
from tests.helpers import astronaut_path


def _aligned(size=512):
    image = load_image(astronaut_path()).rgb
    face = Face(box=(177, 56, 272, 176), landmarks=[(204, 100), (247, 103), (223, 129), (202, 138), (244, 140)], score=0.99)
    return image, align_face(image, face, size)


def test_paste_writes_only_inside_the_mask_and_the_image():
    image, a = _aligned()
    bg = np.zeros_like(image)
    face = np.full((512, 512, 3), 200, np.uint8)
    mask = np.zeros((512, 512), np.float32)
    mask[200:300, 200:300] = 1.0
    out = paste_face(bg, face, a.inverse, mask)
    assert out.shape == bg.shape
    changed = out.max(axis=2) > 0
    assert 500 < changed.sum() < 100 * 100  # the square, shrunk by the face's scale in the photo
    ys, xs = np.nonzero(changed)
    assert 150 < xs.mean() < 300 and 50 < ys.mean() < 200  # over the face


def test_colour_match_removes_a_tint_but_keeps_structure():
    image, a = _aligned()
    grey = np.repeat(image.mean(axis=2, keepdims=True), 3, axis=2).astype(np.uint8)
    tinted = a.crop.astype(np.int16)
    tinted[..., 1] += 60  # a green cast, as a generator may give a grey face
    tinted = np.clip(tinted, 0, 255).astype(np.uint8)
    mask = np.zeros((512, 512), np.float32)
    mask[100:400, 100:400] = 1
    fixed = match_colour(tinted, grey, a.inverse, mask)
    region = fixed[100:400, 100:400].astype(float)
    assert abs(region[..., 1].mean() - region[..., 0].mean()) < 8  # no more green
    # Lightness edges survive: the matched crop still correlates with the tinted one.
    g0, g1 = tinted[..., 0].astype(float).ravel(), fixed[..., 0].astype(float).ravel()
    assert np.corrcoef(g0, g1)[0, 1] > 0.95


def test_compose_with_no_faces_is_just_the_sharpened_background():
    bg = load_image(astronaut_path()).rgb
    assert np.array_equal(compose(bg, [], [], [], 0.3), unsharp(bg, 0.3))
    assert np.array_equal(unsharp(bg, 0.0), bg)


def test_faces_are_stylized_at_their_own_resolution():
    helper = FaceHelper(Params())
    _, small = _aligned()  # eye distance 43 px in the photo, 120 px in the crop
    assert helper.work_size(small.inverse) == 256
    # inverse maps crop pixels to photo pixels: 2 photo pixels per crop pixel is a big face.
    assert helper.work_size(np.array([[2.0, 0, 0], [0, 2.0, 0]])) == 512
    assert helper.work_size(np.array([[0.1, 0, 0], [0, 0.1, 0]])) == 256  # the default minimum
    assert FaceHelper(Params(face_min_size=128)).work_size(np.array([[0.1, 0, 0], [0, 0.1, 0]])) == 128
    # A face of 300 photo pixels across the crop: the next step up (384), not 512.
    assert helper.work_size(np.array([[300 / 512, 0, 0], [0, 300 / 512, 0]])) == 384
