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

Selection (`SESSIONS`, first match wins): ONNX files run on TensorRT, then CUDA, where the
device is cuda and onnxruntime has those providers; on the CPU on OpenVINO (bf16 where
/proc/cpuinfo has avx512_bf16 or amx_bf16, `resolved_precision`), then ONNX Runtime's CPU
provider. `RuntimeOptions.engine` (Settings.model_runtime) names a preferred engine. A class
that is not installed, lacks its provider or fails to compile the graph is skipped with one
warning line naming why, kept in the session's `fallback_reason`; `describe()` and
`runtime_used` say what actually runs ("OpenVINO CPU bf16 cpu threads=2"). A GPU device never
falls back to the CPU: that is an error naming the model and the missing provider.

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

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
# Engine preferences (Settings.model_runtime). "auto": the fastest engine present for the device
# (OpenVINO on CPU, then ONNX Runtime; TensorRT, then CUDA on GPUs); a named engine is tried first
# and falls back, with a warning, to the plain runtime of the model's files.
ENGINES = ("auto", "openvino", "onnxruntime", "cuda", "tensorrt", "torch")


class UnsupportedRuntime(ModelUnavailable):
    """No session class runs this model's runtime with these options; the message names the model."""


@dataclass(frozen=True)
class RuntimeOptions:
    """How a model runs. Hashable: the model cache's key is (model id, these options)."""

    device: str = "cpu"  # cpu | cuda | cuda:N
    threads: int = 1  # intra-op threads of one session
    # Float type of the arithmetic: auto (bf16 on CPUs with bf16 units for OpenVINO, fp16 on GPUs,
    # fp32 otherwise) | fp32 | fp16 | bf16. Each session resolves it (`resolved_precision`).
    precision: str = "auto"
    engine: str = "auto"  # one of ENGINES

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.threads < 1:
            raise ValueError(f"threads must be at least 1, got {self.threads}")

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> "RuntimeOptions":
        s = settings or get_settings()
        return cls(device=s.model_device, threads=s.resolved_model_threads, precision=s.model_precision,
                   engine=s.model_runtime)

    @property
    def device_index(self) -> int:
        return int(self.device.split(":", 1)[1]) if ":" in self.device else 0

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
    # The engine preferences this class serves (RuntimeOptions.engine); "*": any.
    engines: ClassVar[tuple[str, ...]] = ("*",)
    label: ClassVar[str] = ""  # what `describe` calls the engine: "OpenVINO CPU", ...

    def __init__(self, options: RuntimeOptions):
        self.options = options
        # Set by open_session when a preferred engine was skipped: why, in one line.
        self.fallback_reason: str | None = None

    @classmethod
    def supports(cls, options: RuntimeOptions) -> bool:
        """The selection rule: does this class run models with these options?"""
        return options.device_kind in cls.devices and ("*" in cls.engines or options.engine in cls.engines)

    @classmethod
    def unavailable(cls, options: RuntimeOptions) -> str | None:
        """Why this class cannot run here (a package or provider missing), or None."""
        return None

    @property
    def precision_used(self) -> str:
        return resolved_precision(self.options, type(self))

    @property
    def runtime_used(self) -> str:
        """The engine and float type that actually run the model: 'OpenVINO CPU bf16'."""
        return f"{self.label or type(self).__name__} {self.precision_used}"

    def describe(self) -> str:
        o = self.options
        text = f"{self.runtime_used} {o.device} threads={o.threads}"
        return f"{text} (fallback: {self.fallback_reason})" if self.fallback_reason else text


