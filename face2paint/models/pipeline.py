"""The face2paint pipeline: detect, align, parse, refine, stylize, paste back, sharpen.

Each stage is a method over numpy images and plain data, so the worker can run them as separate
stages (detect | parse | stylize | finalize) and a script can call `run` in one go; both compose
the same numbers. Models are taken lazily from a `ModelCache`, by role, when a stage first needs
one: detect uses the detector, parse the parser, stylize the face and the background stylizers
(the face model of the style preset on aligned crops, its background model on the whole image), finalize
the detector again (features in place, face models only: features.py). Parameters (`Params`)
are per call: they change no weights. The face geometry and compositing are `face.FaceHelper`'s.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import cv2
import numpy as np

from .cache import Choice, ModelCache
from .face import FaceBatch, FaceHelper
from .image_io import LoadedImage, resize_to
from .types import AlignedFace, Face, Params

STAGES = ("detect", "parse", "stylize", "finalize")
# The pipeline's models by role (the keys of Result.models), and the registry stage of each.
ROLES = {"detect": "detect", "parse": "parse", "stylize": "stylize", "stylize_background": "stylize"}


@dataclass
class Result:
    output: np.ndarray  # RGB uint8 at the input's original size
    faces: list[Face]  # every detection, confident or not
    aligned: list[AlignedFace]  # the faces that went through the face2paint recipe
    timings: dict[str, float]
    models: dict[str, str]
    face2paint: bool
    stylized_crops: list[np.ndarray] = field(default_factory=list)

    def report(self) -> dict:
        processed = {id(a.face) for a in self.aligned}
        flags = {id(a.face): a.flags for a in self.aligned}
        return {
            "face2paint": self.face2paint,
            "models": self.models,
            "timings_s": {k: round(v, 4) for k, v in self.timings.items()},
            "faces": [
                {**f.to_dict(), "processed": id(f) in processed,
                 **({"flags": _plain(flags[id(f)])} if id(f) in flags else {})}
                for f in self.faces
            ],
        }


def _plain(d: dict) -> dict:
    """Flags may hold numpy scalars; make them JSON-friendly."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out[k] = _plain(v)
        elif isinstance(v, (np.floating, float)):
            out[k] = round(float(v), 4)
        elif isinstance(v, (np.bool_, bool)):
            out[k] = bool(v)
        elif isinstance(v, (np.integer, int)):
            out[k] = int(v)
        else:
            out[k] = v
    return out


class Timer:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0


