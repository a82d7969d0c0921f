"""The face2paint pipeline: detect, align, parse, refine, stylize, paste back, sharpen.

Each step is a method over numpy images and plain data, so the worker can run them as separate
stages (detect | parse | stylize | finalize) and a script can call `run` in one go.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import cv2
import numpy as np

from . import loaders
from .align import align_face, eye_distance
from .image_io import LoadedImage, resize_to
from .paste import compose
from .registry import Registry
from .types import AlignedFace, Face, Params

STAGES = ("detect", "parse", "stylize", "finalize")


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
    """The pipeline with its three models loaded once."""

    def __init__(self, detector, parser, stylizer, params: Params | None = None):
        self.detector = detector
        self.parser = parser
        self.stylizer = stylizer
        self.params = params or Params()
        self.models = {
            "detect": detector.model_id,
            "parse": parser.model_id,
            "stylize": stylizer.model_id,
        }

    @classmethod
    def from_registry(
        cls,
        registry: Registry | None = None,
        *,
        style: str | None = None,
        detector: str | None = None,
        parser: str | None = None,
        params: Params | None = None,
    ) -> tuple["Face2Paint", dict[str, str]]:
        """Load each stage's model (requested ids never fall back). Returns the pipeline and,
        per stage, how its model was chosen, for the terminal and the report."""
        registry = registry or Registry()
        chosen = {}
        built = {}
        for stage, wanted in (("detect", detector), ("parse", parser), ("stylize", style)):
            model, model_id, how = loaders.load(registry, stage, wanted)
            built[stage] = model
            chosen[stage] = f"{model_id} ({how})"
        return cls(built["detect"], built["parse"], built["stylize"], params), chosen

    # --- stages -------------------------------------------------------------------------

    def detect(self, rgb: np.ndarray) -> list[Face]:
        return self.detector.detect(rgb)

    def selected(self, faces: list[Face]) -> list[Face]:
        """Faces confident and large enough for the recipe; the rest are left to the
        background pass (no confident human face means the image is stylized whole)."""
        p = self.params
        return [
            f for f in faces
            if f.score >= p.alignment_threshold and eye_distance(f) >= p.min_face_eye_distance
        ]

    def prepare(self, rgb: np.ndarray, faces: list[Face], timer: Timer | None = None) -> list[AlignedFace]:
        """Align, parse and refine every selected face: the generator's face inputs."""
        from .parse import region_masks
        from .refine import analyze_face, refine_face

        timer = timer or Timer()
        out = []
        for face in self.selected(faces):
            with timer("align"):
                a = align_face(rgb, face, self.params.face_size)
            with timer("parse"):
                a.labels = self.parser.parse(a.crop, a.landmarks)
                masks = region_masks(a.labels, smooth=self.params.parsing_smooth)
            with timer("refine"):
                a.flags = (
                    analyze_face(a.crop, a.labels, masks)
                    if getattr(self.parser, "supports_flags", True)
                    else {"glasses": False, "heavy_makeup": False, "harsh_light": False,
                          "reasons": ["no flags: the parser draws regions from landmarks"]}
                )
                a.refined = refine_face(a.crop, masks, self.params, a.flags)
                a.paste_mask = masks["paste"]
            out.append(a)
        return out

    def work_size(self, inverse: np.ndarray) -> int:
        """The size to stylize a face crop at: the face's own resolution in the photo, rounded
        up to face_min_size times a power of two, at most face_size. A face 60 px wide gains
        nothing from a 512² generator pass but costs 16 times a 128² one; few distinct sizes
        keep generators that compile per input size (TFLite) from recompiling."""
        crop_px_per_image_px = 1.0 / float(np.hypot(*inverse[0, :2]))
        native = self.params.face_size / crop_px_per_image_px
        size = self.params.face_min_size
        while size < native and size < self.params.face_size:
            size *= 2
        return min(size, self.params.face_size)

    def stylize_faces(self, aligned: list[AlignedFace]) -> list[np.ndarray]:
        return self.stylize_crops([a.refined for a in aligned], [self.work_size(a.inverse) for a in aligned])

    def stylize_crops(self, crops: list[np.ndarray], sizes: list[int] | None = None) -> list[np.ndarray]:
        """Face crops through the generator at their work sizes, batched per size where the
        generator supports batches; returned at the crops' own size for paste-back."""
        if not crops:
            return []
        sizes = sizes or [c.shape[0] for c in crops]
        out: list[np.ndarray | None] = [None] * len(crops)
        batch = getattr(self.stylizer, "batch", None)
        for size in sorted(set(sizes)):
            idx = [i for i, s in enumerate(sizes) if s == size]
            small = [c if c.shape[0] == size else cv2.resize(c, (size, size), interpolation=cv2.INTER_AREA)
                     for c in (crops[i] for i in idx)]
            done = list(batch(small)) if batch else [self.stylizer(c) for c in small]
            for i, d in zip(idx, done):
                s = crops[i].shape[0]
                out[i] = d if d.shape[0] == s else cv2.resize(d, (s, s), interpolation=cv2.INTER_CUBIC)
        return out

    def stylize_background(self, rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        cap = self.params.background_max_side
        if max(h, w) > cap:
            s = cap / max(h, w)
            small = cv2.resize(rgb, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
            return resize_to(self.stylizer(small), (w, h))
        return self.stylizer(rgb)

    def finalize(
        self, background: np.ndarray, aligned: list[AlignedFace], crops: list[np.ndarray]
    ) -> np.ndarray:
        return compose(background, crops, [a.inverse for a in aligned],
                       [a.paste_mask for a in aligned], self.params.post_sharpen_weight)

    # --- in one go ----------------------------------------------------------------------

    def run(self, image: LoadedImage | np.ndarray, face2paint: bool = True) -> Result:
        rgb = image.rgb if isinstance(image, LoadedImage) else image
        original = image.original_size if isinstance(image, LoadedImage) else (rgb.shape[1], rgb.shape[0])
        timer = Timer()
        faces: list[Face] = []
        aligned: list[AlignedFace] = []
        crops: list[np.ndarray] = []
        if face2paint:
            with timer("detect"):
                faces = self.detect(rgb)
            aligned = self.prepare(rgb, faces, timer)
            with timer("stylize_faces"):
                crops = self.stylize_faces(aligned)
            with timer("stylize_background"):
                background = self.stylize_background(rgb)
            with timer("paste_post"):
                out = self.finalize(background, aligned, crops)
        else:
            # Plain stylization of the whole image: the baseline face2paint is measured against.
            with timer("stylize_background"):
                out = self.stylize_background(rgb)
        if (out.shape[1], out.shape[0]) != tuple(original):
            with timer("resize"):
                out = resize_to(out, original)
        return Result(out, faces, aligned, timer.timings, dict(self.models), face2paint, crops)
