"""The face2paint pipeline: detect, align, parse, refine, stylize, paste back, sharpen.

Each stage is a method over numpy images and plain data, so the worker can run them as separate
stages (detect | parse | stylize | finalize) and a script can call `run` in one go; both compose
the same numbers. Models are taken lazily from a `ModelCache`, by role, when a stage first needs
one: detect uses the detector, parse the parser, stylize the face and the background stylizers
(today the same model unless `background_style` is given), finalize none. Parameters (`Params`)
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

    Each role takes a model id (requested: never substituted), None (the best available; for
    the background: the face stylizer), or a loaded model object (injected, e.g. by a test).
    """

    def __init__(self, cache: ModelCache | None = None, *, detector=None, parser=None,
                 style=None, background_style=None):
        self.cache = cache or ModelCache()
        self._wanted = {"detect": detector, "parse": parser, "stylize": style,
                        "stylize_background": background_style}
        self._choices: dict[str, Choice] = {}
        self._models: dict[str, object] = {}
        for role, wanted in self._wanted.items():
            if wanted is not None and not isinstance(wanted, str):
                self._models[role] = wanted
                self._choices[role] = Choice(wanted.model_id, "given")

    def _same_as_faces(self, role: str) -> bool:
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

        helper = FaceHelper(params)
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
                a.refined = refine_at(a.crop, a.labels, p, a.flags, size=helper.work_size(a.inverse),
                                      smooth=p.parsing_smooth)
                a.paste_mask = helper.paste_mask(a.labels)
            out.append(a)
        return out

    def pack(self, aligned: list[AlignedFace], params: Params | None = None) -> FaceBatch:
        """What the later stages need of the prepared faces (the parse stage's artifact)."""
        return FaceHelper(params).batch(aligned)

    def stylize_faces(self, faces: FaceBatch, params: Params | None = None) -> list[np.ndarray]:
        """The face stylizer over the refined crops, each at its work size."""
        if not len(faces):
            return []
        return FaceHelper(params).stylize(faces, self.face_stylizer)

    def stylize_background(self, rgb: np.ndarray, params: Params | None = None) -> np.ndarray:
        """The background stylizer over the whole image, its long side capped."""
        h, w = rgb.shape[:2]
        cap = (params or Params()).background_max_side
        if max(h, w) > cap:
            s = cap / max(h, w)
            small = cv2.resize(rgb, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
            return resize_to(self.background_stylizer(small), (w, h))
        return self.background_stylizer(rgb)

    def finalize(self, background: np.ndarray, faces: FaceBatch, crops: list[np.ndarray],
                 original_size: tuple[int, int], params: Params | None = None,
                 face2paint: bool = True) -> np.ndarray:
        """Paste the faces back and sharpen (face2paint), at the input's original size. No model."""
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
        with timer("paste_post"):
            out = self.finalize(background, batch, crops, original, params, face2paint)
        return Result(out, faces, aligned, timer.timings, self.models, face2paint, crops)
