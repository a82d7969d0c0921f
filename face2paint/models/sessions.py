"""How every runtime is created: one class per runtime, options (device, threads, precision) from
Settings, one selection rule.

Model wrappers (detect.py, parse.py, generators/) never construct an ONNX Runtime session, a
LiteRT interpreter, a torch device or an OpenCV network themselves: `loaders` opens a session
here and hands it to the wrapper, which only does the model's own pre- and post-processing.

Adding a runtime (an engine: OpenVINO, ONNX Runtime with CUDA or TensorRT providers, ...) is one
`Session` subclass plus its place in `SESSIONS`:

- `runtime` names the registry runtime whose model files it runs (`ModelSpec.runtime`); several
  classes may run the same files (an ONNX file on ONNX Runtime's CPU provider, or on CUDA);
- `supports(options)` is the selection rule: `open_session` takes the first class in `SESSIONS`
  with the model's runtime whose rule accepts the options (so put the specific ones first);
- `__init__(source, options)` creates the runtime object from a path or bytes (a module for
  torch) with the options' threads, device and precision.

A new option (an engine preference, a device id) is a new `RuntimeOptions` field; the model
cache keys loaded models by these options, so it needs nothing else. Graph I/O dtypes and
shapes are read from the model itself (`OrtSession.input_dtype`), not assumed.

Runtime packages are imported inside the classes: importing this module costs nothing, and the
API, which has none of them installed, may import the registry that imports it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..settings import Settings, get_settings
from .registry import ModelUnavailable

log = logging.getLogger("face2paint.models")

PRECISIONS = ("fp32", "fp16", "bf16")


class UnsupportedRuntime(ModelUnavailable):
    """No session class runs this model's runtime with these options; the message names the model."""


@dataclass(frozen=True)
class RuntimeOptions:
    """How a model runs. Hashable: the model cache's key is (model id, these options)."""

    device: str = "cpu"  # cpu | cuda | cuda:N
    threads: int = 1  # intra-op threads of one session
    precision: str = "fp32"  # float type where the runtime chooses it (torch); fp32 | fp16 | bf16

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.threads < 1:
            raise ValueError(f"threads must be at least 1, got {self.threads}")

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> "RuntimeOptions":
        s = settings or get_settings()
        return cls(device=s.model_device, threads=s.resolved_model_threads, precision=s.model_precision)

    @property
    def device_kind(self) -> str:
        """cpu or cuda, without the device index."""
        return self.device.split(":", 1)[0]

    def capped(self, max_threads: int | None) -> "RuntimeOptions":
        """At most max_threads (a model too small to use more), never fewer than one."""
        if max_threads is None or self.threads <= max_threads:
            return self
        return replace(self, threads=max(1, int(max_threads)))


class Session:
    """One runtime's handle on one model."""

    runtime: ClassVar[str]  # the registry runtime whose files this class runs
    devices: ClassVar[tuple[str, ...]] = ("cpu",)

    def __init__(self, options: RuntimeOptions):
        self.options = options

    @classmethod
    def supports(cls, options: RuntimeOptions) -> bool:
        """The selection rule: does this class run models with these options?"""
        return options.device_kind in cls.devices

    def describe(self) -> str:
        o = self.options
        return f"{type(self).__name__} {o.device} threads={o.threads}"


def _source_arg(source: str | Path | bytes) -> str | bytes:
    return source if isinstance(source, (bytes, bytearray)) else str(source)


# --- ONNX Runtime ---------------------------------------------------------------------------

# ONNX tensor element types as ONNX Runtime names them, to numpy.
_ORT_DTYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8, "tensor(int8)": np.int8, "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
}


