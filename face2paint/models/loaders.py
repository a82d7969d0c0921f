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
    from .generators.animegan import AnimeGANStylizer, load_generator

    return AnimeGANStylizer(_session(spec, resolved, options, load_generator(resolved.path)), spec.id)


def _generator_kwargs(spec: ModelSpec) -> dict:
    return {k: spec.options[k] for k in _GENERATOR_OPTIONS if k in spec.options}


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
