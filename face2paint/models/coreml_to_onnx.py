"""CoreML NeuralNetwork spec -> ONNX, for the AnimeGANv3 tiny generators published as .mlmodel.

There is no CoreML runtime on Linux, but `coremltools` parses the spec anywhere. Each layer of
the NeuralNetwork is rewritten as ONNX nodes with its weights copied unchanged (fp16 weights are
widened to fp32 exactly), and the model's fixed 1024 x 1024 image I/O is replaced by the I/O of
the AnimeGANv3 ONNX files (tiny_Cute): input [1, H, W, 3] float32 NHWC RGB in x / 127.5 - 1,
output [1, H, W, 3] tanh, any H and W that are multiples of 16. The CoreML image preprocessing
(x * 2/255 - 1) and the final `* 127.5 + 127.5` are exactly that convention, so both are dropped
rather than translated.

Only the layer types the tiny family uses are supported; anything else fails with the layer's
name. Used by the registry when it resolves a model whose source is a .mlmodel (conversion into
the model cache), and by `face2paint models convert-coreml`. Needs coremltools and onnx (worker
extra); both are imported on first use.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CONVERTER_VERSION = 1
INPUT_NAME = "AnimeGANv3_input:0"
OUTPUT_NAME = "generator/main/out_layer:0"
SIZE_MULTIPLE = 16
OPSET = 17
IR_VERSION = 8  # what every onnxruntime >= 1.15 reads
_NCHW = (0, 1, 2, 3)


class CoreMLConversionError(ValueError):
    """The .mlmodel is not a network this converter can rewrite; the message names the layer."""


@dataclass(frozen=True)
class Conversion:
    source_sha256: str
    sha256: str
    layers: int
    parameters: int


_PROTO_PACKAGE = "_face2paint_coremltools_proto"


def _model_pb2():
    """coremltools' generated protobuf module for the Model spec, loaded on its own.

    `import coremltools` imports torch, sympy and every converter it ships (about 10 s of CPU
    here) only to parse a protobuf; its `proto` package is plain generated code with relative
    imports, so it is loaded from the installed package's directory without running
    `coremltools/__init__.py`.
    """
    if _PROTO_PACKAGE in sys.modules:
        return importlib.import_module(f"{_PROTO_PACKAGE}.Model_pb2")
    found = importlib.util.find_spec("coremltools")
    if found is None or not found.submodule_search_locations:
        raise CoreMLConversionError(
            "converting a CoreML model needs coremltools: pip install 'face2paint[worker]'")
    folder = Path(next(iter(found.submodule_search_locations))) / "proto"
    spec = importlib.util.spec_from_file_location(
        _PROTO_PACKAGE, folder / "__init__.py", submodule_search_locations=[str(folder)])
    if spec is None or spec.loader is None:
        raise CoreMLConversionError(f"coremltools is installed without its proto package ({folder})")
    module = importlib.util.module_from_spec(spec)
    sys.modules[_PROTO_PACKAGE] = module
    try:
        spec.loader.exec_module(module)
    except Exception:
        del sys.modules[_PROTO_PACKAGE]
        raise
    return importlib.import_module(f"{_PROTO_PACKAGE}.Model_pb2")


def load_spec(path: str | Path):
    """The protobuf spec of a .mlmodel file (no CoreML runtime involved)."""
    spec = _model_pb2().Model()
    try:
        spec.ParseFromString(Path(path).read_bytes())
    except Exception as e:  # protobuf raises its own DecodeError
        raise CoreMLConversionError(f"{path}: not a CoreML model ({e})") from None
    return spec


def _weights(params, what: str, layer: str) -> np.ndarray:
    if len(params.floatValue):
        return np.asarray(params.floatValue, np.float32)
    if len(params.float16Value):
        return np.frombuffer(params.float16Value, np.float16).astype(np.float32)
    raise CoreMLConversionError(f"layer {layer}: {what} is quantized or raw, which is not supported")


class _Graph:
    """ONNX nodes under construction. Transposes are kept lazy: a CoreML tensor is recorded as
    (onnx name, permutation), and a real Transpose is emitted only where a layout-dependent op
    needs the tensor in NCHW. The TF1-exported CoreML graphs wrap many layers in transpose chains
    that compose to the identity; this way none of them reaches the ONNX graph."""

    def __init__(self, helper, numpy_helper):
        self.h = helper
        self.nph = numpy_helper
        self.nodes = []
        self.inits = []
        self.tensors: dict[str, tuple[str, tuple[int, ...]]] = {}
        self._n = 0

    def fresh(self, base: str) -> str:
        self._n += 1
        return f"{base}__{self._n}"

    def const(self, base: str, value) -> str:
        name = self.fresh(base)
        self.inits.append(self.nph.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attrs) -> str:
        self.nodes.append(self.h.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def nchw(self, coreml_name: str) -> str:
        """The ONNX name of a CoreML tensor in its natural (N, C, H, W) layout."""
        try:
            name, perm = self.tensors[coreml_name]
        except KeyError:
            raise CoreMLConversionError(f"tensor {coreml_name!r} is used before it is produced") from None
        if perm == _NCHW:
            return name
        out = self.node("Transpose", [name], self.fresh(f"{name}_nchw"), perm=list(perm))
        self.tensors[coreml_name] = (out, _NCHW)
        return out


def _pads_of(border_amounts) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) from CoreML's [height, width] border amounts."""
    if len(border_amounts) == 0:
        return 0, 0, 0, 0
    if len(border_amounts) != 2:
        raise CoreMLConversionError(f"expected 2 border amounts, got {len(border_amounts)}")
    hgt, wid = border_amounts
    return hgt.startEdgeSize, wid.startEdgeSize, hgt.endEdgeSize, wid.endEdgeSize