class OrtSession(Session):
    """ONNX Runtime on its CPU provider: one intra-op pool of `threads`, no inter-op pool (the
    graphs here are chains; a second pool only steals cores from the other stages)."""

    runtime = "onnxruntime"
    providers: ClassVar[tuple[str, ...]] = ("CPUExecutionProvider",)

    def __init__(self, source: str | Path | bytes, options: RuntimeOptions):
        import onnxruntime as ort  # worker-only dependency

        super().__init__(options)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = options.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(
            _source_arg(source), sess_options=opts, providers=list(self.provider_list(options))
        )

    def provider_list(self, options: RuntimeOptions) -> list:
        """Providers (with their options) in order of preference; GPU subclasses override."""
        return list(self.providers)

    def get_inputs(self):
        return self.session.get_inputs()

    def get_outputs(self):
        return self.session.get_outputs()

    def run(self, output_names, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(output_names, feed)

    def input_dtype(self, index: int = 0) -> np.dtype:
        """The numpy dtype the graph's input takes (float16 I/O graphs exist)."""
        kind = self.session.get_inputs()[index].type
        try:
            return np.dtype(_ORT_DTYPES[kind])
        except KeyError:
            raise ValueError(f"unsupported ONNX input type {kind}") from None


# --- LiteRT (TFLite) ------------------------------------------------------------------------


class LiteRTSession(Session):
    """LiteRT (TFLite) interpreters with `threads` each. The model is kept as its file (or
    bytes); `interpreter()` builds an allocated interpreter for it, or for a patched copy of its
    bytes at another input shape (generators that resize their graph)."""

    runtime = "tflite"

    def __init__(self, source: str | Path | bytes, options: RuntimeOptions):
        super().__init__(options)
        self.path = None if isinstance(source, (bytes, bytearray)) else Path(source)
        self._bytes = bytes(source) if self.path is None else None
        if self.path is not None and not self.path.is_file():
            raise FileNotFoundError(f"no TFLite model at {self.path}")

    @property
    def model_bytes(self) -> bytes:
        if self._bytes is None:
            self._bytes = self.path.read_bytes()
        return self._bytes

    def interpreter(self, content: bytes | None = None, input_shape: list[int] | None = None,
                    input_index: int | None = None):
        from ai_edge_litert.interpreter import Interpreter  # heavy import only where used

        if content is None and self.path is not None:
            it = Interpreter(model_path=str(self.path), num_threads=self.options.threads)
        else:
            it = Interpreter(model_content=content or self.model_bytes, num_threads=self.options.threads)
        if input_shape is not None:
            it.resize_tensor_input(input_index, input_shape, strict=False)
        it.allocate_tensors()
        return it


# --- torch ----------------------------------------------------------------------------------

_torch_threads_lock = threading.Lock()
_TORCH_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


class TorchSession(Session):
    """A torch module on the options' device and float type, in eval mode without gradients.
    torch's CPU thread pool is process-wide: the session sets it to `threads` (torch's own
    default is the host's core count, which oversubscribes a CPU-limited container)."""

    runtime = "torch"
    devices = ("cpu", "cuda")

    def __init__(self, module, options: RuntimeOptions | None = None):
        import torch

        options = options or RuntimeOptions.from_settings()
        super().__init__(options)
        self.device = torch.device(options.device)
        self.dtype = getattr(torch, _TORCH_DTYPES[options.precision])
        if self.device.type == "cpu":
            with _torch_threads_lock:
                if torch.get_num_threads() != options.threads:
                    torch.set_num_threads(options.threads)
        self.module = module.to(device=self.device, dtype=self.dtype).eval()
        self.module.requires_grad_(False)

    @classmethod
    def supports(cls, options: RuntimeOptions) -> bool:
        if options.device_kind == "cpu":
            return True
        import torch

        return options.device_kind == "cuda" and torch.cuda.is_available()


# --- OpenCV DNN -----------------------------------------------------------------------------


class OpenCVSession(Session):
    """An ONNX file for OpenCV's DNN module (YuNet through cv2.FaceDetectorYN), on the CPU.
    OpenCV's thread pool is process-wide and serves every image operation, so it is left as is."""

    runtime = "opencv"

    def __init__(self, source: str | Path, options: RuntimeOptions):
        super().__init__(options)
        self.path = Path(source)
        if not self.path.is_file():
            raise FileNotFoundError(f"no model file at {self.path}")

    def backend_target(self) -> tuple[int, int]:
        import cv2

        return cv2.dnn.DNN_BACKEND_DEFAULT, cv2.dnn.DNN_TARGET_CPU

    def face_detector_yn(self, score_threshold: float, nms_threshold: float, top_k: int):
        import cv2

        backend, target = self.backend_target()
        # OpenCV 5's graph engine warns that it ignores the default target on every create;
        # silence just that call.
        logging_ = getattr(getattr(cv2, "utils", None), "logging", None)
        level = logging_.getLogLevel() if logging_ else None
        if logging_:
            logging_.setLogLevel(logging_.LOG_LEVEL_ERROR)
        try:
            return cv2.FaceDetectorYN.create(str(self.path), "", (320, 320), score_threshold,
                                             nms_threshold, top_k, backend, target)
        finally:
            if logging_:
                logging_.setLogLevel(level)


# --- selection ------------------------------------------------------------------------------

# First match wins: put a specific class (a GPU provider) before the general one it refines.
SESSIONS: list[type[Session]] = [OrtSession, LiteRTSession, TorchSession, OpenCVSession]


def session_class(runtime: str, options: RuntimeOptions, model_id: str = "") -> type[Session]:
    """The session class that runs `runtime` with `options`, or UnsupportedRuntime naming the model."""
    name = f"model {model_id}" if model_id else "this model"
    candidates = [c for c in SESSIONS if c.runtime == runtime]
    if not candidates:
        known = ", ".join(sorted({c.runtime for c in SESSIONS}))
        raise UnsupportedRuntime(f"{name} needs the runtime {runtime!r}, which face2paint does not "
                                 f"have (runtimes: {known}); choose another model")
    for cls in candidates:
        if cls.supports(options):
            return cls
    devices = sorted({d for c in candidates for d in c.devices})
    raise UnsupportedRuntime(f"{name} runs on {runtime}, which has no session for device "
                             f"{options.device!r} here (devices: {', '.join(devices)}); set "
                             f"FACE2PAINT_MODEL_DEVICE to one of them")


def open_session(runtime: str, source: Any, options: RuntimeOptions | None = None, *,
                 model_id: str = "", max_threads: int | None = None) -> Session:
    """A session for a model file (path or bytes; a module for torch) of `runtime`. Options
    default to Settings'; `max_threads` caps threads for a model too small to use more."""
    options = (options or RuntimeOptions.from_settings()).capped(max_threads)
    cls = session_class(runtime, options, model_id)
    return cls(source, options)