class Face2Paint:
    """The recipe over models resolved and loaded lazily, by role.

    `style` is a preset name (models/presets.py: a face model for the aligned crops, a
    background model for the whole capped image; every stylize model id is a preset of its
    own), None for the default preset (`anime` where its weights are present), or a loaded
    model object (injected, e.g. by a test: faces and background alike). `face_style` and
    `background_style` override one side: a preset name (its face, resp. background, model), a
    model id, or a loaded model. Detector and parser: a model id (requested: never
    substituted), None (the best available), or a loaded model object.
    """

    def __init__(self, cache: ModelCache | None = None, *, detector=None, parser=None,
                 style=None, background_style=None, face_style=None):
        from .presets import BY_NAME, background_model_of, face_model_of

        self.cache = cache or ModelCache()
        self.preset = BY_NAME.get(style) if isinstance(style, str) else None
        self._default_style = style is None
        face = style
        if self.preset is not None:
            face = self.preset.face_model
        if isinstance(face_style, str):
            face = face_model_of(face_style)
        elif face_style is not None:
            face = face_style
        background = None  # None: the face stylizer
        if self.preset is not None and self.preset.background_model != face:
            background = self.preset.background_model
        if isinstance(background_style, str):
            background = background_model_of(background_style)
        elif background_style is not None:
            background = background_style
        self._wanted = {"detect": detector, "parse": parser, "stylize": face,
                        "stylize_background": background}
        self._overridden = {"stylize": face_style is not None,
                            "stylize_background": background_style is not None}
        self._choices: dict[str, Choice] = {}
        self._models: dict[str, object] = {}
        for role, wanted in self._wanted.items():
            if wanted is not None and not isinstance(wanted, str):
                self._models[role] = wanted
                self._choices[role] = Choice(wanted.model_id, "given")

    def _resolve_default(self) -> None:
        """style=None: the default preset, for the roles that were not given."""
        from .presets import default_preset

        if not self._default_style:
            return
        self._default_style = False
        self.preset = default_preset(self.cache.registry)
        if not self._overridden["stylize"]:
            self._wanted["stylize"] = self.preset.face_model
            self._choices.setdefault("stylize", Choice(self.preset.face_model, "best available"))
        if not self._overridden["stylize_background"] and self.preset.background_model != self._wanted["stylize"]:
            self._wanted["stylize_background"] = self.preset.background_model
            self._choices.setdefault("stylize_background",
                                     Choice(self.preset.background_model, "best available"))

    @property
    def style(self) -> str | None:
        """The preset this pipeline runs (None when its models were given or named by id only)."""
        self._resolve_default()
        return self.preset.id if self.preset is not None else None

    def params_for(self, given=None) -> Params:
        """Params: the preset's defaults under what a request (dict or Params) set."""
        self._resolve_default()
        if isinstance(given, Params):
            return given
        base = dict(self.preset.params) if self.preset is not None else {}
        return Params(**{**base, **(given or {})})

    def _same_as_faces(self, role: str) -> bool:
        self._resolve_default()
        return role == "stylize_background" and self._wanted[role] is None

    def choice(self, role: str) -> Choice:
        """Which model a role uses, without loading it (ModelUnavailable if it cannot be had)."""
        if self._same_as_faces(role):
            return self.choice("stylize")
        if role not in self._choices:
            self._choices[role] = self.cache.choose(ROLES[role], self._wanted[role])
        return self._choices[role]

    def model(self, role: str):
        """The role's model, loaded from the cache on first use."""
        if self._same_as_faces(role):
            return self.model("stylize")
        if role not in self._models:
            self._models[role] = self.cache.get(self.choice(role).model_id)
        return self._models[role]

    detector = property(lambda self: self.model("detect"))
    parser = property(lambda self: self.model("parse"))
    face_stylizer = property(lambda self: self.model("stylize"))
    background_stylizer = property(lambda self: self.model("stylize_background"))

    def describe(self) -> dict[str, str]:
        """Per role, which model and how it was chosen, for the terminal and reports; the
        background only when it is not the face stylizer."""
        roles = [r for r in ROLES if not self._same_as_faces(r)]
        return {role: str(self.choice(role)) for role in roles}

    def load(self) -> dict[str, str]:
        """Load every role's model now (a command line fails early on a missing one)."""
        for role in ROLES:
            self.model(role)
        return self.describe()

    @property
    def models(self) -> dict[str, str]:
        return {role: self.choice(role).model_id for role in ROLES}

    # --- stages -------------------------------------------------------------------------

    def detect(self, rgb: np.ndarray) -> list[Face]:
        return self.detector.detect(rgb)

    def prepare(self, rgb: np.ndarray, faces: list[Face], params: Params | None = None,
                timer: Timer | None = None) -> list[AlignedFace]:
        """Align, parse and refine every selected face: the generator's face inputs."""
        from .refine import analyze_face, refine_at

        from .keep import keep_masks, skin_mean_lab

        helper = FaceHelper(params, self.face_framing())
        p = helper.params
        timer = timer or Timer()
        out = []
        for face in helper.select(faces):
            with timer("align"):
                a = helper.align(rgb, face)
            with timer("parse"):
                a.labels = self.parser.parse(a.crop, a.landmarks)
            with timer("refine"):
                a.flags = (
                    analyze_face(a.crop, a.labels)
                    if getattr(self.parser, "supports_flags", True)
                    else {"glasses": False, "heavy_makeup": False, "harsh_light": False,
                          "reasons": ["no flags: the parser draws regions from landmarks"]}
                )
                # Refined at the face's work size with only the masks the parameters use
                # (refine.refine_at), returned at the crop's size.
                a.refined = refine_at(a.crop, a.labels, p, a.flags, size=helper.work_size(a.inverse, self._face_option("face_work_size")),
                                      smooth=p.parsing_smooth)
                a.paste_mask = helper.paste_mask(a.labels)
                if getattr(self.parser, "supports_flags", True):  # real parsing regions only
                    a.keep = keep_masks(a.crop, a.labels, a.landmarks)
                    a.skin_lab = skin_mean_lab(a.crop, a.keep)
            out.append(a)
        return out

    def _face_option(self, name: str):
        from .registry import BY_ID

        spec = BY_ID.get(self.choice("stylize").model_id)
        return spec.options.get(name) if spec is not None else None

    def face_framing(self) -> float | None:
        """The face model's crop framing (registry option face_framing), None: the default."""
        return self._face_option("face_framing")

    def pack(self, aligned: list[AlignedFace], params: Params | None = None) -> FaceBatch:
        """What the later stages need of the prepared faces (the parse stage's artifact)."""
        return FaceHelper(params).batch(aligned)

    def stylize_faces(self, faces: FaceBatch, params: Params | None = None) -> list[np.ndarray]:
        """The face stylizer over the refined crops, each at its work size."""
        if not len(faces):
            return []
        return FaceHelper(params).stylize(faces, self.face_stylizer, self._face_option("face_work_size"))

    def stylize_background(self, rgb: np.ndarray, params: Params | None = None) -> np.ndarray:
        """The background stylizer over the whole image, its long side capped."""
        h, w = rgb.shape[:2]
        cap = (params or Params()).background_max_side
        if max(h, w) > cap:
            s = cap / max(h, w)
            small = cv2.resize(rgb, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
            return resize_to(self.background_stylizer(small), (w, h))
        return self.background_stylizer(rgb)

    def features_in_place_applies(self, params: Params | None = None) -> bool:
        """Whether finalize moves the stylized features back (features.py): the parameter is on
        and the face stylizer is a face model (registry kind "face"; a scenery model barely
        moves features, and an injected model is left alone)."""
        from .registry import BY_ID

        if not (params or Params()).features_in_place:
            return False
        spec = BY_ID.get(self.choice("stylize").model_id)
        return spec is not None and spec.kind == "face"

    def place_features(self, faces: FaceBatch, crops: list[np.ndarray],
                       params: Params | None = None) -> tuple[list[np.ndarray], list[dict]]:
        """The stylized crops with their features moved back to the input's landmarks (with the
        detector; see features.py), and per face what was done. Unchanged when it does not
        apply or the batch carries no landmarks."""
        from .features import MIN_EYE_PX, features_in_place

        if not crops or not self.features_in_place_applies(params):
            return list(crops), [{"applied": False, "reason": "off"} for _ in crops]
        out, infos = [], []
        for i, (crop, target) in enumerate(zip(crops, faces.landmarks)):
            if faces.eye_px(i) < MIN_EYE_PX:
                c, info = crop, {"applied": False, "reason": "face too small in the photo"}
            else:
                c, info = features_in_place(crop, target, self.detector)
            out.append(c)
            infos.append(info)
        return out, infos

    def finalize(self, background: np.ndarray, faces: FaceBatch, crops: list[np.ndarray],
                 original_size: tuple[int, int], params: Params | None = None,
                 face2paint: bool = True, features: list | None = None) -> np.ndarray:
        """Move the stylized features back into place (face models; the detector), paste the
        faces back and sharpen (face2paint), at the input's original size. `features`, when
        given, receives what the features-in-place step did per face."""
        if face2paint:
            crops, infos = self.place_features(faces, crops, params)
            if features is not None:
                features.extend(infos)
        out = FaceHelper(params).compose(background, faces, crops) if face2paint else background
        if (out.shape[1], out.shape[0]) != tuple(original_size):
            out = resize_to(out, tuple(original_size))
        return out

    # --- in one go ----------------------------------------------------------------------

    def run(self, image: LoadedImage | np.ndarray, params: Params | None = None,
            face2paint: bool = True) -> Result:
        params = params or Params()
        rgb = image.rgb if isinstance(image, LoadedImage) else image
        original = image.original_size if isinstance(image, LoadedImage) else (rgb.shape[1], rgb.shape[0])
        timer = Timer()
        faces: list[Face] = []
        aligned: list[AlignedFace] = []
        crops: list[np.ndarray] = []
        batch = self.pack([], params)
        if face2paint:
            with timer("detect"):
                faces = self.detect(rgb)
            aligned = self.prepare(rgb, faces, params, timer)
            batch = self.pack(aligned, params)
            with timer("stylize_faces"):
                crops = self.stylize_faces(batch, params)
        # face2paint off: plain stylization of the whole image, the baseline it is measured against.
        with timer("stylize_background"):
            background = self.stylize_background(rgb, params)
        features: list[dict] = []
        with timer("paste_post"):
            out = self.finalize(background, batch, crops, original, params, face2paint, features)
        for a, info in zip(aligned, features):
            a.flags = {**a.flags, "features_in_place": info}
        return Result(out, faces, aligned, timer.timings, self.models, face2paint, crops)
