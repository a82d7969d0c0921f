"""Runtime selection in the session layer: which engine runs a model on which device, with what
float type, and that every fallback says so.

The CPU's flags, a missing OpenVINO and onnxruntime's provider list are simulated (the flags
reader, sys.modules, the provider list); the sessions opened are real. The precision checks use
real photo crops from ../shared/faces and the AnimeGANv3 weights, skipped when absent.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pytest

from face2paint.models import sessions
from face2paint.models.sessions import (OpenVINOSession, OrtCudaSession, OrtSession,
                                        OrtTensorRTSession, RuntimeOptions, UnsupportedRuntime,
                                        open_session, resolved_precision, session_class)
from face2paint.settings import Settings

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

MODELS = Path(__file__).resolve().parents[2] / "shared" / "models"
FACES = Path(__file__).resolve().parents[2] / "shared" / "faces"
NO_BF16 = {"fpu", "sse2", "avx2", "avx512f", "avx512_vnni"}
BF16 = NO_BF16 | {"avx512_bf16"}
AMX = NO_BF16 | {"amx_bf16", "amx_tile"}


def _has_openvino() -> bool:
    return OpenVINOSession.unavailable(RuntimeOptions()) is None


needs_openvino = pytest.mark.skipif(not _has_openvino(), reason="openvino is not installed")


@pytest.fixture
def tiny_onnx(tmp_path) -> Path:
    """A small random-weight AnimeGANv2 generator exported to ONNX."""
    from face2paint.models.generators.animegan import Generator, export_onnx

    torch.manual_seed(0)
    gen = Generator().eval()
    return export_onnx(gen, tmp_path / "g.onnx")


def _flags(monkeypatch, flags: set[str]) -> None:
    monkeypatch.setattr(sessions, "cpu_flags", lambda: set(flags))


def _providers(monkeypatch, providers: list[str]) -> None:
    monkeypatch.setattr(sessions, "ort_providers", lambda: list(providers))


# --- precision ------------------------------------------------------------------------------


@pytest.mark.parametrize("flags, expected", [(NO_BF16, "fp32"), (BF16, "bf16"), (AMX, "bf16")])
def test_openvino_computes_bf16_only_on_a_cpu_with_bf16_units(monkeypatch, flags, expected):
    _flags(monkeypatch, flags)
    assert resolved_precision(RuntimeOptions(), OpenVINOSession) == expected
    # Asking for bf16 on a CPU without it would emulate bf16, slower than fp32: fp32 it is.
    assert resolved_precision(RuntimeOptions(precision="bf16"), OpenVINOSession) == expected
    assert resolved_precision(RuntimeOptions(precision="fp32"), OpenVINOSession) == "fp32"
    # ONNX Runtime's CPU provider and torch stay fp32 unless asked.
    assert resolved_precision(RuntimeOptions(), OrtSession) == "fp32"
    assert resolved_precision(RuntimeOptions(device="cuda"), OrtCudaSession) == "fp16"


def test_settings_choose_precision_engine_threads_and_processes(tmp_path, monkeypatch):
    s = Settings(home=tmp_path, model_precision="fp32", model_runtime="onnxruntime", model_threads=3,
                 worker_processes=5)
    o = RuntimeOptions.from_settings(s)
    assert (o.precision, o.engine, o.threads) == ("fp32", "onnxruntime", 3)
    assert s.resolved_worker_processes == 5
    monkeypatch.setattr("face2paint.settings.cores_available", lambda: 16)
    d = Settings(home=tmp_path)
    assert (d.model_precision, d.model_runtime) == ("auto", "auto")
    assert (d.resolved_model_threads, d.resolved_worker_processes) == (4, 4)
    assert Settings(home=tmp_path, model_device="cuda:1").resolved_worker_processes == 1
    monkeypatch.setattr("face2paint.settings.cores_available", lambda: 2)
    assert (Settings(home=tmp_path).resolved_model_threads,
            Settings(home=tmp_path).resolved_worker_processes) == (2, 1)
    with pytest.raises(ValueError, match="engine must be one of"):
        RuntimeOptions(engine="tpu")


@needs_openvino
def test_a_cpu_without_bf16_gets_openvino_fp32(monkeypatch, tiny_onnx):
    _flags(monkeypatch, NO_BF16)
    s = open_session("onnxruntime", tiny_onnx, RuntimeOptions(threads=1), model_id="m")
    assert isinstance(s, OpenVINOSession)
    assert s.runtime_used == "OpenVINO CPU fp32"
    assert s.compiled.get_property("INFERENCE_PRECISION_HINT").to_string() == "f32"


@needs_openvino
def test_a_cpu_with_bf16_gets_openvino_bf16(monkeypatch, tiny_onnx):
    # What OpenVINO compiles depends on the real CPU, not the faked flags: on one without
    # bf16 units it keeps f32 whatever the hint.
    real = "bf16" if cpu_has_bf16_here() else "f32"
    _flags(monkeypatch, BF16)
    s = open_session("onnxruntime", tiny_onnx, RuntimeOptions(threads=1), model_id="m")
    assert s.runtime_used == "OpenVINO CPU bf16" and s.fallback_reason is None
    assert s.compiled.get_property("INFERENCE_PRECISION_HINT").to_string() == real


# --- fallbacks ------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["auto", "openvino"])
def test_a_missing_openvino_falls_back_to_onnxruntime_and_says_so(monkeypatch, caplog, tiny_onnx,
                                                                   engine):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` raises ImportError
    with caplog.at_level(logging.WARNING, logger="face2paint.models"):
        s = open_session("onnxruntime", tiny_onnx, RuntimeOptions(threads=1, engine=engine),
                         model_id="gen-1")
    assert type(s) is OrtSession
    assert "OpenVINO is not installed" in s.fallback_reason
    assert s.describe().startswith("ONNX Runtime CPU fp32 cpu threads=1 (fallback: OpenVINO is not")
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "gen-1" in warned[0] and "OpenVINO is not installed" in warned[0]
    x = np.zeros((1, 3, 32, 32), np.float32)
    assert s.run(None, {"input": x})[0].shape == (1, 3, 32, 32)


@needs_openvino
def test_a_graph_openvino_cannot_compile_falls_back(monkeypatch, caplog, tiny_onnx):
    class Broken(OpenVINOSession):
        def __init__(self, source, options):
            raise RuntimeError("Exception from src/inference: unsupported op Foo\nmore detail")

    monkeypatch.setattr(sessions, "SESSIONS", [Broken if c is OpenVINOSession else c
                                               for c in sessions.SESSIONS])
    with caplog.at_level(logging.WARNING, logger="face2paint.models"):
        s = open_session("onnxruntime", tiny_onnx, RuntimeOptions(threads=1), model_id="gen-2")
    assert type(s) is OrtSession
    assert s.fallback_reason == ("OpenVINO CPU could not open it (Exception from src/inference: "
                                 "unsupported op Foo)")


def test_explicit_onnxruntime_engine_skips_openvino_silently(caplog, tiny_onnx):
    with caplog.at_level(logging.WARNING, logger="face2paint.models"):
        s = open_session("onnxruntime", tiny_onnx, RuntimeOptions(engine="onnxruntime"))
    assert type(s) is OrtSession and s.fallback_reason is None and not caplog.records


# --- GPU providers --------------------------------------------------------------------------


def test_cuda_and_tensorrt_are_chosen_only_when_their_providers_exist(monkeypatch):
    cuda = RuntimeOptions(device="cuda:1")
    _providers(monkeypatch, ["CPUExecutionProvider"])
    assert session_class("onnxruntime", RuntimeOptions()) in (OpenVINOSession, OrtSession)
    with pytest.raises(UnsupportedRuntime, match=r"model m-1 runs on onnxruntime.*'cuda:1'.*"
                                                 r"no CUDAExecutionProvider"):
        open_session("onnxruntime", b"", cuda, model_id="m-1")

    _providers(monkeypatch, ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert session_class("onnxruntime", cuda) is OrtCudaSession
    assert session_class("onnxruntime", RuntimeOptions(device="cuda", engine="tensorrt")) is OrtCudaSession

    _providers(monkeypatch, ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                             "CPUExecutionProvider"])
    assert session_class("onnxruntime", cuda) is OrtTensorRTSession
    # Asking for plain CUDA skips TensorRT (its engine builds take minutes).
    assert session_class("onnxruntime", RuntimeOptions(device="cuda", engine="cuda")) is OrtCudaSession
    # A CPU device never takes a GPU provider.
    assert session_class("onnxruntime", RuntimeOptions()) in (OpenVINOSession, OrtSession)


def test_gpu_provider_options_name_the_device_and_fp16(monkeypatch, tmp_path):
    monkeypatch.setenv("FACE2PAINT_HOME", str(tmp_path))
    sessions.get_settings.cache_clear()
    try:
        cuda = OrtCudaSession.provider_list(None, RuntimeOptions(device="cuda:1"))
        assert cuda[0] == ("CUDAExecutionProvider", {"device_id": 1})
        trt = OrtTensorRTSession.provider_list(OrtTensorRTSession, RuntimeOptions(device="cuda:2"))
        assert trt[0][0] == "TensorrtExecutionProvider"
        assert trt[0][1]["device_id"] == 2 and trt[0][1]["trt_fp16_enable"] is True
        fp32 = OrtTensorRTSession.provider_list(OrtTensorRTSession,
                                                RuntimeOptions(device="cuda", precision="fp32"))
        assert fp32[0][1]["trt_fp16_enable"] is False
    finally:
        sessions.get_settings.cache_clear()


# --- the AnimeGANv2 export --------------------------------------------------------------------


@pytest.mark.parametrize("upsample", ["align_corners", "tf"])
def test_exported_animeganv2_equals_torch(tmp_path, upsample):
    """Random weights (seeded, scaled so activations are not degenerate), at two sizes other
    than the export's: the ONNX graph has no baked size and matches torch on both engines."""
    from face2paint.models.generators.animegan import Generator, cached_onnx

    torch.manual_seed(1)
    gen = Generator(upsample=upsample).eval()
    for p in gen.parameters():
        p.data.normal_(0, 0.1)
    weights = tmp_path / "w.pt"
    torch.save(gen.state_dict(), weights)
    path = cached_onnx(gen, weights, tmp_path / "onnx")
    assert cached_onnx(gen, weights, tmp_path / "onnx") == path  # exported once
    engines = ["onnxruntime"] + (["openvino"] if _has_openvino() else [])
    for engine in engines:
        s = open_session("onnxruntime", path, RuntimeOptions(engine=engine, precision="fp32"))
        for hw in ((128, 96), (196, 148)):
            x = torch.rand(1, 3, *hw) * 2 - 1
            with torch.no_grad():
                ref = gen(x).numpy()
            y = s.run(None, {"input": x.numpy()})[0]
            assert y.shape == ref.shape
            np.testing.assert_allclose(y, ref, atol=1e-4)


