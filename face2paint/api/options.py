"""The options of a new job, as pydantic models that refuse unknown keys.

`options` is a JSON object {"style", "face_style", "background_style", "face2paint", "params",
"output_format", "output_quality", "webhook_url", "webhook_events"} (styles are presets of
models/presets.py);
the `style` and `face2paint` form fields, when sent, override it. ParamsOptions mirrors
models/types.Params, field for field with the same defaults (a test keeps them in step), and
adds the ranges a request may ask for.
Every refusal is a 422 whose one-line message says what to send instead.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Optional

from fastapi import Depends, Form, HTTPException
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from ..jobs.webhooks import EVENTS as WEBHOOK_EVENTS
from ..models.image_io import DEFAULT_OUTPUT_QUALITY, OUTPUT_FORMATS
from ..models.presets import BY_NAME, ModelUnavailable, UnknownStyle, check_style
from ..models.registry import Registry
from ..models.types import Params

_FORMAT_ALIASES = {"jpg": "jpeg"}

_DEFAULT = Params()
_STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


def _range(name: str, lo: float, hi: float) -> Any:
    return Field(default=getattr(_DEFAULT, name), ge=lo, le=hi)


class ParamsOptions(BaseModel):
    model_config = _STRICT

    alignment_threshold: float = _range("alignment_threshold", 0.0, 1.0)
    parsing_smooth: bool = _DEFAULT.parsing_smooth
    skin_smoothing_factor: float = _range("skin_smoothing_factor", 0.0, 1.0)
    eye_enhance_ratio: float = _range("eye_enhance_ratio", 0.0, 4.0)
    post_sharpen_weight: float = _range("post_sharpen_weight", 0.0, 2.0)
    min_face_eye_distance: float = _range("min_face_eye_distance", 0.0, 10_000.0)
    face_size: int = _range("face_size", 64, 1024)
    face_min_size: int = _range("face_min_size", 16, 1024)
    background_max_side: int = _range("background_max_side", 64, 8192)
    skin_tone: bool = _DEFAULT.skin_tone
    small_face_structure: bool = _DEFAULT.small_face_structure
    features_in_place: bool = _DEFAULT.features_in_place


def stylize_styles() -> list[str]:
    """The style names a request may use here (presets, named ones first)."""
    from ..models.presets import available_presets

    reg = _registry()
    return [p.id for p in available_presets(reg)] if reg is not None else list(BY_NAME)


_REGISTRY: list = []


def _registry() -> Registry | None:
    """The API's view of the model files, to refuse a style whose weights are not here. None
    when this process has no model directory of its own (an API container without the weights
    volume): then only the name is checked, and the workers' capacity check covers the rest."""
    if not _REGISTRY:
        reg = Registry()
        _REGISTRY.append(reg if reg.model_dir is not None and reg.model_dir.is_dir() else None)
    return _REGISTRY[0]


def _check_style(name: str, what: str) -> str:
    reg = _registry()
    try:
        if reg is None:
            if name not in BY_NAME:
                raise UnknownStyle(f"unknown {what} {name!r}; choose one of: {', '.join(BY_NAME)}")
        else:
            check_style(name, reg, what)
    except (UnknownStyle, ModelUnavailable) as e:
        raise ValueError(str(e)) from None
    return name


class JobOptions(BaseModel):
    model_config = _STRICT

    style: Optional[str] = Field(default=None, description="a style preset (GET /v1/styles); default: anime where its weights are present")
    face_style: Optional[str] = Field(default=None, description="a preset whose face model paints the faces instead of the style's")
    background_style: Optional[str] = Field(default=None, description="a preset whose background model paints the rest instead of the style's")
    face2paint: bool = True
    params: ParamsOptions = Field(default_factory=ParamsOptions)
    # The result's encoding: png (lossless, the default), jpeg or webp with a quality 1-100.
    output_format: str = Field(default="png", json_schema_extra={"enum": list(OUTPUT_FORMATS)})
    output_quality: Optional[int] = Field(default=None, ge=1, le=100, json_schema_extra={
        "description": f"jpeg and webp only; default {DEFAULT_OUTPUT_QUALITY}"})

    # Where to POST this job's events (Standard Webhooks signatures); which events (default all).
    webhook_url: Optional[str] = Field(default=None, min_length=1, max_length=2048)
    webhook_events: Optional[list[str]] = Field(default=None, min_length=1, json_schema_extra={
        "items": {"enum": list(WEBHOOK_EVENTS)}, "description": "default: every event"})

    @field_validator("webhook_url")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        from urllib.parse import urlsplit

        if url is not None:
            parts = urlsplit(url.strip())
            if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
                raise ValueError("not an http(s) URL")
            url = url.strip()
        return url

    @field_validator("webhook_events")
    @classmethod
    def _known_events(cls, events: list[str] | None) -> list[str] | None:
        if events is not None and (set(events) - set(WEBHOOK_EVENTS)):
            raise ValueError("unknown event")
        return None if events is None else sorted(set(events), key=WEBHOOK_EVENTS.index)

    @field_validator("output_format", mode="before")
    @classmethod
    def _known_format(cls, fmt: Any) -> Any:
        if isinstance(fmt, str):
            fmt = _FORMAT_ALIASES.get(fmt.lower(), fmt.lower())
            if fmt not in OUTPUT_FORMATS:
                raise ValueError("unknown output format")
        return fmt

    @field_validator("output_quality")
    @classmethod
    def _quality_is_lossy(cls, quality: int | None, info: ValidationInfo) -> int | None:
        fmt = info.data.get("output_format")
        if quality is not None and fmt in OUTPUT_FORMATS and not OUTPUT_FORMATS[fmt].lossy:
            raise ValueError("quality of a lossless format")
        return quality

    @field_validator("params", mode="before")
    @classmethod
    def _null_is_default(cls, params: Any) -> Any:
        return {} if params is None else params

    @field_validator("style", "face_style", "background_style")
    @classmethod
    def _known_style(cls, style: str | None, info: ValidationInfo) -> str | None:
        return None if style is None else _check_style(style, info.field_name.replace("_", " "))

    def stored(self) -> dict:
        """What the job keeps (and the workers read): the params the request set, so the
        defaults stay models/types.Params's own."""
        stored = {"style": self.style, "face2paint": self.face2paint,
                  "params": self.params.model_dump(exclude_unset=True),
                  "output_format": self.output_format}
        for side in ("face_style", "background_style"):  # kept only when asked for
            if getattr(self, side) is not None:
                stored[side] = getattr(self, side)
        if OUTPUT_FORMATS[self.output_format].lossy:
            stored["output_quality"] = self.output_quality or DEFAULT_OUTPUT_QUALITY
        if self.webhook_url:
            stored["webhook_url"] = self.webhook_url
            stored["webhook_events"] = list(self.webhook_events or WEBHOOK_EVENTS)
        return stored


