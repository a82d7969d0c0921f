"""Build the runnable object for a registered model: open its session (`sessions`) and wrap it.

One builder per (stage, runtime) pair; a pair without a builder is an error that names the model,
never a fallback to another model. The wrappers' options (colour order, fixed size, pad
multiple, thread cap, input mean) come from the registry entry, so a new model of a known kind
is a registry entry only. Heavy imports happen here, lazily. Callers go through `cache.ModelCache`,
which builds each (model, runtime options) once per process.
"""

from __future__ import annotations

from collections.abc import Callable

from .registry import ModelSpec, Resolved
from .sessions import RuntimeOptions, UnsupportedRuntime, open_session

# Keys of ModelSpec.options that image generators take as keyword arguments.
_GENERATOR_OPTIONS = ("color", "size", "pad_multiple")


def _source(resolved: Resolved):
    return resolved.data if resolved.data is not None else resolved.path


def _session(spec: ModelSpec, resolved: Resolved, options: RuntimeOptions, source=None):
    return open_session(spec.runtime, _source(resolved) if source is None else source, options,
                        model_id=spec.id, max_threads=spec.options.get("max_threads"))


def _retinaface(spec, resolved, options):
    from .detect import RetinaFaceDetector

    kw = {"mean_bgr": spec.options["mean_bgr"]} if "mean_bgr" in spec.options else {}
    return RetinaFaceDetector(_session(spec, resolved, options), spec.id, **kw)


def _yunet(spec, resolved, options):
    from .detect import YuNetDetector

    return YuNetDetector(_session(spec, resolved, options), spec.id)


def _bisenet(spec, resolved, options):
    from .parse import BiSeNetParser

    return BiSeNetParser(_session(spec, resolved, options), spec.id)


def _landmark_regions(spec, resolved, options):
    from .parse import LandmarkParser

    return LandmarkParser()


def _animegan(spec, resolved, options):
    """AnimeGANv2 weights (torch): exported once to ONNX beside the model cache and run by the
    ONNX engines (OpenVINO on CPU, CUDA/TensorRT on GPUs); on torch only when asked
    (FACE2PAINT_MODEL_RUNTIME=torch) or when the export fails, which is logged."""
    import logging

    from ..settings import get_settings
    from .generators.animegan import AnimeGANStylizer, cached_onnx, load_generator
    from .generators.tflite import OnnxGenerator

    generator = load_generator(resolved.path, upsample=spec.options.get("upsample", "align_corners"))
    if options.engine != "torch":
        fp16 = options.device_kind == "cuda" and options.precision in ("auto", "fp16")
        try:
            path = cached_onnx(generator, resolved.path, get_settings().resolved_model_cache_dir / "onnx",
                               fp16=fp16)
        except Exception as exc:  # the exporter's errors are not one type; torch still runs it
            logging.getLogger("face2paint.models").warning(
                "model %s: ONNX export failed (%s); it runs on torch", spec.id, str(exc)[:200])
        else:
            session = open_session("onnxruntime", path, options, model_id=spec.id,
                                   max_threads=spec.options.get("max_threads"))
            return OnnxGenerator(session, spec.id, color="RGB", pad_multiple=AnimeGANStylizer.pad_multiple)
    return AnimeGANStylizer(_session(spec, resolved, options, generator), spec.id)


def _generator_kwargs(spec: ModelSpec) -> dict:
    kw = {k: spec.options[k] for k in _GENERATOR_OPTIONS if k in spec.options}
    if "pad_multiple" not in kw and spec.io is not None and spec.io.size_multiple:
        kw["pad_multiple"] = spec.io.size_multiple  # AnimeGANv3: 8, or 16 for the tiny ones
    return kw


def _tflite_generator(spec, resolved, options):
    from .generators.tflite import TFLiteGenerator

    return TFLiteGenerator(_session(spec, resolved, options), spec.id, **_generator_kwargs(spec))


def _onnx_generator(spec, resolved, options):
    from .generators.tflite import OnnxGenerator

    return OnnxGenerator(_session(spec, resolved, options), spec.id, **_generator_kwargs(spec))


def _classical_cartoon(spec, resolved, options):
    from .generators.cartoon import ClassicalCartoon

    return ClassicalCartoon()


Builder = Callable[[ModelSpec, Resolved, RuntimeOptions], object]

BUILDERS: dict[tuple[str, str], Builder] = {
    ("detect", "onnxruntime"): _retinaface,
    ("detect", "opencv"): _yunet,
    ("parse", "tflite"): _bisenet,
    ("parse", "none"): _landmark_regions,
    ("stylize", "torch"): _animegan,
    ("stylize", "tflite"): _tflite_generator,
    ("stylize", "onnxruntime"): _onnx_generator,
    ("stylize", "opencv"): _classical_cartoon,
}


def build(resolved: Resolved, options: RuntimeOptions | None = None):
    """The model's runnable wrapper, on a fresh session (use ModelCache to share one)."""
    spec = resolved.spec
    builder = BUILDERS.get((spec.stage, spec.runtime))
    if builder is None:
        if spec.stage not in {stage for stage, _ in BUILDERS}:
            raise UnsupportedRuntime(f"model {spec.id} is registered for reference only (stage "
                                     f"{spec.stage}); no stage runs it")
        known = ", ".join(sorted(r for s, r in BUILDERS if s == spec.stage))
        raise UnsupportedRuntime(f"model {spec.id}: no {spec.stage} model runs on runtime "
                                 f"{spec.runtime!r} (known: {known}); fix its registry entry")
    return builder(spec, resolved, options or RuntimeOptions.from_settings())
