"""Style presets end to end: the pipeline, the CLI flags, the API's refusals and the worker
resolve the same names; every AnimeGANv3 model takes odd sizes (padded, never stretched)."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi import HTTPException
from typer.testing import CliRunner

from face2paint.api.options import parse_options
from face2paint.cli.main import app
from face2paint.models.cache import ModelCache
from face2paint.models.pipeline import Face2Paint
from face2paint.models.presets import NAMED, get_preset
from face2paint.models.registry import MODELS, Registry
from face2paint.models.types import Params
from face2paint.settings import Settings
from tests.helpers import astronaut_path, model_dir

runner = CliRunner()
V3 = [m.id for m in MODELS if m.options.get("family") == "animeganv3"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return ModelCache(Registry(Settings(home=tmp_path_factory.mktemp("home"), model_dir=model_dir())))


def test_a_preset_names_the_face_and_the_background_model(cache):
    pipe = Face2Paint(cache)  # the default: anime, where its weights are present
    assert pipe.style == "anime"
    assert pipe.models["stylize"] == "animeganv3-jp-face"
    assert pipe.models["stylize_background"] == "animeganv3-hayao"
    single = Face2Paint(cache, style="cartoon")
    assert single.models["stylize"] == single.models["stylize_background"] == "animeganv3-usa2"
    assert "stylize_background" not in single.describe()  # one model for both
    mixed = Face2Paint(cache, style="anime", face_style="cute", background_style="anime-shinkai")
    assert mixed.models["stylize"] == "animeganv3-cute"
    assert mixed.models["stylize_background"] == "animeganv3-shinkai"
    # A model id is a preset of its own; nothing was loaded to answer any of this.
    assert Face2Paint(cache, style="animeganv3-comic").models["stylize"] == "animeganv3-comic"
    assert cache.loaded_ids() == []


def test_preset_params_are_defaults_under_the_request(cache):
    sketch = Face2Paint(cache, style="sketch")
    assert get_preset("sketch").params["skin_tone"] is False
    assert sketch.params_for().skin_tone is False
    assert sketch.params_for({"skin_tone": True}).skin_tone is True
    assert Face2Paint(cache, style="anime").params_for() == Params()


def test_cli_refuses_unknown_and_unavailable_styles_with_the_available_ones(tmp_path, monkeypatch):
    monkeypatch.setenv("FACE2PAINT_MODEL_DIR", str(model_dir()))
    monkeypatch.setenv("FACE2PAINT_HOME", str(tmp_path / "home"))
    from face2paint.settings import get_settings

    get_settings.cache_clear()
    try:
        for flag, name, fragment in (("--style", "ghibli", "unknown style 'ghibli'"),
                                     ("--face-style", "face-paint", "face style 'face-paint' is not available"),
                                     ("--background-style", "nope", "unknown background style 'nope'")):
            r = runner.invoke(app, ["stylize", str(astronaut_path()), "--out", str(tmp_path / "o"), flag, name])
            assert r.exit_code == 2, r.output
            out = " ".join(r.output.split())
            assert fragment in out and "choose one of: anime, anime-shinkai, cartoon" in out, out
            assert "face-paint," not in out.split("choose one of:")[1]  # only the available ones
    finally:
        get_settings.cache_clear()


def test_cli_stylize_with_a_face_and_a_background_style(tmp_path, monkeypatch):
    monkeypatch.setenv("FACE2PAINT_MODEL_DIR", str(model_dir()))
    monkeypatch.setenv("FACE2PAINT_HOME", str(tmp_path / "home"))
    from face2paint.settings import get_settings

    get_settings.cache_clear()
    try:
        from PIL import Image

        src = tmp_path / "small.png"
        Image.open(astronaut_path()).resize((200, 200)).save(src)
        r = runner.invoke(app, ["stylize", str(src), "--out", str(tmp_path / "o"), "--style", "cartoon",
                                "--background-style", "classical-cartoon"])
        assert r.exit_code == 0, r.output
        assert "style: cartoon" in r.output and "stylize: animeganv3-usa2 (requested)" in r.output
        assert "stylize_background: classical-cartoon (requested)" in r.output
        assert Image.open(tmp_path / "o" / "small.png").size == (200, 200)
    finally:
        get_settings.cache_clear()


def test_api_options_refuse_unknown_and_unavailable_styles():
    model_dir()
    for options, fragment in (
        ('{"style": "vaporwave"}', "unknown style 'vaporwave'; choose one of: anime, "),
        ('{"style": "face-paint"}', "style 'face-paint' is not available here"),
        ('{"face_style": "ghibli"}', "unknown face style 'ghibli'"),
        ('{"background_style": 3}', "unknown background style 3 (not a name); choose one of: anime"),
    ):
        with pytest.raises(HTTPException) as e:
            parse_options(options)
        assert e.value.status_code == 422 and fragment in e.value.detail, (options, e.value.detail)
        assert "animeganv2-face-paint-512-v2" not in e.value.detail.split("choose one of")[-1]
    ok = parse_options('{"style": "anime", "face_style": "cartoon"}')
    assert ok.stored()["style"] == "anime" and ok.stored()["face_style"] == "cartoon"
    assert "background_style" not in ok.stored()
    assert parse_options('{"params": {"skin_tone": false}}').params.skin_tone is False


def test_the_worker_runs_the_jobs_preset(cache):
    from face2paint.worker.tasks import StageContext

    ctx = StageContext("j", "i", "k", "a.png", {"style": "sketch", "background_style": "anime",
                                                "params": {"face_size": 256}}, None, cache)
    assert ctx.pipe.models["stylize"] == "animeganv3-portrait-sketch"
    assert ctx.pipe.models["stylize_background"] == "animeganv3-hayao"
    assert ctx.params.face_size == 256 and ctx.params.skin_tone is False  # sketch's default


@pytest.mark.parametrize("model_id", V3)
def test_every_v3_model_takes_odd_sizes_padded_and_cropped_back(cache, model_id):
    gen = cache.get(model_id)
    rng = np.random.default_rng(0)
    sizes = [(37, 53)] + ([(328, 384)] if model_id == "animeganv3-usa2" else [])
    for h, w in sizes:
        img = rng.integers(0, 255, (h, w, 3), np.uint8)
        img[: h // 2] = (200, 150, 120)  # structure: the top half stays flat, not stretched
        out = gen(img)
        assert out.shape == (h, w, 3) and out.dtype == np.uint8, (model_id, out.shape)
    # Padding, not stretching: a left/right split image keeps its edge where it was.
    img = np.zeros((40, 72, 3), np.uint8)
    img[:, 36:] = 230
    out = gen(img).astype(float).mean(axis=(0, 2))
    assert out[:30].mean() < out[42:].mean() - 20, model_id


def test_skin_tone_brings_the_skin_colour_back_on_a_real_face(cache):
    import cv2

    from face2paint.models.image_io import load_image
    from face2paint.tools.skin_tone import face_skin_tone_shift

    rgb = cv2.resize(load_image(astronaut_path()).rgb, (320, 320), interpolation=cv2.INTER_AREA)
    pipe = Face2Paint(cache, style="anime")
    face = [f for f in pipe.detect(rgb) if f.score > 0.9][0]
    shift = {}
    for on in (False, True):
        out = pipe.run(rgb, Params(skin_tone=on)).output
        shift[on] = face_skin_tone_shift(rgb, out, face, pipe.parser)
    # JP_face paints every face pale; the offset in CIELAB puts the person's tone back.
    assert shift[False] > 8 and shift[True] < 4, shift
    assert Params().skin_tone is True


def test_keep_keeps_the_models_shading():
    from face2paint.models.keep import apply_keep

    s = 128
    yy = np.linspace(0, 1, s, dtype=np.float32)[:, None].repeat(s, 1)
    stylized = np.stack([200 + 40 * yy] * 3, -1).astype(np.uint8)  # pale, with a gradient
    reference = np.full((s, s, 3), (120, 80, 60), np.uint8)  # brown skin
    keep = np.zeros((s, s, 3), np.uint8)
    keep[16:112, 16:112, 0] = 255
    lab = cv2_lab(reference)[0, 0]
    out = apply_keep(stylized, reference, keep, lab, skin_tone=True)
    inner = out[16:112, 16:112].astype(float)
    assert abs(inner.mean(axis=(0, 1)) - reference[0, 0]).max() < 12  # the colour came back
    assert inner[-1].mean() - inner[0].mean() > 20  # and the shading stayed
    assert np.array_equal(out[:8], stylized[:8])  # nothing outside the skin
    assert np.array_equal(apply_keep(stylized, reference, keep, lab, skin_tone=False), stylized)


def cv2_lab(rgb):
    import cv2

    return cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)
