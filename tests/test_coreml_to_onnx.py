"""The CoreML -> ONNX converter for the AnimeGANv3 tiny styles, against the reference rewrites in
../shared/models/coreml/reference-onnx, on real photos with ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from face2paint.cli.main import app
from tests.helpers import aligned_face, faces_dir, model_dir

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
pytest.importorskip("coremltools")

from face2paint.models.coreml_to_onnx import (  # noqa: E402
    INPUT_NAME,
    CoreMLConversionError,
    convert,
    convert_spec,
    load_spec,
)

STYLES = ("USA", "USA2", "Comic", "Arcane", "Nordic_myth1", "Nordic_myth2")


def _coreml(style: str):
    path = model_dir() / "coreml" / f"AnimeGANv3_tiny_{style}.mlmodel"
    if not path.is_file():
        pytest.skip(f"{path.name} not in FACE2PAINT_MODEL_DIR/coreml")
    return path


def _session(path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    """Network inputs from real photos: an aligned face crop at 256 and a whole photo at a
    non-square 320 x 208 (both multiples of 16, the family's constraint)."""
    face = aligned_face("df_sundar_glasses.jpg").crop
    face = np.asarray(Image.fromarray(face).resize((256, 256), Image.BICUBIC))
    whole = Image.open(faces_dir() / "if_friends_t1.jpg").convert("RGB").resize((320, 208), Image.BICUBIC)
    return [im.astype(np.float32)[None] / 127.5 - 1.0 for im in (face, np.asarray(whole))]


@pytest.mark.parametrize("style", STYLES)
def test_converted_model_matches_the_reference_on_real_photos(style, photos, tmp_path):
    ref_path = model_dir() / "coreml" / "reference-onnx" / f"AnimeGANv3_tiny_{style}_from_coreml.onnx"
    if not ref_path.is_file():
        pytest.skip(f"{ref_path.name} not in FACE2PAINT_MODEL_DIR/coreml/reference-onnx")
    out = tmp_path / f"{style}.onnx"
    done = convert(_coreml(style), out)
    assert done.layers > 100 and done.parameters > 600_000
    mine, ref = _session(out), _session(ref_path)
    assert [i.name for i in mine.get_inputs()] == [INPUT_NAME] == [i.name for i in ref.get_inputs()]
    for x in photos:
        a = mine.run(None, {INPUT_NAME: x})[0]
        b = ref.run(None, {INPUT_NAME: x})[0]
        assert a.shape == x.shape  # any H, W that are multiples of 16; NHWC kept
        assert float(np.abs(a - b).max()) < 1e-3
        assert a.std() > 0.05  # a real image came out, not a constant
    # Deterministic: a second conversion writes the same bytes, so a recorded sha256 holds.
    assert convert(_coreml(style), tmp_path / "again.onnx").sha256 == done.sha256


def test_unsupported_layer_is_named():
    spec = load_spec(_coreml("USA2"))
    layer = spec.neuralNetwork.layers[3]
    layer.softmax.SetInParent()  # the oneof now holds a layer type the family never uses
    with pytest.raises(CoreMLConversionError, match=f"layer {layer.name}: type softmax is not supported"):
        convert_spec(spec)


def test_not_a_coreml_file_is_refused(tmp_path):
    bad = tmp_path / "bad.mlmodel"
    bad.write_bytes(b"\x00\x01 definitely not protobuf \xff" * 10)
    with pytest.raises(CoreMLConversionError, match="not a CoreML model"):
        convert(bad, tmp_path / "bad.onnx")
    assert not (tmp_path / "bad.onnx").exists()


def test_cli_convert_coreml(tmp_path):
    out = tmp_path / "usa2.onnx"
    r = CliRunner().invoke(app, ["models", "convert-coreml", str(_coreml("USA2")), str(out)])
    assert r.exit_code == 0, r.output
    assert "sha256" in r.output and out.is_file()
    y = _session(out).run(None, {INPUT_NAME: np.zeros((1, 64, 48, 3), np.float32)})[0]
    assert y.shape == (1, 64, 48, 3)
    r = CliRunner().invoke(app, ["models", "convert-coreml", str(tmp_path / "missing.mlmodel"), str(out)])
    assert r.exit_code == 2 and "does not exist" in r.output
