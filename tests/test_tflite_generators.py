"""TFLite (and ONNX) image-to-image generators on real weights and a real photo."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from tests import helpers
from face2paint.models.generators.tflite import OnnxGenerator, TFLiteGenerator
from face2paint.models.sessions import open_session

# file -> (colour order, size argument)
MODELS = {
    "animeganv2_hayao_int8.tflite": ("RGB", None),
    "whitebox_cartoon_int8.tflite": ("BGR", 512),
    "whitebox_cartoon_dr.tflite": ("BGR", 512),
}


def _model(name: str) -> Path:
    return helpers.model_file(name)


def _tflite(name: str, model_id: str, **kw) -> TFLiteGenerator:
    return TFLiteGenerator(open_session("tflite", _model(name)), model_id, **kw)


def _onnx(path: Path, model_id: str, **kw) -> OnnxGenerator:
    return OnnxGenerator(open_session("onnxruntime", path), model_id, **kw)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    from PIL import Image

    d = Path(os.environ.get("FACE2PAINT_FACES_DIR",
                            Path(__file__).resolve().parents[2] / "shared" / "faces"))
    if not (d / "sk_astronaut.png").is_file():
        pytest.skip(f"sk_astronaut.png not found in {d} (set FACE2PAINT_FACES_DIR)")
    return np.asarray(Image.open(d / "sk_astronaut.png").convert("RGB"))


def _assert_stylized(x: np.ndarray, y: np.ndarray) -> None:
    assert y.shape == x.shape and y.dtype == np.uint8
    xf, yf = x.astype(np.float64), y.astype(np.float64)
    # Changed meaningfully ...
    assert np.abs(xf - yf).mean() > 8.0
    # ... but still the same picture (not noise, not a flat image, not shifted).
    gx, gy = xf.mean(2).ravel(), yf.mean(2).ravel()
    assert np.corrcoef(gx, gy)[0, 1] > 0.7
    # Colour order kept: channel means follow the input's (an R/B swap moves them ~45 here).
    assert np.abs(xf.reshape(-1, 3).mean(0) - yf.reshape(-1, 3).mean(0)).max() < 25.0
    assert (yf[..., 0].mean() - yf[..., 2].mean()) * (xf[..., 0].mean() - xf[..., 2].mean()) > 0


@pytest.mark.parametrize("name", list(MODELS))
def test_generator_keeps_size_and_stylizes(name: str, astronaut: np.ndarray):
    color, size = MODELS[name]
    gen = _tflite(name, name, color=color, size=size)
    x = astronaut[37:37 + 301, 60:60 + 397]  # odd, non-square: exercises pad / resize paths
    _assert_stylized(x, gen(x))


def test_whitebox_is_fixed_size_and_bgr(astronaut: np.ndarray):
    gen = _tflite("whitebox_cartoon_int8.tflite", "whitebox", color="BGR")
    # size=None probes: the guided filter's baked shapes make it fixed at 512.
    assert not gen.resizable and gen.fixed_hw == (512, 512)
    y = gen(astronaut)
    _assert_stylized(astronaut, y)
    # Fed as RGB, the network sees the suit blue; its output is then not the same image.
    wrong = _tflite("whitebox_cartoon_int8.tflite", "whitebox", color="RGB", size=512)(astronaut)
    assert np.abs(wrong.astype(int) - y.astype(int)).mean() > 3.0


def test_hayao_resizes_to_the_image(astronaut: np.ndarray):
    """The graph bakes its upsampling sizes; the runtime patches them per input size."""
    gen = _tflite("animeganv2_hayao_int8.tflite", "hayao")
    assert gen.resizable and gen.fixed_hw is None
    y512 = gen(astronaut)  # runs at 512², not at the file's 256²
    _assert_stylized(astronaut, y512)
    assert (512, 512) in gen._cache
    gen(astronaut)
    assert list(gen._cache).count((512, 512)) == 1  # interpreter reused
    # A real 512² pass has detail a 256² pass upscaled cannot have.
    fixed = _tflite("animeganv2_hayao_int8.tflite", "hayao", size=256)
    y256 = fixed(astronaut)

    def detail(img: np.ndarray) -> float:
        g = img.astype(np.float64).mean(2)
        return float(np.abs(np.diff(g, axis=0)).mean() + np.abs(np.diff(g, axis=1)).mean())

    assert detail(y512) > 1.15 * detail(y256)  # measured 1.37


# ---------------------------------------------------------------------------------------------
# ONNX path, on a tiny hand-encoded model (y = -x, NCHW, dynamic H/W): no model file needed.


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(num: int, value) -> bytes:
    if isinstance(value, int):
        return _varint(num << 3) + _varint(value)
    if isinstance(value, str):
        value = value.encode()
    return _varint(num << 3 | 2) + _varint(len(value)) + value


def _neg_onnx() -> bytes:
    def dim(v):
        return _field(1, _field(1, v) if isinstance(v, int) else _field(2, v))

    shape = b"".join(dim(v) for v in (1, 3, "h", "w"))
    ttype = _field(1, _field(1, 1) + _field(2, shape))  # TypeProto.tensor_type, FLOAT
    node = _field(1, "x") + _field(2, "y") + _field(4, "Neg")
    graph = (_field(1, node) + _field(2, "neg") + _field(11, _field(1, "x") + _field(2, ttype))
             + _field(12, _field(1, "y") + _field(2, ttype)))
    return _field(1, 8) + _field(8, _field(1, "") + _field(2, 17)) + _field(7, graph)


def test_onnx_generator_roundtrip(tmp_path: Path):
    pytest.importorskip("onnxruntime")
    path = tmp_path / "neg.onnx"
    path.write_bytes(_neg_onnx())
    img = np.random.default_rng(0).integers(0, 256, (37, 29, 3), dtype=np.uint8)
    gen = _onnx(path, "neg")
    assert gen.resizable
    # -(x/127.5 - 1) mapped back is 255 - x; BGR round trip must not move channels.
    expected = 255 - img.astype(int)
    assert np.abs(gen(img).astype(int) - expected).max() <= 1
    assert np.abs(_onnx(path, "neg", color="BGR")(img).astype(int) - expected).max() <= 1
    fixed = _onnx(path, "neg", size=64)(img)
    assert fixed.shape == img.shape
