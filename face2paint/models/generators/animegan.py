"""AnimeGANv2 generator in PyTorch, parameter-compatible with bryandlee/animegan2-pytorch.

Module and parameter names mirror that repository's ``model.py`` one to one, so its published
state_dicts (face_paint_512_v2.pt, face_paint_512_v1.pt, celeba_distill.pt, paprika.pt) load
with ``load_state_dict(strict=True)`` and nothing is renamed on the way.

One addition that does not touch the parameters: ``Generator(upsample=...)``. bryandlee's
default (bilinear, align_corners=True, to the exact skip size) is what its weights were trained
with and stays the default. The original TensorFlow AnimeGANv2 (and weights converted from it,
see ``convert_hayao.py``) upsamples with TF1 ``resize_bilinear`` (align_corners=False,
half_pixel_centers=False); ``upsample="tf"`` reproduces that exactly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..sessions import TorchSession

__all__ = [
    "ConvNormLReLU",
    "InvertedResBlock",
    "Generator",
    "load_generator",
    "AnimeGANStylizer",
    "UPSAMPLE_MODES",
    "export_onnx",
    "cached_onnx",
]

UPSAMPLE_MODES = ("align_corners", "half_pixel", "tf")


class ConvNormLReLU(nn.Sequential):
    # Indices matter: 0 pad, 1 conv, 2 norm, 3 act -> "…1.weight", "…2.weight", "…2.bias".
    def __init__(self, in_ch, out_ch, kernel_size=3, stride=1, padding=1, pad_mode="reflect",
                 groups=1, bias=False):
        pad_layer = {
            "zero": nn.ZeroPad2d,
            "same": nn.ReplicationPad2d,
            "reflect": nn.ReflectionPad2d,
        }
        if pad_mode not in pad_layer:
            raise NotImplementedError(pad_mode)
        super().__init__(
            pad_layer[pad_mode](padding),
            nn.Conv2d(in_ch, out_ch, kernel_size=kernel_size, stride=stride, padding=0,
                      groups=groups, bias=bias),
            # GroupNorm with one group == TF layer_norm over (H, W, C) with per-channel affine.
            nn.GroupNorm(num_groups=1, num_channels=out_ch, affine=True),
            nn.LeakyReLU(0.2, inplace=True),
        )


class InvertedResBlock(nn.Module):
    def __init__(self, in_ch, out_ch, expansion_ratio=2):
        super().__init__()
        self.use_res_connect = in_ch == out_ch
        bottleneck = int(round(in_ch * expansion_ratio))
        layers = []
        if expansion_ratio != 1:
            layers.append(ConvNormLReLU(in_ch, bottleneck, kernel_size=1, padding=0))
        # depthwise (the only conv with a bias in the whole network)
        layers.append(ConvNormLReLU(bottleneck, bottleneck, groups=bottleneck, bias=True))
        # pointwise, linear
        layers.append(nn.Conv2d(bottleneck, out_ch, kernel_size=1, padding=0, bias=False))
        layers.append(nn.GroupNorm(num_groups=1, num_channels=out_ch, affine=True))
        self.layers = nn.Sequential(*layers)

    def forward(self, input):
        out = self.layers(input)
        if self.use_res_connect:
            out = input + out
        return out


def _resize_tf_legacy(x: torch.Tensor, size) -> torch.Tensor:
    """Bilinear resize as TF1 ``resize_bilinear(align_corners=False, half_pixel_centers=False)``.

    TF samples source coordinate dst * in/out with the far neighbour clamped. PyTorch has no
    such mode, but replicate-padding one pixel at the far edge and resizing that (n + 1) grid
    with align_corners=True to (m + 1) samples dst * n/m with the same clamp; crop back to m.
    """
    # Under ONNX export the sizes are traced values: int() would bake the export size in.
    tracing = torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
    out_h, out_w = (size[0], size[1]) if tracing else (int(size[0]), int(size[1]))
    padded = F.pad(x, (0, 1, 0, 1), mode="replicate")
    y = F.interpolate(padded, (out_h + 1, out_w + 1), mode="bilinear", align_corners=True)
    return y[:, :, :out_h, :out_w]


class Generator(nn.Module):
    def __init__(self, upsample: str = "align_corners"):
        super().__init__()
        if upsample not in UPSAMPLE_MODES:
            raise ValueError(f"upsample must be one of {UPSAMPLE_MODES}, got {upsample!r}")
        # Not a parameter or buffer: state_dict stays exactly bryandlee's.
        self.upsample = upsample

        self.block_a = nn.Sequential(
            ConvNormLReLU(3, 32, kernel_size=7, padding=3),
            ConvNormLReLU(32, 64, stride=2, padding=(0, 1, 0, 1)),
            ConvNormLReLU(64, 64),
        )
        self.block_b = nn.Sequential(
            ConvNormLReLU(64, 128, stride=2, padding=(0, 1, 0, 1)),
            ConvNormLReLU(128, 128),
        )
        self.block_c = nn.Sequential(
            ConvNormLReLU(128, 128),
            InvertedResBlock(128, 256, 2),
            InvertedResBlock(256, 256, 2),
            InvertedResBlock(256, 256, 2),
            InvertedResBlock(256, 256, 2),
            ConvNormLReLU(256, 128),
        )
        self.block_d = nn.Sequential(
            ConvNormLReLU(128, 128),
            ConvNormLReLU(128, 128),
        )
        self.block_e = nn.Sequential(
            ConvNormLReLU(128, 64),
            ConvNormLReLU(64, 64),
            ConvNormLReLU(64, 32, kernel_size=7, padding=3),
        )
        self.out_layer = nn.Sequential(
            nn.Conv2d(32, 3, kernel_size=1, stride=1, padding=0, bias=False),
            nn.Tanh(),
        )

    def _up(self, x: torch.Tensor, size, mode: str) -> torch.Tensor:
        if mode == "align_corners":
            return F.interpolate(x, size, mode="bilinear", align_corners=True)
        if mode == "half_pixel":
            # bryandlee's align_corners=False branch: a plain 2x (sizes must be multiples of 4).
            return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        return _resize_tf_legacy(x, size)

    def forward(self, input, align_corners: bool | None = None):
        # align_corners=True/False keeps bryandlee's call signature; None uses self.upsample.
        if align_corners is None:
            mode = self.upsample
        else:
            mode = "align_corners" if align_corners else "half_pixel"
        out = self.block_a(input)
        half_size = out.size()[-2:]
        out = self.block_b(out)
        out = self.block_c(out)
        out = self._up(out, half_size, mode)
        out = self.block_d(out)
        out = self._up(out, input.size()[-2:], mode)
        out = self.block_e(out)
        out = self.out_layer(out)
        return out


def _describe_expected(model: nn.Module) -> str:
    sd = model.state_dict()
    first = next(iter(sd.items()))
    return (f"a bryandlee/animegan2-pytorch Generator state_dict ({len(sd)} tensors, "
            f"e.g. {first[0]} {list(first[1].shape)}, out_layer.0.weight [3, 32, 1, 1])")


def load_generator(path_or_state_dict, device="cpu", upsample: str = "align_corners") -> Generator:
    """Build a Generator from a bryandlee-format checkpoint file or an in-memory state_dict.

    Files are read with ``weights_only=True`` (no pickled code runs). A ``{"state_dict": …}``
    wrapper or a DataParallel ``module.`` prefix is unwrapped; anything else that does not match
    the layout exactly raises ValueError naming the source and what was expected.
    """
    if isinstance(path_or_state_dict, Mapping):
        source = "<state_dict>"
        sd = path_or_state_dict
    else:
        source = str(path_or_state_dict)
        if not Path(source).is_file():
            raise FileNotFoundError(f"AnimeGANv2 weights not found: {source}")
        try:
            sd = torch.load(source, map_location=device, weights_only=True)
        except Exception as exc:  # pickle errors, truncated files, foreign formats
            raise ValueError(f"{source}: not a loadable PyTorch state_dict ({exc})") from exc
    if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
        sd = sd["state_dict"]
    if not isinstance(sd, Mapping):
        raise ValueError(f"{source}: expected a state_dict mapping, got {type(sd).__name__}")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}

    model = Generator(upsample=upsample)
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    wrong_shape = [
        f"{k}: got {list(sd[k].shape)}, expected {list(expected[k].shape)}"
        for k in expected
        if k in sd and tuple(getattr(sd[k], "shape", ())) != tuple(expected[k].shape)
    ]
    if missing or unexpected or wrong_shape:
        parts = [f"{source}: keys do not match the AnimeGANv2 generator; expected "
                 f"{_describe_expected(model)}."]
        if missing:
            parts.append(f"missing {len(missing)}: {missing[:5]}{' …' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: "
                         f"{unexpected[:5]}{' …' if len(unexpected) > 5 else ''}")
        if wrong_shape:
            parts.append(f"wrong shape {len(wrong_shape)}: {wrong_shape[:3]}")
        raise ValueError(" ".join(parts))

    model.load_state_dict({k: torch.as_tensor(v) for k, v in sd.items()}, strict=True)
    model.to(device).eval()
    model.requires_grad_(False)
    return model


def export_onnx(generator: Generator, path: str | Path, fp16: bool = False) -> Path:
    """Write the generator as ONNX (NCHW float input in [-1, 1], any H and W that are multiples
    of 4), with the TorchScript exporter: the dynamo one needs onnxscript, which the worker
    does not install, and gains nothing for a plain conv chain. fp16: weights and I/O in
    float16, for GPU engines (traced on the CPU)."""
    import copy

    path = Path(path)
    model = copy.deepcopy(generator).eval()
    dtype = torch.float16 if fp16 else torch.float32
    model = model.to(dtype)
    x = torch.zeros(1, 3, 64, 96, dtype=dtype)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode():
        torch.onnx.export(model, (x,), str(tmp), input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {2: "height", 3: "width"},
                                        "output": {2: "height", 3: "width"}},
                          opset_version=17, dynamo=False)
    os.replace(tmp, path)  # atomic: a concurrent process sees no half-written file
    return path


def cached_onnx(generator: Generator, weights: str | Path, cache_dir: str | Path,
                fp16: bool = False) -> Path:
    """The ONNX export of `generator` (loaded from `weights`) in `cache_dir`, exported on first
    use. Keyed by the weights' content, the upsampling mode and the float type, so new weights
    or another mode never reuse an old export."""
    import hashlib

    digest = hashlib.sha256(Path(weights).read_bytes()).hexdigest()[:16]
    name = f"{Path(weights).stem}-{digest}-{generator.upsample}{'-fp16' if fp16 else ''}.onnx"
    path = Path(cache_dir) / name
    if not path.is_file():
        export_onnx(generator, path, fp16=fp16)
    return path


def _pad_reflect(img: np.ndarray, multiple: int) -> tuple[np.ndarray, int, int]:
    """Pad H and W at the bottom/right up to a multiple; reflect so no hard edge is invented."""
    h, w = img.shape[:2]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        # numpy's reflect cannot mirror a 1-pixel axis; edge is the only sensible choice there.
        mode = "reflect" if min(h, w) > 1 else "edge"
        img = np.pad(img, ((0, ph), (0, pw), (0, 0)), mode=mode)
    return img, h, w


class AnimeGANStylizer:
    """numpy RGB uint8 in, numpy RGB uint8 of the same size out. The session holds the
    generator on its device and float type (sessions.TorchSession)."""

    # Two stride-2 stages: sides that are multiples of 4 downsample and upsample exactly, so
    # every upsampling mode returns the input size and no half-pixel drift accumulates.
    pad_multiple = 4

    def __init__(self, session: TorchSession, model_id: str, max_batch: int = 8):
        self.model_id = model_id
        self.session = session
        self.generator = session.module
        self.device = session.device
        self.dtype = session.dtype
        self.max_batch = max(1, int(max_batch))

    @staticmethod
    def _check(img: np.ndarray) -> None:
        if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) RGB array, got "
                             f"{getattr(img, 'shape', type(img))}")
        if img.dtype != np.uint8:
            raise ValueError(f"expected uint8, got {img.dtype}")
        if img.shape[0] < 1 or img.shape[1] < 1:
            raise ValueError(f"empty image {img.shape}")

    def _forward(self, imgs: list[np.ndarray]) -> list[np.ndarray]:
        padded = [_pad_reflect(im, self.pad_multiple)[0] for im in imgs]
        h, w = imgs[0].shape[:2]
        with torch.inference_mode():
            x = torch.from_numpy(np.stack(padded)).to(self.device)
            x = x.permute(0, 3, 1, 2).to(self.dtype).div_(127.5).sub_(1.0)
            y = self.generator(x)
            y = y[:, :, :h, :w].float().add_(1.0).mul_(127.5).clamp_(0, 255).round_()
            y = y.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return [np.ascontiguousarray(o) for o in y]

    def __call__(self, rgb_uint8: np.ndarray) -> np.ndarray:
        self._check(rgb_uint8)
        return self._forward([rgb_uint8])[0]

    def batch(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Stylize many images; same-size ones share forward passes (up to max_batch each).

        GroupNorm normalises each sample on its own, so batching does not change results
        beyond float rounding.
        """
        for im in images:
            self._check(im)
        out: list[np.ndarray | None] = [None] * len(images)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(images):
            groups.setdefault(im.shape[:2], []).append(i)
        for idx in groups.values():
            for start in range(0, len(idx), self.max_batch):
                chunk = idx[start:start + self.max_batch]
                for i, o in zip(chunk, self._forward([images[i] for i in chunk])):
                    out[i] = o
        return out  # type: ignore[return-value]
