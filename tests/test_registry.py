import hashlib
import http.server
import shutil
import threading
from pathlib import Path

import pytest

from face2paint.models import registry as reg_mod
from face2paint.models.registry import MODELS, ModelSpec, ModelUnavailable, Registry
from face2paint.settings import Settings
from tests.helpers import model_dir


def make(tmp_path, model_dir=None):
    return Registry(Settings(home=tmp_path / "home", model_dir=model_dir))


def test_every_model_has_id_stage_runtime_and_licence():
    ids = [m.id for m in MODELS]
    assert len(ids) == len(set(ids))
    for m in MODELS:
        assert m.stage in {"detect", "parse", "stylize", "aux"} and m.runtime and m.licence
        if m.file and m.sha256:
            assert len(m.sha256) == 64
        for url in m.urls:
            assert url.startswith("https://")


def test_defaults_with_shared_weights(tmp_path):
    r = make(tmp_path, model_dir())
    assert r.default("detect").id == "retinaface-mnet025"
    assert r.default("parse").id == "bisenetv2-celebamaskhq-448-int8"
    # No bryandlee checkpoint in the shared directory: the best AnimeGANv2 there is Hayao.
    assert r.default("stylize").id == "animeganv2-hayao-int8"


def test_defaults_without_any_model_dir(tmp_path):
    r = make(tmp_path)
    assert r.default("detect").id == "retinaface-mnet025-tiny"  # weights inside the package
    assert r.default("parse").id == "landmark-regions"
    assert r.default("stylize").id == "classical-cartoon"


def test_requested_model_never_falls_back_and_says_how_to_get_it(tmp_path):
    r = make(tmp_path, model_dir())
    with pytest.raises(ModelUnavailable) as e:
        r.resolve("animeganv2-face-paint-512-v2")
    msg = str(e.value)
    assert "face_paint_512_v2.pt" in msg and "face2paint models pull animeganv2-face-paint-512-v2" in msg
    with pytest.raises(ModelUnavailable, match="unknown model id"):
        r.resolve("no-such-model")


def test_corrupt_file_is_refused(tmp_path):
    src = model_dir() / "yunet_s_640_640.onnx"
    bad = tmp_path / "models"
    bad.mkdir()
    data = bytearray(src.read_bytes())
    data[100] ^= 0xFF
    (bad / src.name).write_bytes(bytes(data))
    r = make(tmp_path, bad)
    with pytest.raises(ModelUnavailable, match="sha256"):
        r.resolve("yunet-s-640")
    # ...and a default never picks a corrupt file.
    assert r.default("detect").id != "yunet-s-640"


@pytest.fixture
def http_server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(root), **k)  # noqa: E731
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def test_pull_downloads_and_verifies_sha256(tmp_path, http_server, monkeypatch):
    root, base = http_server
    src = model_dir() / "yunet_s_640_640.onnx"
    shutil.copy(src, root / "yunet.onnx")
    good = ModelSpec(id="test-yunet", stage="detect", runtime="opencv", file="y.onnx",
                     sha256=hashlib.sha256(src.read_bytes()).hexdigest(), urls=(f"{base}/yunet.onnx",))
    bad = ModelSpec(id="test-bad", stage="detect", runtime="opencv", file="b.onnx",
                    sha256="0" * 64, urls=(f"{base}/yunet.onnx",))
    monkeypatch.setitem(reg_mod.BY_ID, good.id, good)
    monkeypatch.setitem(reg_mod.BY_ID, bad.id, bad)
    r = make(tmp_path)
    path = r.pull("test-yunet")
    assert path.read_bytes() == src.read_bytes()
    assert r.resolve("test-yunet").source == "cache"
    with pytest.raises(ModelUnavailable, match="sha256"):
        r.pull("test-bad")
    assert not (r.cache_dir / "b.onnx").exists()
    assert not list(Path(r.cache_dir).glob(".pull-*"))