class _Converter:
    def __init__(self, spec):
        import onnx
        from onnx import helper, numpy_helper

        self.onnx = onnx
        self.g = _Graph(helper, numpy_helper)
        self.spec = spec
        # Spatial size of every tensor at the model's own fixed input size, to turn the fixed
        # targetSize of resize layers into scale factors that hold for any input size.
        self.hw: dict[str, tuple[int, int]] = {}

    # --- I/O ----------------------------------------------------------------------------------

    def check_io(self) -> tuple[str, str, int]:
        spec = self.spec
        if spec.WhichOneof("Type") != "neuralNetwork":
            raise CoreMLConversionError(
                f"expected a NeuralNetwork model, got {spec.WhichOneof('Type')}")
        desc = spec.description
        if len(desc.input) != 1 or len(desc.output) != 1:
            raise CoreMLConversionError("expected one image input and one image output")
        inp, out = desc.input[0], desc.output[0]
        for f in (inp, out):
            if f.type.WhichOneof("Type") != "imageType":
                raise CoreMLConversionError(f"{f.name}: expected an image, got {f.type.WhichOneof('Type')}")
            if f.type.imageType.colorSpace != f.type.imageType.RGB:
                raise CoreMLConversionError(f"{f.name}: expected an RGB image")
        pre = list(spec.neuralNetwork.preprocessing)
        if len(pre) != 1 or pre[0].WhichOneof("preprocessor") != "scaler":
            raise CoreMLConversionError("expected one scaler preprocessing (x * 2/255 - 1)")
        sc = pre[0].scaler
        if not (abs(sc.channelScale - 2 / 255) < 1e-6
                and sc.redBias == sc.greenBias == sc.blueBias == -1.0):
            raise CoreMLConversionError(
                f"preprocessing scale {sc.channelScale}, biases ({sc.redBias}, {sc.greenBias}, "
                f"{sc.blueBias}): only x * 2/255 - 1 is supported")
        size = inp.type.imageType.height
        if inp.type.imageType.width != size or size % SIZE_MULTIPLE:
            raise CoreMLConversionError(f"expected a square input, a multiple of {SIZE_MULTIPLE}")
        return inp.name, out.name, size

    # --- layers -------------------------------------------------------------------------------

    def run(self) -> "object":
        g = self.g
        in_name, out_name, size = self.check_io()
        x = g.node("Transpose", [INPUT_NAME], "input_nchw", perm=[0, 3, 1, 2])
        g.tensors[in_name] = (x, _NCHW)
        self.hw[in_name] = (size, size)
        layers = list(self.spec.neuralNetwork.layers)
        tail = self._output_tail(layers, out_name)
        for layer in layers[: len(layers) - len(tail)]:
            kind = layer.WhichOneof("layer")
            handler = getattr(self, f"_{kind}", None)
            if handler is None:
                raise CoreMLConversionError(f"layer {layer.name}: type {kind} is not supported")
            if kind not in ("add", "multiply", "divideBroadcastable") and len(layer.input) != 1:
                raise CoreMLConversionError(f"layer {layer.name}: expected one input")
            if len(layer.output) != 1:
                raise CoreMLConversionError(f"layer {layer.name}: expected one output")
            handler(layer, getattr(layer, kind))
        last = layers[len(layers) - len(tail) - 1].output[0] if tail else out_name
        y = g.nchw(last)
        g.node("Transpose", [y], OUTPUT_NAME, perm=[0, 2, 3, 1])
        h = g.h
        graph = h.make_graph(
            g.nodes, "animeganv3_tiny",
            [h.make_tensor_value_info(INPUT_NAME, self.onnx.TensorProto.FLOAT, [1, "h", "w", 3])],
            [h.make_tensor_value_info(OUTPUT_NAME, self.onnx.TensorProto.FLOAT, [1, "h", "w", 3])],
            g.inits,
        )
        model = h.make_model(graph, opset_imports=[h.make_opsetid("", OPSET)],
                             producer_name="face2paint convert-coreml",
                             producer_version=str(CONVERTER_VERSION))
        model.ir_version = IR_VERSION
        return model

    def _output_tail(self, layers, out_name: str) -> list:
        """The layers after the tanh that only turn [1, 3, H, W] in [-1, 1] into CoreML's
        image output: a permute back from NHWC, a squeeze of the batch and * 127.5 + 127.5.
        ONNX keeps the batch and returns tanh, so they are left out (checked, not assumed)."""
        tail = []
        for layer in reversed(layers):
            kind = layer.WhichOneof("layer")
            p = getattr(layer, kind)
            if kind == "activation" and p.WhichOneof("NonlinearityType") == "linear" and not tail:
                if not (abs(p.linear.alpha - 127.5) < 1e-4 and abs(p.linear.beta - 127.5) < 1e-4):
                    raise CoreMLConversionError(
                        f"layer {layer.name}: output scaling is not * 127.5 + 127.5")
                tail.append(layer)
            elif kind == "squeeze" and tail:
                tail.append(layer)
            elif kind == "permute" and tail:
                # The permute is folded into the lazy layout instead of dropped.
                break
            else:
                break
        if not tail or tail[0].output[0] != out_name:
            raise CoreMLConversionError("the network does not end in tanh * 127.5 + 127.5")
        return tail[::-1]

    def _same_hw(self, layer) -> None:
        self.hw[layer.output[0]] = self.hw[layer.input[0]]

    def _padding(self, layer, p) -> None:
        g = self.g
        top, left, bottom, right = _pads_of(p.paddingAmounts.borderAmounts)
        kind = p.WhichOneof("PaddingType")
        mode = {"reflection": "reflect", "replication": "edge", "constant": "constant"}.get(kind)
        if mode is None:
            raise CoreMLConversionError(f"layer {layer.name}: padding {kind} is not supported")
        inputs = [g.nchw(layer.input[0]),
                  g.const("pads", np.array([0, 0, top, left, 0, 0, bottom, right], np.int64))]
        if mode == "constant":
            inputs.append(g.const("pad_value", np.array(p.constant.value, np.float32)))
        out = g.node("Pad", inputs, layer.output[0], mode=mode)
        g.tensors[layer.output[0]] = (out, _NCHW)
        h, w = self.hw[layer.input[0]]
        self.hw[layer.output[0]] = (h + top + bottom, w + left + right)

    def _convolution(self, layer, p) -> None:
        g = self.g
        if p.isDeconvolution:
            raise CoreMLConversionError(f"layer {layer.name}: deconvolution is not supported")
        kh, kw = (list(p.kernelSize) or [3, 3])
        sh, sw = (list(p.stride) or [1, 1])
        dh, dw = (list(p.dilationFactor) or [1, 1])
        groups = p.nGroups or 1
        w = _weights(p.weights, "weights", layer.name).reshape(p.outputChannels, p.kernelChannels, kh, kw)
        inputs = [g.nchw(layer.input[0]), g.const(f"{layer.name}_W", w)]
        if p.hasBias:
            inputs.append(g.const(f"{layer.name}_B", _weights(p.bias, "bias", layer.name)))
        attrs = dict(kernel_shape=[kh, kw], strides=[sh, sw], dilations=[dh, dw], group=groups)
        h, wd = self.hw[layer.input[0]]
        ptype = p.WhichOneof("ConvolutionPaddingType")
        if ptype == "valid":
            top, left, bottom, right = _pads_of(p.valid.paddingAmounts.borderAmounts)
            attrs["pads"] = [top, left, bottom, right]
            oh = (h + top + bottom - dh * (kh - 1) - 1) // sh + 1
            ow = (wd + left + right - dw * (kw - 1) - 1) // sw + 1
        elif ptype == "same":
            heavy = p.same.asymmetryMode  # 0: BOTTOM_RIGHT_HEAVY, 1: TOP_LEFT_HEAVY
            attrs["auto_pad"] = "SAME_UPPER" if heavy == 0 else "SAME_LOWER"
            oh, ow = -(-h // sh), -(-wd // sw)
        else:
            raise CoreMLConversionError(f"layer {layer.name}: padding {ptype} is not supported")
        out = g.node("Conv", inputs, layer.output[0], **attrs)
        g.tensors[layer.output[0]] = (out, _NCHW)
        self.hw[layer.output[0]] = (oh, ow)

    def _batchnorm(self, layer, p) -> None:
        g = self.g
        x = g.nchw(layer.input[0])
        gamma = _weights(p.gamma, "gamma", layer.name)
        beta = _weights(p.beta, "beta", layer.name)
        if p.instanceNormalization:
            if not p.computeMeanVar:
                raise CoreMLConversionError(f"layer {layer.name}: instance norm with stored statistics")
            out = g.node("InstanceNormalization", [x, g.const("scale", gamma), g.const("bias", beta)],
                         layer.output[0], epsilon=float(p.epsilon))
        else:
            if p.computeMeanVar:
                raise CoreMLConversionError(f"layer {layer.name}: batch norm computing its statistics")
            mean = _weights(p.mean, "mean", layer.name)
            var = _weights(p.variance, "variance", layer.name)
            out = g.node("BatchNormalization",
                         [x, g.const("scale", gamma), g.const("bias", beta), g.const("mean", mean),
                          g.const("var", var)], layer.output[0], epsilon=float(p.epsilon))
        g.tensors[layer.output[0]] = (out, _NCHW)
        self._same_hw(layer)

    def _elementwise(self, layer, op: str, extra_inputs=(), **attrs) -> None:
        """An op that does not care about layout: keeps its input's lazy permutation."""
        g = self.g
        name, perm = g.tensors[layer.input[0]]
        out = g.node(op, [name, *extra_inputs], layer.output[0], **attrs)
        g.tensors[layer.output[0]] = (out, perm)
        self._same_hw(layer)

    def _activation(self, layer, p) -> None:
        kind = p.WhichOneof("NonlinearityType")
        if kind == "leakyReLU":
            self._elementwise(layer, "LeakyRelu", alpha=float(p.leakyReLU.alpha))
        elif kind in ("ReLU", "tanh", "sigmoid"):
            self._elementwise(layer, {"ReLU": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid"}[kind])
        elif kind == "linear":
            self._affine(layer, p.linear.alpha, p.linear.beta)
        else:
            raise CoreMLConversionError(f"layer {layer.name}: activation {kind} is not supported")

    def _affine(self, layer, scale: float, shift: float) -> None:
        """y = scale * x + shift, elementwise."""
        g = self.g
        name, perm = g.tensors[layer.input[0]]
        if scale != 1.0:
            name = g.node("Mul", [name, g.const("alpha", np.float32(scale))], g.fresh(f"{layer.output[0]}_mul"))
        if shift != 0.0 or name == g.tensors[layer.input[0]][0]:
            name = g.node("Add", [name, g.const("beta", np.float32(shift))], g.fresh(f"{layer.output[0]}_add"))
        g.tensors[layer.output[0]] = (name, perm)
        self._same_hw(layer)

    def _unary(self, layer, p) -> None:
        g = self.g
        t = p.DESCRIPTOR.enum_types_by_name["Operation"].values_by_number[p.type].name
        name, perm = g.tensors[layer.input[0]]
        if p.scale not in (0.0, 1.0) or p.shift != 0.0:
            name = g.node("Mul", [name, g.const("scale", np.float32(p.scale or 1.0))], g.fresh("unary_scale"))
            name = g.node("Add", [name, g.const("shift", np.float32(p.shift))], g.fresh("unary_shift"))
        out = layer.output[0]
        if t == "SQRT":
            g.node("Sqrt", [name], out)
        elif t == "POWER" and p.alpha == 2.0:
            g.node("Mul", [name, name], out)
        elif t == "POWER":
            g.node("Pow", [name, g.const("exponent", np.float32(p.alpha))], out)
        elif t in ("RSQRT", "INVERSE"):
            eps = g.node("Add", [name, g.const("epsilon", np.float32(p.epsilon))], g.fresh("unary_eps"))
            if t == "RSQRT":
                eps = g.node("Sqrt", [eps], g.fresh("unary_sqrt"))
            g.node("Reciprocal", [eps], out)
        else:
            raise CoreMLConversionError(f"layer {layer.name}: unary {t} is not supported")
        g.tensors[out] = (out, perm)
        self._same_hw(layer)

    def _binary(self, layer, op: str, constant: float | None) -> None:
        g = self.g
        if len(layer.input) == 1:
            if constant is None:
                raise CoreMLConversionError(f"layer {layer.name}: {op} needs two inputs")
            self._elementwise(layer, op, [g.const("alpha", np.float32(constant))])
            return
        if len(layer.input) != 2:
            raise CoreMLConversionError(f"layer {layer.name}: {op} of {len(layer.input)} inputs")
        a, b = (g.nchw(i) for i in layer.input)
        out = g.node(op, [a, b], layer.output[0])
        g.tensors[layer.output[0]] = (out, _NCHW)
        ha, hb = self.hw[layer.input[0]], self.hw[layer.input[1]]
        self.hw[layer.output[0]] = max(ha, hb)  # broadcasting a (1, 1) statistic

    def _add(self, layer, p) -> None:
        self._binary(layer, "Add", p.alpha)

    def _multiply(self, layer, p) -> None:
        self._binary(layer, "Mul", p.alpha if len(layer.input) == 1 else None)

    def _divideBroadcastable(self, layer, p) -> None:
        self._binary(layer, "Div", None)

    def _pooling(self, layer, p) -> None:
        g = self.g
        if not p.globalPooling:
            raise CoreMLConversionError(f"layer {layer.name}: only global pooling is supported")
        kind = p.DESCRIPTOR.enum_types_by_name["PoolingType"].values_by_number[p.type].name
        op = {"AVERAGE": "GlobalAveragePool", "MAX": "GlobalMaxPool"}.get(kind)
        if op is None:
            raise CoreMLConversionError(f"layer {layer.name}: pooling {kind} is not supported")
        out = g.node(op, [g.nchw(layer.input[0])], layer.output[0])
        g.tensors[layer.output[0]] = (out, _NCHW)
        self.hw[layer.output[0]] = (1, 1)

    def _resizeBilinear(self, layer, p) -> None:
        g = self.g
        method = p.mode.DESCRIPTOR.enum_types_by_name["Method"].values_by_number[p.mode.samplingMethod].name
        # UPSAMPLE_MODE is TF1 resize_bilinear(align_corners=False): src = dst * in / out.
        ctm = {"UPSAMPLE_MODE": "asymmetric", "STRICT_ALIGN_ENDPOINTS_MODE": "align_corners",
               "ALIGN_ENDPOINTS_MODE": "align_corners"}.get(method)
        if ctm is None:
            raise CoreMLConversionError(f"layer {layer.name}: resize mode {method} is not supported")
        h, w = self.hw[layer.input[0]]
        th, tw = (list(p.targetSize) or [1, 1])
        if th % h or tw % w:
            raise CoreMLConversionError(
                f"layer {layer.name}: resize {h}x{w} -> {th}x{tw} is not an integer scale")
        scales = np.array([1.0, 1.0, th / h, tw / w], np.float32)
        out = g.node("Resize", [g.nchw(layer.input[0]), "", g.const("scales", scales)],
                     layer.output[0], mode="linear", coordinate_transformation_mode=ctm)
        g.tensors[layer.output[0]] = (out, _NCHW)
        self.hw[layer.output[0]] = (th, tw)

    def _transpose(self, layer, p) -> None:
        self._permute_lazily(layer, p.axes)

    def _permute(self, layer, p) -> None:
        self._permute_lazily(layer, p.axis)

    def _permute_lazily(self, layer, axes) -> None:
        g = self.g
        axes = tuple(int(a) for a in axes)
        if sorted(axes) != [0, 1, 2, 3]:
            raise CoreMLConversionError(f"layer {layer.name}: transpose {axes} of rank != 4")
        name, perm = g.tensors[layer.input[0]]
        g.tensors[layer.output[0]] = (name, tuple(perm[a] for a in axes))
        self.hw[layer.output[0]] = self.hw[layer.input[0]]


def convert_spec(spec):
    """The ONNX ModelProto of a parsed CoreML spec."""
    return _Converter(spec).run()


def convert(src: str | Path, out: str | Path, check_size: int = 64) -> Conversion:
    """Convert `src` (.mlmodel) to `out` (.onnx), run the result once on a small input to prove
    it loads, and return the sha256 of both files. `out` is written atomically."""
    import onnx

    src, out = Path(src), Path(out)
    data = src.read_bytes()
    spec = load_spec(src)
    model = convert_spec(spec)
    onnx.checker.check_model(model)
    blob = model.SerializeToString()
    _smoke_test(blob, check_size)
    out.parent.mkdir(parents=True, exist_ok=True)
    # A unique temporary name: two workers converting the same model at once both succeed.
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.")
    with os.fdopen(fd, "wb") as f:
        f.write(blob)
    os.replace(tmp, out)
    return Conversion(
        source_sha256=hashlib.sha256(data).hexdigest(),
        sha256=hashlib.sha256(blob).hexdigest(),
        layers=len(spec.neuralNetwork.layers),
        parameters=int(sum(np.prod(t.dims) for t in model.graph.initializer)),
    )


def _smoke_test(blob: bytes, size: int) -> None:
    try:
        import onnxruntime as ort
    except ImportError:  # the converter itself needs no runtime; the smoke test is a bonus
        return
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(blob, opts, providers=["CPUExecutionProvider"])
    y = sess.run(None, {INPUT_NAME: np.zeros((1, size, size, 3), np.float32)})[0]
    if y.shape != (1, size, size, 3) or not np.isfinite(y).all():
        raise CoreMLConversionError(f"converted graph returned {y.shape} for a {size}x{size} input")
