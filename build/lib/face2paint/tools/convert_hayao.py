"""Convert the AnimeGANv2 Hayao int8 TFLite graph to a bryandlee-format PyTorch state_dict.

The graph (PINTO 050 / terryky ``animeganv2_hayao_256x256_integer_quant.tflite``) is
TachibanaYoshino's TF generator, op for op the same network as the bryandlee port:

* conv weights: int8, per output channel, OHWI (CONV_2D) and 1HWC (DEPTHWISE_CONV_2D);
  only the four depthwise convs carry a real bias (int32, scale = s_in * s_w per channel),
  every other conv has an all-zero bias that the converter added and that we drop;
* layer norm is not fused: MEAN over (1, 2, 3) / SQUARED_DIFFERENCE / RSQRT, then MUL by a
  constant gamma and SUB from a constant beta (int8, per tensor); over all of H, W, C with a
  per-channel affine, it is exactly ``GroupNorm(1, C)``; epsilon is 1e-12 in TF vs 1e-5 in torch,
  negligible at these variances;
* padding: MIRROR_PAD mode REFLECT, (0, 1) before stride-2 convs, like bryandlee;
* upsampling: RESIZE_BILINEAR with align_corners=False and half_pixel_centers=False (TF1
  legacy), which bryandlee's align_corners=True does not reproduce; use
  ``Generator(upsample="tf")`` (or ``load_generator(..., upsample="tf")``) with these weights.

Parameters are matched by execution order, not by tensor name: the converter shares and
renames tensors (a zero bias for "A/Conv" is stored as "E/Conv_2/Conv2D"), while the order of
conv and norm ops is the order of bryandlee's modules. Every shape is checked on the way.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..models.generators.animegan import Generator
from ..models.generators.tflite import TFLiteGraph

__all__ = ["convert", "main", "UPSAMPLE"]

# The upsampling mode the converted weights must be run with (see module docstring).
UPSAMPLE = "tf"


def _collect(graph: TFLiteGraph):
    """Conv (weight, bias|None) and layer-norm (gamma, beta) constants in execution order."""
    convs, norms = [], []
    gamma = None
    for name, ins, _ in graph.ops:
        if name == "CONV_2D":
            w = graph.const_value(ins[1])  # OHWI -> OIHW
            b = graph.const_value(ins[2]) if len(ins) > 2 and ins[2] >= 0 else None
            convs.append((torch.from_numpy(np.ascontiguousarray(w.transpose(0, 3, 1, 2))), b))
        elif name == "DEPTHWISE_CONV_2D":
            w = graph.const_value(ins[1])  # 1HWC -> C1HW (depth multiplier 1)
            b = graph.const_value(ins[2]) if len(ins) > 2 and ins[2] >= 0 else None
            convs.append((torch.from_numpy(np.ascontiguousarray(w.transpose(3, 0, 1, 2))), b))
        elif name == "MUL":
            # gamma: the 1-D constant multiplied into rsqrt(var + eps)
            consts = [i for i in ins if graph.is_const(i) and len(graph.shape(i)) == 1]
            if consts:
                if gamma is not None:
                    raise ValueError("layer norm gamma without a beta before the next gamma")
                gamma = graph.const_value(consts[0])
        elif name == "SUB":
            # beta - mean * gamma * rsqrt(...): beta is the constant first operand
            if graph.is_const(ins[0]) and len(graph.shape(ins[0])) == 1:
                if gamma is None:
                    raise ValueError("layer norm beta without a gamma")
                norms.append((gamma, graph.const_value(ins[0])))
                gamma = None
    return convs, norms


def convert(tflite_path) -> dict[str, torch.Tensor]:
    """Dequantized bryandlee-format state_dict from the Hayao TFLite generator."""
    path = Path(tflite_path)
    graph = TFLiteGraph(path.read_bytes())
    convs, norms = _collect(graph)

    template = Generator()
    conv_mods = [(n, m) for n, m in template.named_modules() if isinstance(m, nn.Conv2d)]
    norm_mods = [(n, m) for n, m in template.named_modules() if isinstance(m, nn.GroupNorm)]
    if len(convs) != len(conv_mods) or len(norms) != len(norm_mods):
        raise ValueError(
            f"{path}: found {len(convs)} convs / {len(norms)} layer norms, the AnimeGANv2 "
            f"generator has {len(conv_mods)} / {len(norm_mods)}; not an AnimeGANv2 graph")

    sd: dict[str, torch.Tensor] = {}
    for (name, mod), (w, b) in zip(conv_mods, convs):
        if tuple(w.shape) != tuple(mod.weight.shape):
            raise ValueError(f"{path}: {name}.weight shape {tuple(w.shape)} in the graph, "
                             f"expected {tuple(mod.weight.shape)}")
        sd[f"{name}.weight"] = w.float()
        if mod.bias is not None:
            if b is None:
                raise ValueError(f"{path}: {name} needs a bias, the graph has none")
            sd[f"{name}.bias"] = torch.from_numpy(b).float()
        elif b is not None and np.abs(b).max() > 0:
            # A bias here would not survive the mapping; bryandlee has none at this layer.
            raise ValueError(f"{path}: {name} has a non-zero bias the bryandlee layout lacks")
    for (name, mod), (g, be) in zip(norm_mods, norms):
        if g.shape != tuple(mod.weight.shape) or be.shape != tuple(mod.bias.shape):
            raise ValueError(f"{path}: {name} affine shape {g.shape}/{be.shape}, expected "
                             f"{tuple(mod.weight.shape)}")
        sd[f"{name}.weight"] = torch.from_numpy(g).float()
        sd[f"{name}.bias"] = torch.from_numpy(be).float()

    # Same keys, same order as the template (what load_state_dict(strict=True) needs).
    return {k: sd[k] for k in template.state_dict()}


def main(tflite_path, out_pt) -> Path:
    """Convert and save with torch.save; returns the output path."""
    sd = convert(tflite_path)
    out = Path(out_pt)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sd, out)
    return out


if __name__ == "__main__":  # python -m face2paint.tools.convert_hayao in.tflite out.pt
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tflite_path")
    ap.add_argument("out_pt")
    a = ap.parse_args()
    print(main(a.tflite_path, a.out_pt), file=sys.stderr)
