"""AnimeGANv2 torch generator: bryandlee state_dict layout, loading, stylizer behaviour.

Runs with random weights (no files needed); the published checkpoints are exercised only when
FACE2PAINT_MODEL_DIR holds them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from tests import helpers
from face2paint.models.generators.animegan import (
    AnimeGANStylizer,
    Generator,
    _resize_tf_legacy,
    load_generator,
)
from face2paint.models.sessions import open_session


def _cnl(prefix: str, cin: int, cout: int, k: int, groups: int = 1, bias: bool = False):
    """Keys of one ConvNormLReLU: index 1 is the conv, 2 the GroupNorm."""
    keys = [(f"{prefix}.1.weight", (cout, cin // groups, k, k))]
    if bias:
        keys.append((f"{prefix}.1.bias", (cout,)))
    keys += [(f"{prefix}.2.weight", (cout,)), (f"{prefix}.2.bias", (cout,))]
    return keys


def _irb(prefix: str, cin: int, cout: int, ratio: int = 2):
    mid = cin * ratio
    return (
        _cnl(f"{prefix}.layers.0", cin, mid, 1)
        + _cnl(f"{prefix}.layers.1", mid, mid, 3, groups=mid, bias=True)
        + [(f"{prefix}.layers.2.weight", (cout, mid, 1, 1)),
           (f"{prefix}.layers.3.weight", (cout,)), (f"{prefix}.layers.3.bias", (cout,))]
    )


# The published bryandlee/animegan2-pytorch checkpoints (face_paint_512_v2.pt, paprika.pt, ...),
# in state_dict order, derived from that repository's model.py.
EXPECTED = (
    _cnl("block_a.0", 3, 32, 7) + _cnl("block_a.1", 32, 64, 3) + _cnl("block_a.2", 64, 64, 3)
    + _cnl("block_b.0", 64, 128, 3) + _cnl("block_b.1", 128, 128, 3)
    + _cnl("block_c.0", 128, 128, 3)
    + _irb("block_c.1", 128, 256) + _irb("block_c.2", 256, 256)
    + _irb("block_c.3", 256, 256) + _irb("block_c.4", 256, 256)
    + _cnl("block_c.5", 256, 128, 3)
    + _cnl("block_d.0", 128, 128, 3) + _cnl("block_d.1", 128, 128, 3)
    + _cnl("block_e.0", 128, 64, 3) + _cnl("block_e.1", 64, 64, 3)
    + _cnl("block_e.2", 64, 32, 7)
    + [("out_layer.0.weight", (3, 32, 1, 1))]
)

# Spot checks written out literally, so a bug in the helpers above cannot hide one in the model.
LITERAL = {
    "block_a.0.1.weight": (32, 3, 7, 7),
    "block_a.1.1.weight": (64, 32, 3, 3),
    "block_c.1.layers.0.1.weight": (256, 128, 1, 1),
    "block_c.1.layers.1.1.weight": (256, 1, 3, 3),
    "block_c.1.layers.1.1.bias": (256,),
    "block_c.1.layers.2.weight": (256, 256, 1, 1),
    "block_c.2.layers.1.1.weight": (512, 1, 3, 3),
    "block_c.4.layers.2.weight": (256, 512, 1, 1),
    "block_c.4.layers.3.bias": (256,),
    "block_c.5.1.weight": (128, 256, 3, 3),
    "block_e.2.1.weight": (32, 64, 7, 7),
    "block_e.2.2.weight": (32,),
    "out_layer.0.weight": (3, 32, 1, 1),
}


def _random_generator(seed: int = 0, upsample: str = "align_corners") -> Generator:
    torch.manual_seed(seed)
    g = Generator(upsample=upsample)
    # Non-trivial norm affine so a dropped/misplaced norm parameter shows up in outputs.
    with torch.no_grad():
        for m in g.modules():
            if isinstance(m, torch.nn.GroupNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return g.eval()


def test_state_dict_layout_is_bryandlee():
    sd = Generator().state_dict()
    assert [(k, tuple(v.shape)) for k, v in sd.items()] == EXPECTED
    for k, shape in LITERAL.items():
        assert tuple(sd[k].shape) == shape, k
    assert len(sd) == 77  # 12 ConvNormLReLU x 3 + 4 inverted residual blocks x 10 + out_layer
    assert sum(v.numel() for v in sd.values()) == 2_143_552
    # Only the depthwise convs have biases.
    conv_biases = [k for k in sd if k.endswith(".1.bias") and "layers.1.1" in k]
    assert len(conv_biases) == 4


def test_save_and_load_roundtrip(tmp_path: Path):
    g = _random_generator(1)
    path = tmp_path / "face_paint_test.pt"
    torch.save(g.state_dict(), path)
    loaded = load_generator(path)
    assert not loaded.training
    for (k, a), (k2, b) in zip(g.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    x = torch.rand(1, 3, 64, 48) * 2 - 1
    with torch.inference_mode():
        assert torch.equal(g(x), loaded(x))
    # Wrappers seen in the wild: {"state_dict": ...} and DataParallel's "module." prefix.
    wrapped = {"state_dict": {f"module.{k}": v for k, v in g.state_dict().items()}}
    load_generator(wrapped)


def test_load_generator_reports_mismatch(tmp_path: Path):
    sd = _random_generator(2).state_dict()
    sd.pop("block_c.3.layers.1.1.bias")
    sd["extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pt"
    torch.save(sd, path)
    with pytest.raises(ValueError) as err:
        load_generator(path)
    msg = str(err.value)
    assert "broken.pt" in msg and "block_c.3.layers.1.1.bias" in msg and "extra.weight" in msg
    assert "bryandlee" in msg

    sd = _random_generator(2).state_dict()
    sd["out_layer.0.weight"] = torch.zeros(3, 64, 1, 1)
    with pytest.raises(ValueError, match=r"out_layer\.0\.weight: got \[3, 64, 1, 1\]"):
        load_generator(sd)
    with pytest.raises(FileNotFoundError):
        load_generator(tmp_path / "missing.pt")


@pytest.mark.parametrize("upsample", ["align_corners", "half_pixel", "tf"])
def test_stylizer_keeps_odd_sizes(upsample: str):
    st = AnimeGANStylizer(open_session("torch", _random_generator(3, upsample)), "random")
    rng = np.random.default_rng(0)
    for h, w in [(301, 257), (33, 19)]:
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        out = st(img)
        assert out.shape == (h, w, 3) and out.dtype == np.uint8
        assert out.std() > 1.0  # not a constant image


def test_stylizer_padding_is_cropped_back():
    """The crop must be the top-left of the padded result, not a resize of it."""
    g = _random_generator(4)
    st = AnimeGANStylizer(open_session("torch", g), "random")
    img = np.random.default_rng(1).integers(0, 256, (61, 45, 3), dtype=np.uint8)
    padded = np.pad(img, ((0, 3), (0, 3), (0, 0)), mode="reflect")
    ref = st(padded)[:61, :45]
    np.testing.assert_array_equal(st(img), ref)


def test_batch_equals_single():
    st = AnimeGANStylizer(open_session("torch", _random_generator(5)), "random", max_batch=2)
    rng = np.random.default_rng(2)
    imgs = [rng.integers(0, 256, s, dtype=np.uint8)
            for s in [(64, 80, 3), (50, 50, 3), (64, 80, 3), (64, 80, 3), (50, 50, 3)]]
    batched = st.batch(imgs)
    assert len(batched) == len(imgs)
    for img, b in zip(imgs, batched):
        single = st(img)
        assert b.shape == img.shape
        # GroupNorm is per sample; batching may only change float rounding.
        assert np.abs(b.astype(int) - single.astype(int)).max() <= 1


def test_stylizer_rejects_bad_input():
    st = AnimeGANStylizer(open_session("torch", _random_generator(6)), "random")
    with pytest.raises(ValueError):
        st(np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError):
        st(np.zeros((8, 8, 3), np.float32))


def test_tf_legacy_resize_matches_definition():
    """TF1 resize_bilinear(align_corners=False, half_pixel_centers=False): src = dst * in/out."""
    x = torch.randn(1, 2, 5, 7, dtype=torch.float64)

    def ref_axis(t: torch.Tensor, dim: int, n_out: int) -> torch.Tensor:
        n_in = t.shape[dim]
        out = []
        for d in range(n_out):
            s = d * n_in / n_out
            i0 = int(np.floor(s))
            i1 = min(i0 + 1, n_in - 1)
            a = s - i0
            out.append(t.select(dim, i0) * (1 - a) + t.select(dim, i1) * a)
        return torch.stack(out, dim)

    for size in [(10, 14), (8, 9), (5, 7), (3, 4)]:
        ref = ref_axis(ref_axis(x, 2, size[0]), 3, size[1])
        torch.testing.assert_close(_resize_tf_legacy(x, size), ref)


PUBLISHED = ["face_paint_512_v2.pt", "face_paint_512_v1.pt", "celeba_distill.pt", "paprika.pt"]


@pytest.mark.parametrize("name", PUBLISHED)
def test_published_checkpoint_loads(name: str):
    path = helpers.model_file(name)
    g = load_generator(path)
    sd = torch.load(path, map_location="cpu", weights_only=True)
    Generator().load_state_dict(sd, strict=True)
    img = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert AnimeGANStylizer(open_session("torch", g), name)(img).shape == img.shape
