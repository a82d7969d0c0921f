"""Features in place: warp a stylized face crop so its eyes, nose and mouth corners sit where the
input's were.

A face model repaints the aligned crop in its own look, and with it moves the features a little:
JP_face draws anime eyes higher and wider apart, a mouth smaller. The product promises the same
person with the features in place, so after stylization the five landmarks are found again on
the stylized crop (the pipeline's detector, RetinaFace mobilenet0.25: cheap, and already in
the finalize worker's model cache, which also runs detect) and the crop is warped gently so
they return to the input's aligned landmark positions:

- a thin-plate spline of the displacement, through the five points and through fixed anchors
  (zero displacement) all along the crop border, so the crop's edge, and the paste-back
  feather beyond the face and hair, do not move;
- each point's displacement capped at MAX_SHIFT inter-ocular distances, and the whole field
  scaled down until it folds nothing (the map's Jacobian determinant stays above MIN_JACOBIAN):
  a gentle correction, never a remodelled face;
- skipped for faces small in the photo (eyes closer than MIN_EYE_PX): there the input's own
  landmarks are a pixel or two off, a tenth of the eye distance, so they are no target to warp
  to (measured: on the 12-16 px faces of dlib_family the warp moved dlib's landmarks further);
- skipped (the crop comes back as it is) when no face is found confidently on the stylized
  crop (score below MIN_SCORE), when the face found is not this face (its eyes farther than
  MATCH_EYES from the input's), or when its landmarks disagree with the input's by more than
  MAX_NLE on average (an implausible detection, not a feature to move back).

The warp runs on the crop before paste-back (finalize), so the paste mask, the seam matching
and the inverse transform are those of the input, as without it.
"""

from __future__ import annotations

import cv2
import numpy as np

MIN_SCORE = 0.8
MIN_EYE_PX = 32.0  # the face's eye distance in the photo below which nothing is warped
MATCH_EYES = 0.5  # eye midpoint shift, in inter-ocular distances, for "the same face"
MAX_NLE = 0.5  # mean landmark disagreement above which the detection is not trusted
MAX_SHIFT = 0.2  # cap of each point's displacement, in inter-ocular distances
MIN_JACOBIAN = 0.6  # the warp may compress or stretch locally by at most this much
ANCHORS_PER_SIDE = 8
GRID_STEP = 8  # the spline is evaluated every GRID_STEP px, then interpolated


def _tps_kernel(r2: np.ndarray) -> np.ndarray:
    # U(r) = r^2 log r = 0.5 r^2 log r^2, with U(0) = 0.
    with np.errstate(divide="ignore", invalid="ignore"):
        k = 0.5 * r2 * np.log(r2)
    return np.nan_to_num(k, nan=0.0, posinf=0.0, neginf=0.0)


def tps_field(points: np.ndarray, values: np.ndarray, xs: np.ndarray, ys: np.ndarray,
              scale: float) -> np.ndarray:
    """Thin-plate spline through `points` (n, 2) with `values` (n, 2), evaluated on the grid
    xs x ys; (len(ys), len(xs), 2). Coordinates are divided by `scale` for conditioning."""
    c = np.asarray(points, np.float64) / scale
    v = np.asarray(values, np.float64)
    n = len(c)
    k = _tps_kernel(((c[:, None, :] - c[None, :, :]) ** 2).sum(-1))
    p = np.hstack([np.ones((n, 1)), c])
    a = np.zeros((n + 3, n + 3))
    a[:n, :n], a[:n, n:], a[n:, :n] = k, p, p.T
    b = np.zeros((n + 3, 2))
    b[:n] = v
    sol = np.linalg.lstsq(a, b, rcond=None)[0]
    w, aff = sol[:n], sol[n:]
    gx, gy = np.meshgrid(np.asarray(xs, np.float64) / scale, np.asarray(ys, np.float64) / scale)
    g = np.stack([gx.ravel(), gy.ravel()], axis=1)
    u = _tps_kernel(((g[:, None, :] - c[None, :, :]) ** 2).sum(-1))
    out = u @ w + aff[0] + g @ aff[1:]
    return out.reshape(len(ys), len(xs), 2)


def border_anchors(h: int, w: int, per_side: int = ANCHORS_PER_SIDE) -> np.ndarray:
    """Points along the crop's border (corners included), where the warp is zero."""
    t = np.linspace(0.0, 1.0, per_side + 1)
    xs, ys = t * (w - 1), t * (h - 1)
    pts = [(x, 0.0) for x in xs] + [(x, h - 1.0) for x in xs]
    pts += [(0.0, y) for y in ys[1:-1]] + [(w - 1.0, y) for y in ys[1:-1]]
    return np.array(pts, np.float64)


