"""Stylize several photos' work together: the batched form of `Face2Paint.stylize_faces` and
`Face2Paint.stylize_background`, for a GPU worker that gathers photos (worker/batching.py).

Face crops of every photo that share a generator and a work size go through one `batch` call
(a stacked forward pass where the generator supports it); backgrounds that share a generator
and a shape (after the long-side cap) likewise. Each photo keeps its own parameters and
models. The outputs equal the one-photo path's (tests/test_batching.py): the same resizes on
each side of the generator, and batching changes no generator's result beyond float rounding
(per-sample normalisation).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .face import FaceBatch, FaceHelper
from .image_io import resize_to
from .types import Params


@dataclass
class Work:
    """One photo's stylize inputs: its pipeline (models), prepared faces, image, parameters."""

    pipe: object  # a Face2Paint
    faces: FaceBatch
    rgb: np.ndarray
    params: Params | None = None


def _run(generator, images: list[np.ndarray], max_batch: int) -> list[np.ndarray]:
    batch = getattr(generator, "batch", None)
    out: list[np.ndarray] = []
    for start in range(0, len(images), max_batch):
        chunk = images[start:start + max_batch]
        out.extend(batch(chunk) if batch and len(chunk) > 1 else [generator(im) for im in chunk])
    return out


def _background_input(rgb: np.ndarray, params: Params) -> np.ndarray:
    h, w = rgb.shape[:2]
    cap = params.background_max_side
    if max(h, w) > cap:
        s = cap / max(h, w)
        return cv2.resize(rgb, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
    return rgb


def stylize_many(works: list[Work], max_batch: int = 16) -> list[tuple[list[np.ndarray], np.ndarray]]:
    """(stylized face crops, stylized background) per photo, as the one-photo stages return."""
    crops: list[list[np.ndarray | None]] = [[None] * len(w.faces) for w in works]
    groups: dict[tuple[int, int], tuple[object, list[tuple[int, int, np.ndarray]]]] = {}
    for j, w in enumerate(works):
        if not len(w.faces):
            continue
        helper = FaceHelper(w.params)
        generator = w.pipe.face_stylizer
        min_size = w.pipe._face_option("face_work_size")  # as Face2Paint.stylize_faces
        for i, (crop, inverse) in enumerate(zip(w.faces.refined, w.faces.inverse)):
            size = helper.work_size(inverse, min_size)
            small = crop if crop.shape[0] == size else cv2.resize(
                crop, (size, size), interpolation=cv2.INTER_AREA)
            groups.setdefault((id(generator), size), (generator, []))[1].append((j, i, small))
    for generator, members in groups.values():
        done = _run(generator, [m[2] for m in members], max_batch)
        for (j, i, _), d in zip(members, done):
            f = works[j].faces
            s = f.refined[i].shape[0]
            d = d if d.shape[0] == s else cv2.resize(d, (s, s), interpolation=cv2.INTER_CUBIC)
            crops[j][i] = FaceHelper(works[j].params).keep(d, f, i)

    backgrounds: list[np.ndarray | None] = [None] * len(works)
    buckets: dict[tuple, tuple[object, list[tuple[int, np.ndarray]]]] = {}
    for j, w in enumerate(works):
        generator = w.pipe.background_stylizer
        small = _background_input(w.rgb, w.params or Params())
        buckets.setdefault((id(generator), small.shape), (generator, []))[1].append((j, small))
    for generator, members in buckets.values():
        done = _run(generator, [m[1] for m in members], max_batch)
        for (j, small), d in zip(members, done):
            h, w_ = works[j].rgb.shape[:2]
            backgrounds[j] = d if small.shape[:2] == (h, w_) else resize_to(d, (w_, h))
    return [(list(c), b) for c, b in zip(crops, backgrounds)]  # type: ignore[arg-type]