def test_animeganv2_loader_runs_the_export_on_the_onnx_layer(tmp_path, monkeypatch):
    from face2paint.models import loaders
    from face2paint.models.generators.animegan import AnimeGANStylizer, Generator
    from face2paint.models.generators.tflite import OnnxGenerator
    from face2paint.models.registry import Resolved, get_spec

    torch.manual_seed(2)
    weights = tmp_path / "models" / "face_paint_512_v2.pt"
    weights.parent.mkdir()
    torch.save(Generator().state_dict(), weights)
    monkeypatch.setenv("FACE2PAINT_HOME", str(tmp_path))
    sessions.get_settings.cache_clear()
    try:
        # Random weights have not the recorded git blob id: resolved by hand, not by the registry.
        resolved = Resolved(get_spec("animeganv2-face-paint-512-v2"), "model_dir", path=weights)
        model = loaders.build(resolved, RuntimeOptions(threads=1))
        assert isinstance(model, OnnxGenerator)
        assert list((tmp_path / "models" / "onnx").glob("face_paint_512_v2-*.onnx"))
        torch_model = loaders.build(resolved, RuntimeOptions(threads=1, engine="torch"))
        assert isinstance(torch_model, AnimeGANStylizer)
        img = np.random.default_rng(0).integers(0, 256, (70, 90, 3), np.uint8)  # not multiples of 4
        a, b = model(img), torch_model(img)
        assert a.shape == b.shape == img.shape
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 2
    finally:
        sessions.get_settings.cache_clear()