def _min_jacobian(field: np.ndarray, step: float) -> float:
    """Least Jacobian determinant of x -> x + field(x) on a grid of spacing `step`."""
    dx = np.gradient(field, step, axis=(0, 1))  # d/dy, d/dx of (fx, fy)
    ddy, ddx = dx
    det = (1 + ddx[..., 0]) * (1 + ddy[..., 1]) - ddx[..., 1] * ddy[..., 0]
    return float(det.min())


def displacement_field(shape: tuple[int, int], target: np.ndarray, found: np.ndarray,
                       max_shift_px: float) -> tuple[np.ndarray, float]:
    """Backward displacement (H, W, 2) float32: output pixel x samples the stylized crop at
    x + d(x), with d(target_i) = found_i - target_i (capped), d = 0 on the border. Returns it
    and the factor the field was scaled by to fold nothing (1: not at all, 0: no warp)."""
    h, w = shape
    t = np.asarray(target, np.float64).reshape(5, 2)
    d = np.asarray(found, np.float64).reshape(5, 2) - t
    norm = np.linalg.norm(d, axis=1, keepdims=True)
    d *= np.minimum(1.0, max_shift_px / np.maximum(norm, 1e-9))
    anchors = border_anchors(h, w)
    pts = np.vstack([t, anchors])
    vals = np.vstack([d, np.zeros_like(anchors)])
    xs = np.append(np.arange(0, w, GRID_STEP, dtype=np.float64), w - 1.0)
    ys = np.append(np.arange(0, h, GRID_STEP, dtype=np.float64), h - 1.0)
    coarse = tps_field(pts, vals, xs, ys, float(max(h, w)))
    factor = 1.0
    while factor > 0.1 and _min_jacobian(coarse * factor, GRID_STEP) < MIN_JACOBIAN:
        factor *= 0.7
    if factor <= 0.1:
        return np.zeros((h, w, 2), np.float32), 0.0
    # The coarse grid's last row/column is the border itself: resize it corner to corner.
    full = cv2.resize((coarse * factor).astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    full[0, :] = full[-1, :] = 0.0
    full[:, 0] = full[:, -1] = 0.0
    return full, factor


def warp(crop: np.ndarray, field: np.ndarray) -> np.ndarray:
    h, w = crop.shape[:2]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(crop, gx + field[..., 0], gy + field[..., 1], cv2.INTER_CUBIC,
                     borderMode=cv2.BORDER_REFLECT101)


def _pick(found_faces, target: np.ndarray, iod: float):
    mid = target[:2].mean(axis=0)
    best = None
    for f in found_faces:
        shift = float(np.linalg.norm(f.landmarks[:2].mean(axis=0) - mid)) / iod
        if shift <= MATCH_EYES and (best is None or f.score > best.score):
            best = f
    return best


def features_in_place(stylized: np.ndarray, target: np.ndarray, detector,
                      max_shift: float = MAX_SHIFT) -> tuple[np.ndarray, dict]:
    """The stylized crop warped so its five landmarks return to `target` (the input's aligned
    landmarks, crop coordinates), and what was done: {"applied", "reason", "nle_before",
    "nle_after_est", "factor"}. The crop comes back unchanged when the warp is skipped."""
    target = np.asarray(target, np.float64).reshape(5, 2)
    info: dict = {"applied": False}
    if not np.isfinite(target).all():
        return stylized, {**info, "reason": "no input landmarks"}
    iod = float(np.linalg.norm(target[1] - target[0]))
    if iod < 4:
        return stylized, {**info, "reason": "degenerate input landmarks"}
    faces = [f for f in detector.detect(stylized) if f.score >= MIN_SCORE]
    face = _pick(faces, target, iod)
    if face is None:
        return stylized, {**info, "reason": "no confident face on the stylized crop"}
    found = np.asarray(face.landmarks, np.float64)
    nle = float(np.linalg.norm(found - target, axis=1).mean() / iod)
    info.update(nle_before=nle, score=float(face.score))
    if nle > MAX_NLE:
        return stylized, {**info, "reason": "landmarks implausible"}
    field, factor = displacement_field(stylized.shape[:2], target, found, max_shift * iod)
    if factor == 0.0:
        return stylized, {**info, "reason": "warp would fold", "factor": 0.0}
    # Where each found point lands: target + (1 - applied share) of its displacement.
    d = found - target
    cap = np.minimum(1.0, max_shift * iod / np.maximum(np.linalg.norm(d, axis=1), 1e-9))
    rest = d * (1 - cap[:, None] * factor)
    info.update(applied=True, reason="", factor=round(factor, 3),
                nle_after_est=float(np.linalg.norm(rest, axis=1).mean() / iod))
    return warp(stylized, field), info
