"""Style presets: the user-facing `style`. A preset names the model that paints the faces (on
aligned crops), the model that paints the rest of the photo, and its default parameters.

Presets are data. This module imports no runtime (numpy-free, in fact), so the API can list and
check them without torch, ONNX Runtime or OpenCV. Every stylize model in the registry is also a
preset of its own name: that one model on faces and background alike, as before presets.
Whether a preset can run here is a registry question: are its models' files present (a CoreML
source that is converted on first use counts as present)?
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

from .registry import BY_ID, MODELS, PREFERENCE, ModelUnavailable, Registry


class UnknownStyle(ValueError):
    """A style name that is no preset; the message lists the known ones."""


class StyleUnavailable(ModelUnavailable):
    """A preset whose model files are not on this machine; the message lists the available ones."""


@dataclass(frozen=True)
class Preset:
    id: str
    face_model: str  # registry id of the model run on aligned face crops
    background_model: str  # registry id of the model run on the whole (capped) photo
    description: str = ""
    # Defaults for types.Params fields; a request's own params override them.
    params: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((self.face_model, self.background_model)))

    @property
    def commercial_use(self) -> bool:
        return all(BY_ID[m].commercial_use for m in self.models)

    @property
    def licences(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(BY_ID[m].licence for m in self.models))


NAMED: tuple[Preset, ...] = (
    Preset("anime", "animeganv3-jp-face", "animeganv3-hayao",
           "Japanese anime portraits (AnimeGANv3 JP_face) on a Miyazaki-style background (v3 Hayao)"),
    Preset("anime-shinkai", "animeganv3-jp-face", "animeganv3-shinkai",
           "anime portraits on a brighter Shinkai-style background"),
    Preset("cartoon", "animeganv3-usa2", "animeganv3-usa2",
           "2D US cartoon (AnimeGANv3 tiny USA2): clean outlines, flat shading"),
    Preset("comic", "animeganv3-comic", "animeganv3-comic", "comic / caricature, bold ink lines"),
    Preset("arcane", "animeganv3-arcane", "animeganv3-arcane", "painterly 3D in the style of Arcane"),
    Preset("cute", "animeganv3-cute", "animeganv3-cute", "3D-doll cartoon: big glossy eyes"),
    # A sketch is black ink on white: bringing the photo's skin colour (or its shading on small
    # faces) back would undo it.
    Preset("sketch", "animeganv3-portrait-sketch", "animeganv3-portrait-sketch",
           "black-ink line sketch",
           MappingProxyType({"skin_tone": False, "small_face_structure": False})),
    Preset("face-paint", "animeganv2-face-paint-512-v2", "animeganv2-paprika",
           "AnimeGANv2 face_paint_512_v2 faces on a Paprika background (bryandlee; `models pull` both)"),
)

# Every stylize model on its own, faces and background alike.
SINGLE: tuple[Preset, ...] = tuple(
    Preset(m.id, m.id, m.id, f"{m.id} on the whole photo, faces included")
    for m in MODELS if m.stage == "stylize"
)

PRESETS: tuple[Preset, ...] = NAMED + SINGLE
BY_NAME: dict[str, Preset] = {p.id: p for p in PRESETS}

# The default style is the first available of these: the named presets as listed, then each
# single model in the stylize stage's own preference order (which ends in a builtin filter).
DEFAULT_ORDER: tuple[str, ...] = tuple(p.id for p in NAMED) + PREFERENCE["stylize"]


def get_preset(name: str) -> Preset:
    try:
        return BY_NAME[name]
    except KeyError:
        raise UnknownStyle(
            f"unknown style {name!r}; choose one of: {', '.join(p.id for p in PRESETS)}"
        ) from None


@dataclass(frozen=True)
class PresetStatus:
    preset: Preset
    where: Mapping[str, str | None]  # model id -> where its file is, None when absent
    problems: Mapping[str, str]  # model id -> why a present file cannot be used

    @property
    def available(self) -> bool:
        return all(self.where[m] is not None for m in self.preset.models) and not self.problems

    @property
    def missing(self) -> tuple[str, ...]:
        return tuple(m for m in self.preset.models if self.where[m] is None or m in self.problems)


def preset_status(preset: Preset, registry: Registry) -> PresetStatus:
    """Which of a preset's models are on this machine, without downloading or converting."""
    where: dict[str, str | None] = {}
    problems: dict[str, str] = {}
    for model_id in preset.models:
        try:
            where[model_id] = registry.where(BY_ID[model_id])
        except ModelUnavailable as e:
            where[model_id], problems[model_id] = None, str(e)
    return PresetStatus(preset, MappingProxyType(where), MappingProxyType(problems))


def available_presets(registry: Registry) -> list[Preset]:
    return [p for p in PRESETS if preset_status(p, registry).available]


def default_preset(registry: Registry) -> Preset:
    """`anime` where its weights are present, else the first available in DEFAULT_ORDER."""
    for name in DEFAULT_ORDER:
        if preset_status(BY_NAME[name], registry).available:
            return BY_NAME[name]
    raise ModelUnavailable("no style is available")  # unreachable: the builtin filter is


def check_style(name: str, registry: Registry, what: str = "style") -> Preset:
    """The preset `name` if it can run here; UnknownStyle or StyleUnavailable otherwise, each
    with the names that would work (what a refused request should try instead)."""
    available = [p.id for p in available_presets(registry)]
    if name not in BY_NAME:
        raise UnknownStyle(f"unknown {what} {name!r}; choose one of: {', '.join(available)}")
    st = preset_status(BY_NAME[name], registry)
    if not st.available:
        def needs(m: str) -> str:
            spec = BY_ID[m]
            return f"{m} ({spec.converted_from.file if spec.converted_from else spec.file})"

        raise StyleUnavailable(
            f"{what} {name!r} is not available here: missing or unusable "
            f"{', '.join(needs(m) for m in st.missing)}; `face2paint models pull ID` fetches a "
            f"model, or choose one of: {', '.join(available)}")
    return BY_NAME[name]


def face_model_of(name: str) -> str:
    """The face model a `face_style` names: a preset's face model, or a model id as it is."""
    return BY_NAME[name].face_model if name in BY_NAME else name


def background_model_of(name: str) -> str:
    """The background model a `background_style` names: a preset's, or a model id as it is."""
    return BY_NAME[name].background_model if name in BY_NAME else name