# --- reduced precision on a real photo ------------------------------------------------------


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def real_crop(side: int = 256) -> np.ndarray:
    from face2paint.models.image_io import load_image

    path = FACES / "sk_astronaut.png"
    if not path.is_file():
        pytest.skip(f"no photo at {path}")
    img = load_image(path).rgb
    return np.ascontiguousarray(img[40:40 + side, 130:130 + side])  # the face and some hair


@needs_openvino
@pytest.mark.parametrize("file, model_id", [("AnimeGANv3_tiny_Cute.onnx", "animeganv3-cute"),
                                            ("AnimeGANv3_JP_face_v1.0_fp16.onnx", "animeganv3-jp-face")])
def test_openvino_bf16_is_within_40db_of_fp32_on_a_real_crop(file, model_id):
    if not cpu_has_bf16_here():
        pytest.skip("this CPU has no bf16 units (OpenVINO runs fp32 here)")
    if not (MODELS / file).is_file():
        pytest.skip(f"no {file} in {MODELS}")
    from face2paint.models.generators.tflite import OnnxGenerator

    crop = real_crop()[:250, :243]  # odd sizes: padded to the model's multiple, cropped back
    out = {}
    for precision in ("fp32", "bf16"):
        s = open_session("onnxruntime", MODELS / file, RuntimeOptions(threads=2, precision=precision,
                                                                      engine="openvino"))
        assert s.runtime_used == f"OpenVINO CPU {precision}"
        out[precision] = OnnxGenerator(s, model_id, pad_multiple=16)(crop)
    assert out["fp32"].shape == crop.shape
    assert psnr(out["bf16"], out["fp32"]) >= 40.0


def cpu_has_bf16_here() -> bool:
    return sessions.cpu_has_bf16()


@needs_openvino
@pytest.mark.parametrize("file, model_id, multiple", [("AnimeGANv3_tiny_Cute.onnx", "animeganv3-cute", 16),
                                                      ("AnimeGANv3_Hayao_36_fp16.onnx", "animeganv3-hayao", 8)])
def test_v3_models_take_any_size_through_openvino(file, model_id, multiple):
    """Odd sizes are reflect-padded to the model's multiple and cropped back; tiny images (a
    14x25 GIF) are padded up to a minimum side, where OpenVINO would refuse a 1-pixel reflect pad."""
    if not (MODELS / file).is_file():
        pytest.skip(f"no {file} in {MODELS}")
    from face2paint.models.generators.tflite import OnnxGenerator

    s = open_session("onnxruntime", MODELS / file, RuntimeOptions(threads=1), model_id=model_id)
    gen = OnnxGenerator(s, model_id, pad_multiple=multiple)
    rng = np.random.default_rng(0)
    for hw in ((14, 25), (37, 70), (121, 83)):
        img = rng.integers(0, 256, (*hw, 3), np.uint8)
        out = gen(img)
        assert out.shape == img.shape and out.dtype == np.uint8
