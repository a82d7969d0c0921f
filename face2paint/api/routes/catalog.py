"""What a job may ask for: the style presets (models/presets.py, data that needs no model
runtime) and the job options' JSON schema (api/options.py), with their defaults and ranges,
from which the web page builds its form."""

from __future__ import annotations

from fastapi import APIRouter

from ...models.presets import PRESETS
from .. import schemas
from ..deps import OwnerDep
from ..options import JobOptions
from ..site import example_url

router = APIRouter(prefix="/v1", tags=["styles"])


@router.get("/styles", response_model=list[schemas.StyleOut])
def list_styles(owner: OwnerDep):
    """Every preset, named ones first, with its models, licences and an example thumbnail."""
    return [schemas.style_out(p, example_url(p.id)) for p in PRESETS]


@router.get("/options")
def options_schema(owner: OwnerDep) -> dict:
    """The JSON schema of a job's `options` field: every option and parameter with its default
    and range."""
    return JobOptions.model_json_schema()
