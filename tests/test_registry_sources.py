"""Registry entries of the AnimeGANv3 styles, and the two ways a file without a published sha256
is still verified: converted from a verified CoreML source (recorded beside the result), and the
git blob id of bryandlee's checkpoints at a pinned commit."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from face2paint.models import loaders
from face2paint.models import registry as reg_mod
from face2paint.models.registry import BY_ID, MODELS, ModelUnavailable, Registry
from face2paint.models.verified_files import git_blob_id, read_record
from face2paint.settings import Settings
from tests.helpers import aligned_face, corrupted_copy, model_dir
from tests.test_registry import http_server  # noqa: F401 - the local HTTP server fixture

V3_IDS = {
    "animeganv3-jp-face", "animeganv3-cute", "animeganv3-usa", "animeganv3-usa2",
    "animeganv3-comic", "animeganv3-arcane", "animeganv3-nordic-myth1", "animeganv3-nordic-myth2",
    "animeganv3-portrait-sketch", "animeganv3-hayao", "animeganv3-shinkai",
}
# From ../shared/models/MODELS.md: (dtype, multiple, kind) per model.
V3_IO = {
    "animeganv3-jp-face": ("float16", 8, "face"),
    "animeganv3-portrait-sketch": ("float16", 8, "face"),
    "animeganv3-hayao": ("float16", 8, "scenery"),
    "animeganv3-shinkai": ("float16", 8, "scenery"),
    "animeganv3-cute": ("float32", 16, "face"),
    **{f"animeganv3-{s}": ("float32", 16, "face")
       for s in ("usa", "usa2", "comic", "arcane", "nordic-myth1", "nordic-myth2")},
}
COMMIT_IN_URL = re.compile(r"/raw/[0-9a-f]{40}/")


def make(tmp_path, model_dir=None) -> Registry:
    return Registry(Settings(home=tmp_path / "home", model_dir=model_dir))


def test_every_model_declares_commercial_use_and_every_stylizer_a_kind():
    for m in MODELS:
        assert isinstance(m.commercial_use, bool), m.id
        if m.stage == "stylize":
            assert m.kind in {"face", "scenery", "any"}, m.id
    assert not BY_ID["animeganv2-hayao-int8"].commercial_use
    assert BY_ID["retinaface-mnet025"].licence_class == "commercial ok"


def test_animeganv3_entries():
    v3 = {m.id: m for m in MODELS if m.id.startswith("animeganv3-")}
    assert set(v3) == V3_IDS
    for model_id, m in v3.items():
        assert m.stage == "stylize" and m.runtime == "onnxruntime"
        assert (m.io.dtype, m.io.size_multiple, m.kind) == V3_IO[model_id]
        assert m.io.layout == "NHWC" and m.io.color == "RGB"
        assert m.commercial_use is False and "non-commercial" in m.licence
        assert m.urls and all(COMMIT_IN_URL.search(u) for u in m.urls), m.urls
        # Exactly one way to verify it: a sha256, or the sha256 of the source it is converted from.
        assert (m.sha256 is None) == (m.converted_from is not None)
        if m.converted_from:
            assert m.urls[0].endswith(m.converted_from.file.split("/")[-1])
            assert len(m.converted_from.sha256) == 64


def test_animeganv3_onnx_files_in_the_model_dir_verify(tmp_path):
    r = make(tmp_path, model_dir())
    for model_id in ("animeganv3-jp-face", "animeganv3-cute", "animeganv3-portrait-sketch",
                     "animeganv3-hayao", "animeganv3-shinkai"):
        found = r.resolve(model_id)
        assert found.source == "model_dir" and found.path.name == BY_ID[model_id].file


def _coreml_source(style: str = "USA2"):
    path = model_dir() / "coreml" / f"AnimeGANv3_tiny_{style}.mlmodel"
    if not path.is_file():
        pytest.skip(f"{path.name} not in FACE2PAINT_MODEL_DIR/coreml")
    pytest.importorskip("coremltools")
    return path


def _run_onnx(path, x):
    ort = pytest.importorskip("onnxruntime")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def test_tiny_style_in_the_model_dir_is_converted_once_into_the_cache(tmp_path):
    _coreml_source("USA2")
    r = make(tmp_path, model_dir())
    spec = BY_ID["animeganv3-usa2"]
    assert "converted on first use" in r.where(spec)
    found = r.resolve("animeganv3-usa2")
    assert found.source == "cache" and found.path == r.cache_dir / "AnimeGANv3_tiny_USA2.onnx"
    record = read_record(found.path)
    assert record["source_sha256"] == spec.converted_from.sha256
    assert record["sha256"] == hashlib.sha256(found.path.read_bytes()).hexdigest()
    mtime = found.path.stat().st_mtime_ns
    # Another process (a new registry) finds the converted file and does not convert again.
    again = make(tmp_path, model_dir()).resolve("animeganv3-usa2")
    assert again.path == found.path and found.path.stat().st_mtime_ns == mtime
    assert make(tmp_path, model_dir()).where(spec) == str(found.path)
    # The converted model is the reference network, on a real face crop.
    ref = model_dir() / "coreml" / "reference-onnx" / "AnimeGANv3_tiny_USA2_from_coreml.onnx"
    if ref.is_file():
        crop = np.asarray(Image.fromarray(aligned_face("sk_astronaut.png").crop).resize((256, 256)))
        x = crop.astype(np.float32)[None] / 127.5 - 1
        assert float(np.abs(_run_onnx(found.path, x) - _run_onnx(ref, x)).max()) < 1e-3


def test_corrupted_conversion_is_redone_and_a_corrupted_source_refused(tmp_path):
    src = _coreml_source("Comic")
    r = make(tmp_path, model_dir())
    path = r.resolve("animeganv3-comic").path
    good = path.read_bytes()
    corrupted_copy(path, path)
    assert make(tmp_path, model_dir()).resolve("animeganv3-comic").path.read_bytes() == good

    bad_dir = tmp_path / "bad-models" / "coreml"
    corrupted_copy(src, bad_dir / src.name, offset=1000)
    other = Registry(Settings(home=tmp_path / "home2", model_dir=bad_dir.parent))
    with pytest.raises(ModelUnavailable, match="does not match the sha256 recorded for the source"):
        other.resolve("animeganv3-comic")
    assert not (other.cache_dir / "AnimeGANv3_tiny_Comic.onnx").exists()


def test_pull_downloads_the_coreml_source_verifies_and_converts(tmp_path, http_server, monkeypatch):  # noqa: F811
    root, base = http_server
    src = _coreml_source("Arcane")
    shutil.copy(src, root / src.name)
    real = BY_ID["animeganv3-arcane"]
    local = dataclasses.replace(real, urls=(f"{base}/{src.name}",))
    monkeypatch.setitem(reg_mod.BY_ID, real.id, local)
    r = make(tmp_path)  # no model directory: only the download can provide it
    assert r.find(local) is None
    path = r.pull(real.id)
    assert path == r.cache_dir / "AnimeGANv3_tiny_Arcane.onnx"
    assert (r.cache_dir / "coreml" / src.name).read_bytes() == src.read_bytes()
    record = json.loads((r.cache_dir / "AnimeGANv3_tiny_Arcane.onnx.json").read_text())
    assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert record["source_sha256"] == real.converted_from.sha256
    assert r.resolve(real.id).path == path

    wrong = dataclasses.replace(local, id="test-wrong-source", file="wrong.onnx",
                                converted_from=dataclasses.replace(real.converted_from,
                                                                   file="coreml/wrong.mlmodel",
                                                                   sha256="0" * 64))
    monkeypatch.setitem(reg_mod.BY_ID, wrong.id, wrong)
    with pytest.raises(ModelUnavailable, match="sha256"):
        r.pull(wrong.id)
    assert not (r.cache_dir / "wrong.onnx").exists() and not (r.cache_dir / "coreml" / "wrong.mlmodel").exists()
    assert not list(r.cache_dir.rglob(".pull-*"))


# --- bryandlee checkpoints: git blob ids ------------------------------------------------------


def test_git_blob_id_is_what_git_computes(tmp_path):
    f = tmp_path / "x.bin"
    f.write_bytes(bytes(range(256)) * 77)
    expected = hashlib.sha1(b"blob %d\0" % f.stat().st_size + f.read_bytes()).hexdigest()
    assert git_blob_id(f) == expected
    if shutil.which("git"):
        out = subprocess.run(["git", "hash-object", str(f)], capture_output=True, text=True, check=True)
        assert out.stdout.strip() == expected


def test_bryandlee_entries_are_pinned_to_the_commit_with_known_blob_ids():
    blobs = {"face_paint_512_v2": "d75102f8f201ddaf8dbe6b913b1a97585b55f838",
             "face_paint_512_v1": "19c1a1da4d9580186109a2b055d91044e5127de6",
             "paprika": "58086c9db9fc7a9e5c2876ca31b8079599352643",
             "celeba_distill": "3b7ea61b02254980831cc3bc77af30666dbc999c"}
    for name, blob in blobs.items():
        spec = BY_ID[f"animeganv2-{name.replace('_', '-')}"]
        assert spec.git_blob == blob
        assert spec.urls == (
            f"https://github.com/bryandlee/animegan2-pytorch/raw/25d7b017267208dfaf34026aa3425e518372aa2f/weights/{name}.pt",)


def _random_bryandlee_checkpoint(path, seed: int = 3) -> dict:
    """A state_dict in bryandlee's layout with random weights (norm affines too), saved as the
    published checkpoints are: a plain torch.save of the tensors."""
    from face2paint.models.generators.animegan import Generator

    torch.manual_seed(seed)
    sd = Generator().state_dict()
    sd = {k: (torch.randn_like(v) * (0.5 if k.endswith("bias") else 0.2)
              + (1.0 if ".2.weight" in k or ".3.weight" in k else 0.0)) for k, v in sd.items()}
    torch.save(sd, path)
    return sd


def test_pull_refuses_a_checkpoint_whose_git_blob_differs(tmp_path, http_server, monkeypatch):  # noqa: F811
    root, base = http_server
    _random_bryandlee_checkpoint(root / "face_paint_512_v2.pt")
    real = BY_ID["animeganv2-face-paint-512-v2"]
    monkeypatch.setitem(reg_mod.BY_ID, real.id,
                        dataclasses.replace(real, urls=(f"{base}/face_paint_512_v2.pt",)))
    r = make(tmp_path)
    with pytest.raises(ModelUnavailable, match=f"git blob id [0-9a-f]{{40}} != expected {real.git_blob}"):
        r.pull(real.id)
    assert not (r.cache_dir / "face_paint_512_v2.pt").exists()

    # A file in the model directory with the wrong content is refused the same way.
    d = tmp_path / "models"
    d.mkdir()
    shutil.copy(root / "face_paint_512_v2.pt", d / "face_paint_512_v2.pt")
    with pytest.raises(ModelUnavailable, match="git blob id recorded"):
        make(tmp_path, d).resolve(real.id)


def _reference_forward(sd: dict, x: torch.Tensor) -> torch.Tensor:
    """bryandlee/animegan2-pytorch's Generator.forward (align_corners=True), written out with
    torch.nn.functional over the state_dict alone: no module of this project involved."""

    def cnl(p, x, k=3, stride=1, pad=(1, 1, 1, 1), groups=1):
        x = F.pad(x, pad, mode="reflect")
        x = F.conv2d(x, sd[f"{p}.1.weight"], sd.get(f"{p}.1.bias"), stride=stride, groups=groups)
        x = F.group_norm(x, 1, sd[f"{p}.2.weight"], sd[f"{p}.2.bias"], eps=1e-5)
        return F.leaky_relu(x, 0.2)

    def irb(p, x):
        out = cnl(f"{p}.layers.0", x, k=1, pad=(0, 0, 0, 0))
        out = cnl(f"{p}.layers.1", out, groups=out.shape[1])
        out = F.conv2d(out, sd[f"{p}.layers.2.weight"])
        out = F.group_norm(out, 1, sd[f"{p}.layers.3.weight"], sd[f"{p}.layers.3.bias"], eps=1e-5)
        return x + out if x.shape[1] == out.shape[1] else out

    out = cnl("block_a.0", x, pad=(3, 3, 3, 3))
    out = cnl("block_a.1", out, stride=2, pad=(0, 1, 0, 1))
    out = cnl("block_a.2", out)
    half = out.shape[-2:]
    out = cnl("block_b.0", out, stride=2, pad=(0, 1, 0, 1))
    out = cnl("block_b.1", out)
    out = cnl("block_c.0", out)
    for i in range(1, 5):
        out = irb(f"block_c.{i}", out)
    out = cnl("block_c.5", out)
    out = F.interpolate(out, half, mode="bilinear", align_corners=True)
    out = cnl("block_d.1", cnl("block_d.0", out))
    out = F.interpolate(out, x.shape[-2:], mode="bilinear", align_corners=True)
    out = cnl("block_e.2", cnl("block_e.1", cnl("block_e.0", out)), pad=(3, 3, 3, 3))
    return torch.tanh(F.conv2d(out, sd["out_layer.0.weight"]))


def test_bryandlee_checkpoint_runs_through_pull_resolution_and_loading(tmp_path, http_server, monkeypatch):  # noqa: F811
    root, base = http_server
    sd = _random_bryandlee_checkpoint(root / "face_paint_512_v2.pt")
    blob = git_blob_id(root / "face_paint_512_v2.pt")
    real = BY_ID["animeganv2-face-paint-512-v2"]
    # The registered entry with this file's blob id and a local URL: everything else as shipped.
    monkeypatch.setitem(reg_mod.BY_ID, real.id, dataclasses.replace(
        real, urls=(f"{base}/face_paint_512_v2.pt",), git_blob=blob))
    r = make(tmp_path)
    path = r.pull(real.id)
    record = read_record(path)
    assert record["git_blob"] == blob
    assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    stylizer = loaders.build(r.resolve(real.id))
    assert stylizer.model_id == real.id

    crop = aligned_face("mpl_grace_hopper.jpg").crop
    crop = np.asarray(Image.fromarray(crop).resize((128, 128), Image.BICUBIC))
    out = stylizer(crop)
    with torch.no_grad():
        x = torch.from_numpy(crop.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
        ref = _reference_forward(sd, x)[0].permute(1, 2, 0).numpy()
    ref = np.clip(np.round((ref + 1) * 127.5), 0, 255)
    assert out.shape == crop.shape and out.dtype == np.uint8
    # The loader runs the ONNX export on the selected runtime (OpenVINO bf16 on a BF16 CPU),
    # so compare by PSNR, the reduced-precision bar, not to the grey level.
    mse = float(np.mean((out.astype(np.float64) - ref.astype(np.float64)) ** 2))
    assert mse == 0 or 10 * np.log10(255 ** 2 / mse) >= 40, mse
    assert out.std() > 5  # random weights still give a structured image, not a constant
