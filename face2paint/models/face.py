"""The face round trip, in one place: select -> align -> (parse, refine) -> work size -> (stylize)
-> inverse warp -> paste mask -> compose.

`FaceHelper` owns the geometry and the compositing of the recipe, for one set of `Params`; the
networks are injected where they run (the parser by the pipeline's prepare step, the face
stylizer into `stylize`), as in facexlib's FaceRestoreHelper. What crosses from the parse stage
to stylization and paste-back is a `FaceBatch`: the refined crops, their inverse transforms and
their paste masks, as arrays, so the job system stores it as it is and the in-process pipeline
and the worker stages compose the same numbers.

The transform maths (template, similarity fit) is in align.py; region labels in parse.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .keep import apply_keep, small_face_structure
from .align import canonical_template, eye_distance, invert, similarity_transform, transform_points
from .parse import FACE_LABELS, label_mask
from .types import AlignedFace, Face, Params


def align_face(image: np.ndarray, face: Face, size: int = 512,
               eye_fraction: float | None = None) -> AlignedFace:
    """Warp one face of an RGB image into the canonical size x size crop (framed by
    `eye_fraction`, the face model's, default align.EYE_DISTANCE_FRACTION).

    Pixels outside the photo (faces at its borders) are filled by reflection so the networks
    see plausible context; paste-back only writes inside the photo, so they never show.
    """
    matrix = similarity_transform(face.landmarks, canonical_template(size, eye_fraction))
    crop = cv2.warpAffine(
        image, matrix, (size, size), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT101
    )
    return AlignedFace(
        face=face,
        crop=crop,
        matrix=matrix,
        inverse=invert(matrix),
        landmarks=transform_points(face.landmarks, matrix),
    )


def paste_mask(labels: np.ndarray) -> np.ndarray:
    """Face + hair, dilated a little and feathered, falling to exactly 0 before the crop border.

    The dilation covers the parser's slightly tight outlines and the thin edge between face and
    hair; the feather hides the seam in the stylized background; the border window guarantees
    that the warped crop's own edge (and reflected fill beyond the photo) never shows.
    """
    h, w = labels.shape
    s = min(h, w)
    region = label_mask(labels, FACE_LABELS + ("hair",))
    # Dilate by 2.5 sigma of the feather, so the face outline itself is pasted at >= 0.99 and
    # the whole feather lies outside it (where face crop and background are both stylized).
    sigma = max(1.0, 0.012 * s)
    k = 2 * int(round(2.5 * sigma)) + 1
    region = cv2.dilate(region, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    margin = int(np.ceil(3 * sigma)) + 1
    # Clear a band along the border before feathering, so the blur has room to reach 0 ...
    region[:margin] = 0
    region[-margin:] = 0
    region[:, :margin] = 0
    region[:, -margin:] = 0
    soft = cv2.GaussianBlur(region.astype(np.float32), (0, 0), sigma)
    # ... and multiply by a window that is exactly 0 on the outermost pixels (blur tails).
    edge = max(2, margin // 2)
    ramp_y = np.clip(np.minimum(np.arange(h), h - 1 - np.arange(h)) / edge, 0, 1)
    ramp_x = np.clip(np.minimum(np.arange(w), w - 1 - np.arange(w)) / edge, 0, 1)
    soft *= np.outer(ramp_y, ramp_x).astype(np.float32)
    return np.clip(soft, 0.0, 1.0)


def mask_to_uint8(mask: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(mask, np.float32) * 255.0).astype(np.uint8)


def mask_from_uint8(mask: np.ndarray) -> np.ndarray:
    return mask.astype(np.float32) / 255.0


def paste_face(
    background: np.ndarray, face: np.ndarray, inverse: np.ndarray, mask: np.ndarray
) -> np.ndarray:
    """Warp a stylized S x S face crop back into the background through a feathered mask.

    Only the face's bounding rectangle in the image is warped and blended, so many faces on a
    large photo cost little; faces cut by the image border are clipped to it.
    """
    h, w = background.shape[:2]
    s = face.shape[0]
    corners = np.array([[0, 0], [s, 0], [0, s], [s, s]], dtype=np.float64)
    pts = corners @ inverse[:, :2].T + inverse[:, 2]
    x0, y0 = np.floor(pts.min(axis=0)).astype(int)
    x1, y1 = np.ceil(pts.max(axis=0)).astype(int)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if x1 <= x0 or y1 <= y0:
        return background
    shifted = inverse.copy()
    shifted[:, 2] -= (x0, y0)
    size = (x1 - x0, y1 - y0)
    warped = cv2.warpAffine(face, shifted, size, flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT101)
    alpha = cv2.warpAffine(mask.astype(np.float32), shifted, size, flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)[..., None]
    out = background.copy()
    roi = out[y0:y1, x0:x1].astype(np.float32)
    out[y0:y1, x0:x1] = np.clip(roi * (1 - alpha) + warped.astype(np.float32) * alpha + 0.5, 0, 255).astype(np.uint8)
    return out


def unsharp(image: np.ndarray, weight: float, sigma: float = 1.2) -> np.ndarray:
    """Unsharp mask: image + weight * (image - blur). weight 0 returns the image unchanged."""
    if weight <= 0:
        return image
    blurred = cv2.GaussianBlur(image, (0, 0), sigma)
    return cv2.addWeighted(image, 1 + weight, blurred, -weight, 0)


def match_colour(face: np.ndarray, background: np.ndarray, inverse: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Shift the stylized face's chroma (Lab a, b means under the mask) onto the stylized
    background's in the same region, so a face stylized on its own (where the generator may pick
    another tint, e.g. on grey or masked faces) shows no colour seam. Lightness and structure are
    the face pass's own."""
    s = face.shape[0]
    weight = mask.astype(np.float32)
    total = float(weight.sum())
    if total < 1:
        return face
    matrix = cv2.invertAffineTransform(inverse)
    under = cv2.warpAffine(background, matrix, (s, s), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
    lab_face = cv2.cvtColor(face, cv2.COLOR_RGB2LAB).astype(np.float32)
    lab_bg = cv2.cvtColor(under, cv2.COLOR_RGB2LAB).astype(np.float32)
    for c in (1, 2):
        shift = ((lab_bg[..., c] - lab_face[..., c]) * weight).sum() / total
        lab_face[..., c] += shift
    return cv2.cvtColor(np.clip(lab_face, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)


# The seam: how far into the face (share of the crop side) the boundary correction reaches, and
# the reach (sigma, share of the side) over which boundary differences are averaged.
SEAM_REACH = 0.08
SEAM_SIGMA = 0.015


def match_seam(face: np.ndarray, background: np.ndarray, inverse: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Match the stylized face's lightness and colour to the stylized background along the
    paste mask's boundary, fading to no change SEAM_REACH inside it.

    Face and background may come from two different models (JP_face on a v3 Hayao
    background): their difference (CIELAB) is measured in the feather band of the mask,
    smoothed along the boundary (a local, not a global, offset: hair meets sky on one side and
    a shirt on the other), and added to the face with a weight that is 1 at the boundary and 0
    in the interior, where the face keeps its own colours (and the person's skin tone)."""
    s = face.shape[0]
    m = mask.astype(np.float32)
    band = ((m > 0.02) & (m < 0.98)).astype(np.float32)
    if band.sum() < 10:
        return face
    matrix = cv2.invertAffineTransform(inverse)
    under = cv2.warpAffine(background, matrix, (s, s), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
    lab_face = cv2.cvtColor(face.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)
    lab_bg = cv2.cvtColor(under.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)
    sigma = max(2.0, SEAM_SIGMA * s)
    weight = cv2.GaussianBlur(band, (0, 0), sigma)
    diff = cv2.GaussianBlur((lab_bg - lab_face) * band[..., None], (0, 0), sigma)
    diff /= np.maximum(weight, 1e-3)[..., None]
    inside = (m >= 0.5).astype(np.uint8)
    depth = cv2.distanceTransform(inside, cv2.DIST_L2, 5)
    ramp = np.clip(1.0 - depth / max(1.0, SEAM_REACH * s), 0.0, 1.0)
    ramp *= np.clip(weight / max(float(weight.max()), 1e-6) * 4, 0, 1)  # no reach, no offset
    # The mask's outer half lies beyond the face and hair outline (its dilation): there the
    # face model painted its own background, which would show as a halo; take the background's.
    outer = np.clip((0.5 - m) / 0.5, 0.0, 1.0)[..., None]
    lab_face += (diff * ramp[..., None]) * (1 - outer) + (lab_bg - lab_face) * outer
    lab_face[..., 0] = np.clip(lab_face[..., 0], 0, 100)
    rgb = cv2.cvtColor(lab_face, cv2.COLOR_LAB2RGB)
    return np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)


def compose(
    background: np.ndarray,
    faces: list[np.ndarray],
    inverses: list[np.ndarray],
    masks: list[np.ndarray],
    sharpen_weight: float,
) -> np.ndarray:
    """Paste every stylized face (seam-matched) into the stylized background, then sharpen."""
    out = background
    for face, inverse, mask in zip(faces, inverses, masks):
        out = paste_face(out, match_seam(face, background, inverse, mask), inverse, mask)
    return unsharp(out, sharpen_weight)


@dataclass
class FaceBatch:
    """The prepared faces of one photo, as the later stages need them.

    refined: (N, S, S, 3) uint8, the generator's inputs; inverse: (N, 2, 3) float64, crop ->
    image; mask: (N, S, S) uint8, the paste masks in steps of 1/255 (their exact representation
    everywhere, so storing them loses nothing).
    """

    refined: np.ndarray
    inverse: np.ndarray
    mask: np.ndarray
    # keep.py's regions of the input crops, (N, S, S, 3) uint8 (skin, glasses, beard), and the
    # input's mean skin CIELAB, (N, 3) float32 (NaN: none). Zeros / NaN: nothing to keep.
    keep: np.ndarray | None = None
    skin_lab: np.ndarray | None = None
    # The input's five landmarks in crop coordinates, (N, 5, 2) float32 (NaN: unknown): where
    # the features-in-place step (features.py) moves the stylized features back to.
    landmarks: np.ndarray | None = None

    def __post_init__(self) -> None:
        n, size = len(self.inverse), self.refined.shape[1] if self.refined.ndim == 4 else 0
        if self.keep is None:
            self.keep = np.zeros((n, size, size, 3), np.uint8)
        if self.skin_lab is None:
            self.skin_lab = np.full((n, 3), np.nan, np.float32)
        if self.landmarks is None:
            self.landmarks = np.full((n, 5, 2), np.nan, np.float32)

    def __len__(self) -> int:
        return len(self.refined)

    def eye_px(self, i: int) -> float:
        """Face i's eye distance in the photo, in pixels (NaN without landmarks)."""
        lm = np.asarray(self.landmarks[i], np.float64)
        return float(np.linalg.norm(lm[1] - lm[0]) * np.hypot(*self.inverse[i][0, :2]))

    @classmethod
    def from_aligned(cls, aligned: list[AlignedFace], size: int) -> "FaceBatch":
        if not aligned:
            return cls(np.zeros((0, size, size, 3), np.uint8), np.zeros((0, 2, 3)),
                       np.zeros((0, size, size), np.uint8))
        s = aligned[0].refined.shape[0]
        keep = [a.keep if a.keep is not None else np.zeros((s, s, 3), np.uint8) for a in aligned]
        skin = [a.skin_lab if a.skin_lab is not None else np.full(3, np.nan, np.float32) for a in aligned]
        return cls(np.stack([a.refined for a in aligned]), np.stack([a.inverse for a in aligned]),
                   np.stack([mask_to_uint8(a.paste_mask) for a in aligned]), np.stack(keep),
                   np.stack(skin).astype(np.float32),
                   np.stack([np.asarray(a.landmarks, np.float32).reshape(5, 2) for a in aligned]))

    def arrays(self) -> dict[str, np.ndarray]:
        return {"refined": self.refined, "inverse": self.inverse, "mask": self.mask,
                "keep": self.keep, "skin_lab": self.skin_lab, "landmarks": self.landmarks}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "FaceBatch":
        # An artifact written before keep.py has no keep regions: nothing is kept then; one
        # written before features.py has no landmarks: no features-in-place warp then.
        return cls(arrays["refined"], arrays["inverse"], arrays["mask"], arrays.get("keep"),
                   arrays.get("skin_lab"), arrays.get("landmarks"))


class FaceHelper:
    """The recipe's face geometry and compositing for one set of parameters."""

    def __init__(self, params: Params | None = None, framing: float | None = None):
        self.params = params or Params()
        self.framing = framing  # the face model's eye distance / crop side (None: the default)

    def select(self, faces: list[Face]) -> list[Face]:
        """Faces confident and large enough for the recipe; the rest are left to the
        background pass (no confident human face means the image is stylized whole)."""
        p = self.params
        return [f for f in faces
                if f.score >= p.alignment_threshold and eye_distance(f) >= p.min_face_eye_distance]

    def align(self, rgb: np.ndarray, face: Face) -> AlignedFace:
        return align_face(rgb, face, self.params.face_size, self.framing)

    def paste_mask(self, labels: np.ndarray) -> np.ndarray:
        """The feathered paste mask of a parsed crop, float32 in steps of 1/255 (see FaceBatch)."""
        return mask_from_uint8(mask_to_uint8(paste_mask(labels)))

    def batch(self, aligned: list[AlignedFace]) -> FaceBatch:
        return FaceBatch.from_aligned(aligned, self.params.face_size)

    def work_size(self, inverse: np.ndarray, min_size: int | None = None) -> int:
        """The size to stylize a face crop at: the face's own resolution in the photo, rounded
        up to face_min_size plus a multiple of half of it, at most face_size. A face 60 px wide gains
        nothing from a 512² generator pass but costs 16 times a 128² one; few distinct sizes
        keep generators that compile per input size (TFLite) from recompiling."""
        crop_px_per_image_px = 1.0 / float(np.hypot(*inverse[0, :2]))
        native = self.params.face_size / crop_px_per_image_px
        # Steps of half the minimum (256, 384, 512), not doubling: a face of 300 px stylized at
        # 512 costs 2.9 times its own resolution's pixels, at 384 1.6 times; three sizes still
        # keep per-size compiles few. (The ONNX engines take any multiple of 16.)
        size = max(self.params.face_min_size, min(min_size or 0, self.params.face_size))
        step = max(16, self.params.face_min_size // 2)
        while size < native and size < self.params.face_size:
            size += step
        return min(size, self.params.face_size)

    def stylize(self, faces: FaceBatch, generator, min_size: int | None = None) -> list[np.ndarray]:
        """The refined crops through the generator at their work sizes (at least `min_size`,
        the face model's: JP_face draws no eyes below 512), batched per size where the
        generator supports batches; returned at the crops' own size for paste-back, with the
        person's skin tone, glasses and beard kept (keep.py)."""
        crops = list(faces.refined)
        if not crops:
            return []
        sizes = [self.work_size(m, min_size) for m in faces.inverse]
        out: list[np.ndarray | None] = [None] * len(crops)
        batch = getattr(generator, "batch", None)
        for size in sorted(set(sizes)):
            idx = [i for i, s in enumerate(sizes) if s == size]
            small = [c if c.shape[0] == size else cv2.resize(c, (size, size), interpolation=cv2.INTER_AREA)
                     for c in (crops[i] for i in idx)]
            done = list(batch(small)) if batch else [generator(c) for c in small]
            for i, d in zip(idx, done):
                s = crops[i].shape[0]
                d = d if d.shape[0] == s else cv2.resize(d, (s, s), interpolation=cv2.INTER_CUBIC)
                out[i] = self.keep(d, faces, i)
        return out  # type: ignore[return-value]

    def keep(self, stylized: np.ndarray, faces: "FaceBatch", i: int) -> np.ndarray:
        """keep.py on one stylized crop (at the crop's size): skin tone, glasses and beard, and
        the input's structure on a face small in the photo."""
        ref = faces.refined[i]
        out = apply_keep(stylized, ref, faces.keep[i], faces.skin_lab[i], self.params.skin_tone)
        if self.params.small_face_structure:
            out = small_face_structure(out, ref, faces.keep[i], faces.eye_px(i))
        return out

    def compose(self, background: np.ndarray, faces: FaceBatch, crops: list[np.ndarray]) -> np.ndarray:
        """Paste the stylized crops back through their masks, then the recipe's sharpening."""
        return compose(background, list(crops), list(faces.inverse),
                       [mask_from_uint8(m) for m in faces.mask], self.params.post_sharpen_weight)