def cpu_flags() -> set[str]:
    """The CPU feature flags of /proc/cpuinfo (empty where there is none: not Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
FP16_FLAGS = frozenset({"avx512_fp16", "amx_fp16"})


def cpu_has_bf16(flags: set[str] | None = None) -> bool:
    """Whether the CPU computes bf16 natively (AVX512_BF16 or AMX): without it a bf16 hint is
    emulated and slower than fp32."""
    return bool(BF16_FLAGS & (cpu_flags() if flags is None else flags))


def resolved_precision(options: RuntimeOptions, cls: type | None = None) -> str:
    """The float type a session of `cls` computes in for `options` (auto resolved). GPUs: fp16
    for auto. CPU: OpenVINO takes bf16 (auto, or asked) only where the CPU has bf16 units and
    fp16 only with AVX512_FP16/AMX-FP16; every other CPU engine computes fp32 unless asked."""
    p = options.precision
    if options.device_kind == "cuda":
        return "fp16" if p == "auto" else p
    if cls is not None and issubclass(cls, OpenVINOSession):
        flags = cpu_flags()
        if p in ("auto", "bf16"):
            return "bf16" if cpu_has_bf16(flags) else "fp32"
        if p == "fp16":
            return "fp16" if FP16_FLAGS & flags else "fp32"
        return p
    if cls is not None and issubclass(cls, TorchSession):
        return "fp32" if p == "auto" else p
    return "fp32" if cls is not None and issubclass(cls, OrtSession) else ("fp32" if p == "auto" else p)


def _source_arg(source: str | Path | bytes) -> str | bytes:
    return source if isinstance(source, (bytes, bytearray)) else str(source)


# --- ONNX Runtime ---------------------------------------------------------------------------

# ONNX tensor element types as ONNX Runtime names them, to numpy.
_ORT_DTYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8, "tensor(int8)": np.int8, "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
}


def ort_providers() -> list[str]:
    """The execution providers this onnxruntime build has (CUDA and TensorRT only in -gpu builds)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return list(ort.get_available_providers())


class OrtSession(Session):
    """ONNX Runtime on its CPU provider: one intra-op pool of `threads`, no inter-op pool (the
    graphs here are chains; a second pool only steals cores from the other stages). The plain
    fallback for ONNX files: it serves every engine preference on the CPU."""

    runtime = "onnxruntime"
    label = "ONNX Runtime CPU"
    engines = ("auto", "onnxruntime", "openvino", "cuda", "tensorrt", "torch")
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

    @classmethod
    def unavailable(cls, options: RuntimeOptions) -> str | None:
        have = ort_providers()
        if not have:
            return "onnxruntime is not installed (pip install 'face2paint[worker]')"
        missing = [p for p in cls.providers if p not in have]
        return f"onnxruntime here has no {', '.join(missing)} (install onnxruntime-gpu)" if missing else None

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
        kind = self.get_inputs()[index].type
        try:
            return np.dtype(_ORT_DTYPES[kind])
        except KeyError:
            raise ValueError(f"unsupported ONNX input type {kind}") from None


class OrtCudaSession(OrtSession):
    """ONNX Runtime's CUDA execution provider on device N (cuda:N), CPU for the ops it lacks.
    fp16 is the file's own float type: fp16 graphs (AnimeGANv3, the fp16 export of AnimeGANv2)
    run in fp16, fp32 graphs in fp32 with TF32 convolutions."""

    label = "ONNX Runtime CUDA"
    devices = ("cuda",)
    engines = ("auto", "onnxruntime", "cuda", "tensorrt", "openvino", "torch")
    providers = ("CUDAExecutionProvider", "CPUExecutionProvider")

    def provider_list(self, options: RuntimeOptions) -> list:
        return [("CUDAExecutionProvider", {"device_id": options.device_index}), "CPUExecutionProvider"]


class OrtTensorRTSession(OrtSession):
    """ONNX Runtime's TensorRT execution provider (fp16 unless fp32 is asked for), with its
    engines cached on disk: building one takes minutes, once per model and shape."""

    label = "ONNX Runtime TensorRT"
    devices = ("cuda",)
    engines = ("auto", "tensorrt")
    providers = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")

    def provider_list(self, options: RuntimeOptions) -> list:
        cache = get_settings().resolved_model_cache_dir / "tensorrt"
        cache.mkdir(parents=True, exist_ok=True)
        trt = {"device_id": options.device_index, "trt_engine_cache_enable": True,
               "trt_engine_cache_path": str(cache),
               "trt_fp16_enable": resolved_precision(options, type(self)) != "fp32"}
        return [("TensorrtExecutionProvider", trt),
                ("CUDAExecutionProvider", {"device_id": options.device_index}), "CPUExecutionProvider"]