_TOP = sorted(JobOptions.model_fields)
_PARAMS = sorted(ParamsOptions.model_fields)


def _bounds(name: str) -> str:
    lo = hi = None
    for m in ParamsOptions.model_fields[name].metadata:
        lo = getattr(m, "ge", lo)
        hi = getattr(m, "le", hi)
    return f"from {lo} to {hi}"


def refusal(e: ValidationError) -> str:
    """One readable line for the first problem pydantic found."""
    errors = e.errors()
    extra = [err["loc"] for err in errors if err["type"] == "extra_forbidden"]
    top_extra = sorted(str(loc[0]) for loc in extra if len(loc) == 1)
    if top_extra:
        return f"unknown option(s) {top_extra}; allowed: {', '.join(_TOP)}"
    params_extra = sorted(str(loc[1]) for loc in extra if len(loc) == 2 and loc[0] == "params")
    if params_extra:
        return f"unknown params key(s) {params_extra}; params must be an object with keys from {_PARAMS}"
    err = errors[0]
    loc = err["loc"]
    if loc[0] in ("style", "face_style", "background_style"):
        if err["type"] == "value_error":
            return str(err["ctx"]["error"])
        what = str(loc[0]).replace("_", " ")
        return f"unknown {what} {err['input']!r} (not a name); choose one of: {', '.join(stylize_styles())}"
    if loc[0] == "face2paint":
        return "face2paint must be true or false"
    if loc[0] == "output_format":
        return f"unknown output_format {err['input']!r}; choose one of {sorted(OUTPUT_FORMATS)}"
    if loc[0] == "output_quality":
        if err["type"] == "value_error":
            return ("output_quality applies to jpeg and webp only; leave it out for png, or set "
                    "output_format to jpeg or webp")
        return f"output_quality={err['input']!r} must be an integer from 1 to 100"
    if loc[0] == "webhook_url":
        return "webhook_url must be an http:// or https:// URL with a host (at most 2048 characters)"
    if loc[0] == "webhook_events":
        return f"webhook_events must be a non-empty list of {list(WEBHOOK_EVENTS)}"
    if len(loc) == 1:  # params itself
        return f"params must be an object with keys from {_PARAMS}"
    name = str(loc[1])
    if err["type"] in ("finite_number", "greater_than_equal", "less_than_equal"):
        return f"params.{name}={err['input']!r} is out of range: {name} goes {_bounds(name)}"
    kind = type(getattr(_DEFAULT, name)).__name__
    return f"params.{name} must be a {kind} (default {getattr(_DEFAULT, name)!r})"


def parse_options(raw: str | None, style: str | None = None, face2paint: bool | None = None) -> JobOptions:
    """The options JSON with the form fields laid over it; HTTP 422 with the reason if unusable."""
    try:
        opts = json.loads(raw) if raw else {}
    except json.JSONDecodeError as e:
        raise HTTPException(422, f"options is not valid JSON: {e}") from None
    except (RecursionError, ValueError):  # absurdly deep nesting, huge numbers
        raise HTTPException(422, "options is not a usable JSON object (nested too deeply or out of range)") from None
    if not isinstance(opts, dict):
        raise HTTPException(422, "options must be a JSON object")
    if style is not None:
        opts["style"] = style
    if face2paint is not None:
        opts["face2paint"] = face2paint
    try:
        return JobOptions.model_validate(opts)
    except ValidationError as e:
        raise HTTPException(422, refusal(e)) from None


def job_options(
    options: Annotated[Optional[str], Form(description='JSON, e.g. {"style": "animeganv2-hayao-int8", "face2paint": true, "params": {"eye_enhance_ratio": 1.2}}')] = None,
    style: Annotated[Optional[str], Form(description="Overrides options.style.")] = None,
    face2paint: Annotated[Optional[bool], Form(description="Overrides options.face2paint.")] = None,
) -> JobOptions:
    return parse_options(options, style, face2paint)


JobOptionsDep = Annotated[JobOptions, Depends(job_options)]
