"""Refusing at submit a style that no running worker can paint (its weights are on none of
them), instead of accepting the job and failing every item at its first stage. What the
workers hold comes from worker/capabilities.py; when nothing is known, nothing is refused."""

from __future__ import annotations

from fastapi import HTTPException

from ..models.presets import BY_NAME
from ..models.registry import BY_ID


def style_models(style: str) -> tuple[str, ...]:
    """The model ids a style needs: a preset's face and background models, or one model."""
    if style in BY_NAME:
        return BY_NAME[style].models
    return (style,) if style in BY_ID else ()


def servable_styles(models: set[str]) -> list[str]:
    """The styles a job may name (JobOptions accepts them) whose models the workers hold."""
    from pydantic import ValidationError

    from .options import JobOptions

    out = []
    for name in BY_NAME:
        if not set(style_models(name)) <= models:
            continue
        try:
            JobOptions.model_validate({"style": name})
        except ValidationError:
            continue
        out.append(name)
    return out


def check_servable(style: str | None, catalog) -> None:
    """503 with the styles that can run when no worker holds the models of `style`."""
    if not style or catalog is None:
        return
    held = catalog.stylize_models()
    if held is None:
        return
    missing = [m for m in style_models(style) if m not in held]
    if not missing:
        return
    catalog.forget()  # a worker may have just started: look again next time
    can = servable_styles(held)
    raise HTTPException(
        503,
        f"style {style!r} cannot run now: no running worker has the weights of "
        f"{', '.join(missing)}; styles that can: {', '.join(can) or 'none'}. Pick one of those, "
        f"or put the weights on the stylize workers (`face2paint models pull {missing[0]}`, or "
        "FACE2PAINT_MODEL_DIR) and restart them",
        headers={"Retry-After": "30"},
    )
