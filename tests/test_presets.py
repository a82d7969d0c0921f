"""Style presets: data that names real registry models, availability from the model files on
this machine, the default, and `face2paint styles list`."""

from __future__ import annotations

import dataclasses

import pytest
from typer.testing import CliRunner

from face2paint.cli.main import app
from face2paint.models import registry as reg_mod
from face2paint.models.presets import (
    BY_NAME,
    NAMED,
    PRESETS,
    UnknownStyle,
    default_preset,
    get_preset,
    preset_status,
)
from face2paint.models.registry import BY_ID, MODELS, Registry
from face2paint.models.types import Params
from face2paint.models.verified_files import git_blob_id
from face2paint.settings import Settings, get_settings
from tests.helpers import corrupted_copy, model_dir, run_python_ok

REQUIRED = {
    "anime": ("animeganv3-jp-face", "animeganv3-hayao"),
    "anime-shinkai": ("animeganv3-jp-face", "animeganv3-shinkai"),
    "cartoon": ("animeganv3-usa2", None),
    "comic": ("animeganv3-comic", None),
    "arcane": ("animeganv3-arcane", None),
    "cute": ("animeganv3-cute", None),
    "sketch": ("animeganv3-portrait-sketch", None),
    "face-paint": ("animeganv2-face-paint-512-v2", "animeganv2-paprika"),
}


def make(tmp_path, model_dir=None) -> Registry:
    return Registry(Settings(home=tmp_path / "home", model_dir=model_dir))


def test_presets_name_real_models_of_the_right_kind():
    assert len(BY_NAME) == len(PRESETS)
    for name, (face, background) in REQUIRED.items():
        p = get_preset(name)
        assert p.face_model == face and (background is None or p.background_model == background)
    for p in PRESETS:
        face, bg = BY_ID[p.face_model], BY_ID[p.background_model]
        assert face.stage == bg.stage == "stylize"
        assert set(p.params) <= {f.name for f in dataclasses.fields(Params)}, p.id
    for p in NAMED:
        assert BY_ID[p.face_model].kind == "face", p.id
        assert BY_ID[p.background_model].kind in {"scenery", "any"} or p.background_model == p.face_model
    # Every single stylize model is a preset of its own name, on faces and background alike.
    for m in MODELS:
        if m.stage == "stylize":
            assert BY_NAME[m.id].face_model == BY_NAME[m.id].background_model == m.id
    assert not get_preset("anime").commercial_use and get_preset("classical-cartoon").commercial_use
    assert "non-commercial" in get_preset("anime").licences[0]


def test_unknown_style_lists_the_known_ones():
    with pytest.raises(UnknownStyle, match="unknown style 'ghibli'; choose one of: anime, anime-shinkai"):
        get_preset("ghibli")


def test_availability_and_default_with_the_shared_weights(tmp_path):
    r = make(tmp_path, model_dir())
    assert default_preset(r).id == "anime"
    for name in ("anime", "anime-shinkai", "cartoon", "comic", "arcane", "cute", "sketch"):
        assert preset_status(get_preset(name), r).available, name
    st = preset_status(get_preset("face-paint"), r)
    assert not st.available and set(st.missing) == {"animeganv2-face-paint-512-v2", "animeganv2-paprika"}
    # Listing availability converts nothing.
    assert not (r.cache_dir / "AnimeGANv3_tiny_USA2.onnx").exists()


def test_default_without_weights_is_the_builtin_filter(tmp_path):
    r = make(tmp_path)
    assert default_preset(r).id == "classical-cartoon"
    assert not preset_status(get_preset("anime"), r).available


def test_face_paint_is_available_once_its_checkpoints_are_there(tmp_path, monkeypatch):
    d = tmp_path / "models"
    d.mkdir()
    for model_id, name in (("animeganv2-face-paint-512-v2", "face_paint_512_v2.pt"),
                           ("animeganv2-paprika", "paprika.pt")):
        (d / name).write_bytes(name.encode() * 1000)  # stand-ins: only presence is checked here
        monkeypatch.setitem(reg_mod.BY_ID, model_id,
                            dataclasses.replace(BY_ID[model_id], git_blob=git_blob_id(d / name)))
    r = make(tmp_path, d)
    assert preset_status(get_preset("face-paint"), r).available
    assert default_preset(r).id == "face-paint"  # anime is absent from this directory


def test_a_corrupt_model_makes_its_presets_unavailable(tmp_path):
    src = model_dir() / "AnimeGANv3_Hayao_36_fp16.onnx"
    d = tmp_path / "models"
    corrupted_copy(src, d / src.name)
    (d / "AnimeGANv3_JP_face_v1.0_fp16.onnx").symlink_to(model_dir() / "AnimeGANv3_JP_face_v1.0_fp16.onnx")
    st = preset_status(get_preset("anime"), make(tmp_path, d))
    assert not st.available and st.missing == ("animeganv3-hayao",)
    assert "sha256" in st.problems["animeganv3-hayao"]
    assert preset_status(get_preset("animeganv3-jp-face"), make(tmp_path, d)).available


def test_presets_import_no_runtime():
    code = ("import sys, face2paint.models.presets; "
            "heavy = [m for m in ('torch', 'onnxruntime', 'cv2', 'ai_edge_litert', 'numpy') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    run_python_ok(code)


def test_cli_styles_list(tmp_path, monkeypatch):
    monkeypatch.setenv("FACE2PAINT_MODEL_DIR", str(model_dir()))
    monkeypatch.setenv("FACE2PAINT_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    try:
        r = CliRunner().invoke(app, ["styles", "list"], env={"COLUMNS": "200"})
    finally:
        get_settings.cache_clear()
    assert r.exit_code == 0, r.output
    lines = {line.split("│")[1].strip(): line for line in r.output.splitlines() if line.count("│") > 3}
    assert "anime (default)" in lines and "animeganv3-hayao" in lines["anime (default)"]
    assert "yes" in lines["cartoon"] and "non-commercial" in lines["cartoon"]
    assert "missing" in lines["face-paint"] and "commercial ok" in lines["face-paint"]
    assert "default style: anime" in r.output
