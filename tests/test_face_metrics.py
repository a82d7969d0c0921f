"""The eval metrics that say whether a stylized face is still the person: dlib face-descriptor
distance (identity) and CIEDE2000 of the mean skin colour (skin tone), on real photos."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tests.helpers import aligned_face, bisenet, faces_dir, run_python_ok

pytest.importorskip("dlib")
color = pytest.importorskip("skimage.color")

from face2paint.tools.identity import FaceDescriptor, model_files, same_person  # noqa: E402
from face2paint.tools.skin_tone import (  # noqa: E402
    delta_e00,
    face_skin_tone_shift,
    mean_lab,
    skin_tone_shift,
)


def _photo(name: str) -> np.ndarray:
    return np.asarray(Image.open(faces_dir() / name).convert("RGB"))


@pytest.fixture(scope="module")
def descriptor() -> FaceDescriptor:
    try:
        return FaceDescriptor()
    except RuntimeError as e:
        pytest.skip(str(e))


def test_model_files_are_found_without_importing_the_package():
    code = ("import sys; from face2paint.tools.identity import model_files; "
            "p, r = model_files(); assert p.is_file() and r.is_file(); "
            "sys.exit(1 if 'face_recognition_models' in sys.modules else 0)")
    run_python_ok(code)
    assert model_files()[1].name == "dlib_face_recognition_resnet_model_v1.dat"


def test_identity_same_face_and_different_people(descriptor):
    a = aligned_face("df_sundar_glasses.jpg").face
    rgb = _photo("df_sundar_glasses.jpg")
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=40)  # the same photo, visibly recompressed
    recompressed = np.asarray(Image.open(buf))
    same = descriptor.distance(rgb, recompressed, a.box)
    assert same < 0.2 and same_person(same)

    b = aligned_face("mpl_grace_hopper.jpg").face
    other = descriptor.distance(rgb, _photo("mpl_grace_hopper.jpg"), a.box, box_b=b.box)
    assert other > 0.6 and not same_person(other)
    # A face blurred beyond recognition drifts away from its own descriptor.
    import cv2

    blurred = cv2.GaussianBlur(rgb, (0, 0), 12)
    assert descriptor.distance(rgb, blurred, a.box) > same + 0.1


def test_delta_e00_on_published_pairs():
    # Sharma, Wu and Dalal (2005), test data for CIEDE2000: pairs 1 and 7.
    assert delta_e00([50.0, 2.6772, -79.7751], [50.0, 0.0, -82.7485]) == pytest.approx(2.0425, abs=1e-4)
    assert delta_e00([50.0, 0.0, 0.0], [50.0, -1.0, 2.0]) == pytest.approx(2.3669, abs=1e-4)


def test_skin_tone_of_a_lightness_shifted_copy():
    a = aligned_face("df_sundar_glasses.jpg")
    skin = bisenet().parse(a.crop, a.landmarks) == 1
    assert skin_tone_shift(a.crop, a.crop, skin) == pytest.approx(0.0, abs=1e-9)
    lab = color.rgb2lab(a.crop)
    # Every pixel 5 units lighter, hue and chroma kept (a larger step leaves the sRGB gamut on
    # the brightest skin and gets clipped on the way back).
    lab[..., 0] += 5.0
    lighter = np.clip(np.round(color.lab2rgb(lab) * 255), 0, 255).astype(np.uint8)
    got = skin_tone_shift(a.crop, lighter, skin)
    # CIEDE2000 of a pure lightness difference: dL / S_L, S_L = 1 + 0.015 (L - 50)^2 / sqrt(20 + (L - 50)^2)
    l_mean = mean_lab(a.crop, skin)[0] + 2.5
    s_l = 1 + 0.015 * (l_mean - 50) ** 2 / np.sqrt(20 + (l_mean - 50) ** 2)
    assert got == pytest.approx(5.0 / s_l, abs=0.3)


def test_face_skin_tone_shift_in_a_photo():
    a = aligned_face("df_sundar_glasses.jpg")
    rgb = _photo("df_sundar_glasses.jpg")
    parser = bisenet()
    assert face_skin_tone_shift(rgb, rgb.copy(), a.face, parser) == pytest.approx(0.0, abs=1e-9)
    # Skin whitened the way the issue saw JP_face do it: half way to a pale anime skin tone.
    pale = (0.5 * rgb + 0.5 * np.array([250, 226, 214])).astype(np.uint8)
    assert face_skin_tone_shift(rgb, pale, a.face, parser) > 12
    with pytest.raises(ValueError, match="differ in size"):
        face_skin_tone_shift(rgb, rgb[:-1], a.face, parser)