# --- OpenVINO -------------------------------------------------------------------------------

_OV_TYPES = {"f32": "tensor(float)", "f16": "tensor(float16)", "f64": "tensor(double)",
             "u8": "tensor(uint8)", "i8": "tensor(int8)", "i32": "tensor(int32)", "i64": "tensor(int64)"}
_OV_HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}


@dataclass(frozen=True)
class _Port:
    """An input or output as ONNX Runtime describes one (name, shape with None for dynamic
    dimensions, 'tensor(float16)'), so wrappers read either engine the same way."""

    name: str
    shape: list
    type: str


def _import_openvino():
    import openvino  # worker-only dependency; optional (ONNX Runtime is the fallback)

    return openvino


class OpenVINOSession(Session):
    """OpenVINO on the CPU for ONNX files: `threads` inference threads, one stream, the latency
    hint, and bf16 arithmetic where the CPU has bf16 units (`resolved_precision`). Graph inputs
    and outputs keep the file's types (float16 I/O stays float16). One infer request, guarded by
    a lock: a request is not re-entrant, and the wrappers call it one image at a time."""

    runtime = "onnxruntime"
    label = "OpenVINO CPU"
    engines = ("auto", "openvino")

    def __init__(self, source: str | Path | bytes, options: RuntimeOptions):
        ov = _import_openvino()
        super().__init__(options)
        core = ov.Core()
        model = core.read_model(bytes(source) if isinstance(source, (bytes, bytearray)) else str(source))
        config = {
            "INFERENCE_NUM_THREADS": options.threads,
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": _OV_HINTS[self.precision_used],
            # Containers share cores with other processes: pinning threads to cores hurts there.
            "ENABLE_CPU_PINNING": False,
        }
        self.compiled = core.compile_model(model, "CPU", config)
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()
        self._inputs = [self._port(p) for p in self.compiled.inputs]
        self._outputs = [self._port(p) for p in self.compiled.outputs]

    @classmethod
    def unavailable(cls, options: RuntimeOptions) -> str | None:
        try:
            _import_openvino()
        except ImportError as exc:
            return f"OpenVINO is not installed ({exc}; pip install 'face2paint[worker]')"
        return None

    @staticmethod
    def _port(p) -> _Port:
        shape = [d.get_length() if d.is_static else None for d in p.get_partial_shape()]
        names = p.get_names()
        name = p.get_any_name() if names else str(p.get_index())
        return _Port(name, shape, _OV_TYPES.get(p.get_element_type().get_type_name(), "tensor(float)"))

    def get_inputs(self):
        return list(self._inputs)

    def get_outputs(self):
        return list(self._outputs)

    def run(self, output_names, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        with self._lock:
            results = self._request.infer({k: np.ascontiguousarray(v) for k, v in feed.items()})
            outs = [np.array(results[port]) for port in self.compiled.outputs]  # copies
        if output_names is None:
            return outs
        by_name = {p.name: o for p, o in zip(self._outputs, outs)}
        return [by_name[n] for n in output_names]

    input_dtype = OrtSession.input_dtype


# --- LiteRT (TFLite) ------------------------------------------------------------------------


class LiteRTSession(Session):
    """LiteRT (TFLite) interpreters with `threads` each. The model is kept as its file (or
    bytes); `interpreter()` builds an allocated interpreter for it, or for a patched copy of its
    bytes at another input shape (generators that resize their graph)."""

    runtime = "tflite"
    label = "LiteRT CPU"

    @property
    def runtime_used(self) -> str:
        return "LiteRT CPU (the file's own types: int8, fp16 or fp32)"

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
    label = "torch"
    devices = ("cpu", "cuda")

    def __init__(self, module, options: RuntimeOptions | None = None):
        import torch

        options = options or RuntimeOptions.from_settings()
        super().__init__(options)
        self.device = torch.device(options.device)
        self.dtype = getattr(torch, _TORCH_DTYPES[resolved_precision(options, TorchSession)])
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
    label = "OpenCV DNN CPU"

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

# First match wins: put a specific class (a GPU provider, a faster engine) before the general
# one it refines. For ONNX files on a CPU: OpenVINO, then ONNX Runtime; on a GPU: TensorRT, then
# CUDA (no silent move to the CPU: a GPU worker without its provider is a deployment error).
SESSIONS: list[type[Session]] = [OrtTensorRTSession, OrtCudaSession, OpenVINOSession, OrtSession,
                                 LiteRTSession, TorchSession, OpenCVSession]


def session_classes(runtime: str, options: RuntimeOptions, model_id: str = "") -> list[type[Session]]:
    """The session classes that may run `runtime` files with `options`, best first (whether each
    is installed is checked when opening); UnsupportedRuntime naming the model when none."""
    name = f"model {model_id}" if model_id else "this model"
    candidates = [c for c in SESSIONS if c.runtime == runtime]
    if not candidates:
        known = ", ".join(sorted({c.runtime for c in SESSIONS}))
        raise UnsupportedRuntime(f"{name} needs the runtime {runtime!r}, which face2paint does not "
                                 f"have (runtimes: {known}); choose another model")
    chosen = [c for c in candidates if c.supports(options)]
    if not chosen:
        devices = sorted({d for c in candidates for d in c.devices})
        raise UnsupportedRuntime(f"{name} runs on {runtime}, which has no session for device "
                                 f"{options.device!r} here (devices: {', '.join(devices)}); set "
                                 f"FACE2PAINT_MODEL_DEVICE to one of them")
    return chosen


def session_class(runtime: str, options: RuntimeOptions, model_id: str = "") -> type[Session]:
    """The first session class that runs `runtime` with `options` and is installed here."""
    classes = session_classes(runtime, options, model_id)
    for cls in classes:
        if cls.unavailable(options) is None:
            return cls
    return classes[-1]


def open_session(runtime: str, source: Any, options: RuntimeOptions | None = None, *,
                 model_id: str = "", max_threads: int | None = None) -> Session:
    """A session for a model file (path or bytes; a module for torch) of `runtime`. Options
    default to Settings'; `max_threads` caps threads for a model too small to use more.

    The best class that is installed and opens the file wins; each one skipped on the way (not
    installed, no provider, failed to compile the graph) is logged in one warning line and kept
    in the session's `fallback_reason`, so `describe()` says what actually runs and why."""
    options = (options or RuntimeOptions.from_settings()).capped(max_threads)
    classes = session_classes(runtime, options, model_id)
    skipped: list[str] = []
    for k, cls in enumerate(classes):
        reason = cls.unavailable(options)
        if reason is None:
            try:
                session = cls(source, options)
            except (ImportError, RuntimeError, OSError) as exc:
                if k == len(classes) - 1 or isinstance(exc, FileNotFoundError):
                    raise
                reason = f"{cls.label} could not open it ({str(exc).splitlines()[0][:200]})"
            else:
                if skipped:
                    session.fallback_reason = "; ".join(skipped)
                    log.warning("model %s runs on %s: %s", model_id or "?", session.runtime_used,
                                session.fallback_reason)
                return session
        skipped.append(reason)
    name = f"model {model_id}" if model_id else "this model"
    raise UnsupportedRuntime(f"{name} runs on {runtime}, which has no usable session for device "
                             f"{options.device!r} here: {'; '.join(skipped)}")


def runtime_used(model: Any) -> str:
    """What runs a loaded model's wrapper ('OpenVINO CPU bf16 cpu threads=2'), or '' for one
    without a session (the classical cartoon, landmark regions)."""
    session = getattr(model, "session", None) or getattr(model, "_session", None)
    return session.describe() if isinstance(session, Session) else ""
