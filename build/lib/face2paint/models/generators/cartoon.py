"""A classical cartoon filter that needs no weights.

It keeps the service useful where no generator weights can be had: edge-preserving smoothing
flattens shading, k-means colour quantisation gives cel-like flat regions, and adaptive
thresholding of the luminance draws ink lines. It is only a default when nothing better is
available; a requested model id never silently becomes this.
"""

from __future__ import annotations

import cv2
import numpy as np


class ClassicalCartoon:
    model_id = "classical-cartoon"

    def __init__(self, colors: int = 14, smooth_passes: int = 3, seed: int = 0):
        self.colors = colors
        self.smooth_passes = smooth_passes
        self.seed = seed

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        # Smooth at reduced resolution: same look, a fraction of the bilateral filter's cost.
        scale = min(1.0, 640 / max(h, w))
        small = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))),
                           interpolation=cv2.INTER_AREA) if scale < 1 else rgb.copy()
        for _ in range(self.smooth_passes):
            small = cv2.bilateralFilter(small, d=7, sigmaColor=40, sigmaSpace=7)
        smooth = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC) if scale < 1 else small
        flat = self._quantize(smooth)
        return self._ink(rgb, flat)

    def _quantize(self, rgb: np.ndarray) -> np.ndarray:
        pixels = rgb.reshape(-1, 3).astype(np.float32)
        rng = np.random.default_rng(self.seed)
        sample = pixels[rng.choice(len(pixels), size=min(len(pixels), 20000), replace=False)]
        k = min(self.colors, len(np.unique(sample, axis=0)))
        if k < 2:
            return rgb
        criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 20, 1.0)
        cv2.setRNGSeed(self.seed)
        _, _, centers = cv2.kmeans(sample, k, None, criteria, 2, cv2.KMEANS_PP_CENTERS)
        # Nearest centre per pixel, in chunks to bound memory on large images.
        out = np.empty(len(pixels), dtype=np.int32)
        c2 = (centers**2).sum(1)
        for start in range(0, len(pixels), 1 << 18):
            p = pixels[start : start + (1 << 18)]
            out[start : start + len(p)] = np.argmin(c2[None, :] - 2 * p @ centers.T, axis=1)
        flat = centers[out].reshape(rgb.shape)
        # Keep a little of the smooth shading so faces do not look posterised.
        return np.clip(0.75 * flat + 0.25 * rgb, 0, 255).astype(np.uint8)

    def _ink(self, original: np.ndarray, flat: np.ndarray) -> np.ndarray:
        gray = cv2.cvtColor(original, cv2.COLOR_RGB2GRAY)
        block = max(3, (min(gray.shape) // 60) | 1)
        edges = cv2.adaptiveThreshold(
            cv2.medianBlur(gray, 5), 255, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY, block, 7
        )
        ink = cv2.GaussianBlur(edges, (3, 3), 0).astype(np.float32)[..., None] / 255.0
        return (flat.astype(np.float32) * (0.35 + 0.65 * ink)).astype(np.uint8)

    def batch(self, images: list[np.ndarray]) -> list[np.ndarray]:
        return [self(im) for im in images]
