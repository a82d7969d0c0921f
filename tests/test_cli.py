"""The `face2paint` command line, in-process, on real photos and weights."""

import json

import pytest
from PIL import Image
from typer.testing import CliRunner

from face2paint.cli.main import app
from face2paint.settings import get_settings
from tests.helpers import astronaut_path, model_dir, photos_with_a_broken_one

runner = CliRunner()


@pytest.fixture(autouse=True)
def env(monkeypatch, tmp_path):
    monkeypatch.setenv("FACE2PAINT_MODEL_DIR", str(model_dir()))
    monkeypatch.setenv("FACE2PAINT_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_detect_json():
    r = runner.invoke(app, ["detect", str(astronaut_path()), "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data[0]["width"] == 512 and data[0]["model"] == "retinaface-mnet025"
    face = data[0]["faces"][0]
    assert face["score"] > 0.99 and len(face["landmarks"]) == 5 and len(face["box"]) == 4


def test_stylize_folder_with_report_debug_and_a_broken_file(tmp_path):
    src = photos_with_a_broken_one(tmp_path / "in", b"this is not a jpeg")
    out = tmp_path / "out"
    r = runner.invoke(app, ["stylize", str(src), "--out", str(out), "--style", "classical-cartoon",
                            "--report", str(tmp_path / "r.json"), "--debug"])
    assert r.exit_code == 1, r.output  # one input failed, the others were written
    assert "broken.jpg" in r.output and "not an image" in r.output
    assert Image.open(out / "astronaut.png").size == (512, 512)
    assert Image.open(out / "hopper.png").size == (128, 128)
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["models"]["stylize"].startswith("classical-cartoon")
    rows = {r["input"].rsplit("/", 1)[-1]: r for r in report["images"]}
    assert "error" in rows["broken.jpg"]
    astro = rows["astronaut.png"]
    assert astro["faces"][0]["processed"] and astro["models"]["detect"] == "retinaface-mnet025"
    assert astro["timings_s"]["detect"] > 0
    dbg = out / "debug" / "astronaut"
    for name in ("landmarks.png", "face0_aligned.png", "face0_parsing.png", "face0_mask.png", "face0_stylized.png"):
        assert (dbg / name).is_file(), name


def test_requested_missing_model_names_the_file_and_the_fix(tmp_path):
    r = runner.invoke(app, ["stylize", str(astronaut_path()), "--out", str(tmp_path),
                            "--style", "animeganv2-face-paint-512-v2"])
    assert r.exit_code == 2
    assert "face_paint_512_v2.pt" in r.output and "models pull" in r.output


def test_models_list_and_verify():
    r = runner.invoke(app, ["models", "list"])
    assert r.exit_code == 0, r.output
    assert "default stylize: animeganv2-hayao-int8" in r.output
    r = runner.invoke(app, ["models", "verify"])
    assert r.exit_code == 0, r.output
    assert "bisenetv2-celebamaskhq-448-int8" in r.output and "sha256 ok" in r.output
