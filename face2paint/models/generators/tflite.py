"""Image-to-image generators exported to TFLite or ONNX (no torch needed), over the runtime
sessions of `models.sessions`; colour order, fixed size and pad multiple come from the model's
registry entry (see `loaders`).

Both take an RGB uint8 (H, W, 3) array and return one of the same size. The network sees
x / 127.5 - 1 in the colour order it was trained on and returns tanh output, mapped back with
(y + 1) * 127.5.

Resizable models run at the image's own size (padded to a multiple of ``pad_multiple``);
fixed-size ones get the image reflect-padded to a square, resized to the model size and back,
so strokes keep the image's aspect ratio.

TFLite graphs converted from TF1 often bake the output size of their upsampling ops into
constant tensors (AnimeGANv2 Hayao: RESIZE_BILINEAR to a constant [128, 128] and [256, 256]).
``resize_tensor_input`` alone then runs but silently returns the original 256² size. Those
constants are patched in a copy of the model bytes per input size, scaled with the input, which
makes such graphs genuinely resizable.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from math import gcd

import numpy as np

from ..sessions import LiteRTSession, OrtSession, Session

__all__ = ["TFLiteGenerator", "OnnxGenerator", "TFLiteGraph"]


# --------------------------------------------------------------------------------------------
# Minimal flatbuffer view of a .tflite file (shared with convert_hayao.py).


class TFLiteGraph:
    """Read-only view of subgraph 0 of a .tflite model: ops, tensors, constant data."""

    def __init__(self, model_bytes: bytes):
        from ai_edge_litert import schema_py_generated as schema

        self._schema = schema
        self.data = model_bytes
        self.model = schema.Model.GetRootAs(model_bytes, 0)
        self.subgraph = self.model.Subgraphs(0)
        names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
        self._tensor_types = {v: k for k, v in vars(schema.TensorType).items()
                              if not k.startswith("_")}
        self.ops = []  # (op_name, inputs, outputs), in execution order
        for i in range(self.subgraph.OperatorsLength()):
            op = self.subgraph.Operators(i)
            code = self.model.OperatorCodes(op.OpcodeIndex())
            # Newer files keep ops >127 in BuiltinCode, older ones only the deprecated byte.
            builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
            self.ops.append((names.get(builtin, str(builtin)),
                             [int(t) for t in op.InputsAsNumpy()],
                             [int(t) for t in op.OutputsAsNumpy()]))
        self.producer = {o: k for k, (_, _, outs) in enumerate(self.ops) for o in outs}
        self.inputs = [int(t) for t in self.subgraph.InputsAsNumpy()]
        self.outputs = [int(t) for t in self.subgraph.OutputsAsNumpy()]

    def tensor(self, idx: int):
        return self.subgraph.Tensors(idx)

    def name(self, idx: int) -> str:
        return self.tensor(idx).Name().decode()

    def shape(self, idx: int) -> tuple[int, ...]:
        return tuple(int(s) for s in self.tensor(idx).ShapeAsNumpy())

    def dtype_name(self, idx: int) -> str:
        return self._tensor_types[self.tensor(idx).Type()]

    def _buffer_span(self, idx: int) -> tuple[int, int] | None:
        """(byte offset, length) of a tensor's constant data inside the file, or None."""
        buf = self.model.Buffers(self.tensor(idx).Buffer())
        if buf is None:
            return None
        if buf.Offset() > 1:  # large models keep data outside the flatbuffer, at an offset
            return int(buf.Offset()), int(buf.Size())
        o = buf._tab.Offset(4)
        if o == 0:
            return None
        return buf._tab.Vector(o), buf._tab.VectorLen(o)

    def is_const(self, idx: int) -> bool:
        span = self._buffer_span(idx)
        return span is not None and span[1] > 0

    def raw(self, idx: int) -> np.ndarray:
        """Constant tensor as stored (int8 / int32 / float16 / float32), in its TFLite shape."""
        span = self._buffer_span(idx)
        if span is None or span[1] == 0:
            raise ValueError(f"tensor {idx} ({self.name(idx)}) has no constant data")
        np_types = {"FLOAT32": np.float32, "FLOAT16": np.float16, "INT32": np.int32,
                    "INT8": np.int8, "UINT8": np.uint8, "INT64": np.int64, "INT16": np.int16}
        dt = np_types[self.dtype_name(idx)]
        start, length = span
        arr = np.frombuffer(self.data, dtype=dt, count=length // np.dtype(dt).itemsize,
                            offset=start)
        return arr.reshape(self.shape(idx))

    def quantization(self, idx: int):
        """(scales, zero_points, quantized_dimension) or None for float tensors."""
        q = self.tensor(idx).Quantization()
        if q is None or q.ScaleLength() == 0:
            return None
        return (q.ScaleAsNumpy().astype(np.float64), q.ZeroPointAsNumpy().astype(np.int64),
                int(q.QuantizedDimension()))

    def const_value(self, idx: int) -> np.ndarray:
        """Constant tensor dequantized to float32: (q - zero_point) * scale, per channel.

        Follows a DEQUANTIZE op back to its constant input (fp16 / dynamic-range graphs).
        """
        if not self.is_const(idx) and idx in self.producer:
            name, ins, _ = self.ops[self.producer[idx]]
            if name == "DEQUANTIZE":
                return self.const_value(ins[0])
        raw = self.raw(idx)
        qp = self.quantization(idx)
        if qp is None or raw.dtype in (np.float32, np.float16):
            return raw.astype(np.float32)
        scales, zps, axis = qp
        q = raw.astype(np.float64)
        if scales.size > 1:  # per-channel along the quantized dimension
            bshape = [1] * raw.ndim
            bshape[axis] = scales.size
            return ((q - zps.reshape(bshape)) * scales.reshape(bshape)).astype(np.float32)
        return ((q - zps[0]) * scales[0]).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Shared pre/post-processing


MIN_SIDE = 64  # smallest side a resizable generator is run at (see _ImageGenerator.__call__)


def _pad_reflect(img: np.ndarray, ph: int, pw: int) -> np.ndarray:
    if not (ph or pw):
        return img
    # numpy mirrors repeatedly when a pad exceeds the side; only 1-pixel sides need "edge".
    mode = "reflect" if min(img.shape[:2]) > 1 else "edge"
    return np.pad(img, ((0, ph), (0, pw), (0, 0)), mode=mode)


def _resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    import cv2

    if img.shape[:2] == (h, w):
        return img
    shrink = h * w < img.shape[0] * img.shape[1]
    out = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
    return out


class _ImageGenerator:
    """Common logic; subclasses provide _run(x: float32 NHWC) -> float32 NHWC, and _probe."""

    def __init__(self, model_id: str, color: str, size: int | None, pad_multiple: int):
        color = color.upper()
        if color not in ("RGB", "BGR"):
            raise ValueError(f"color must be 'RGB' or 'BGR', got {color!r}")
        self.model_id = model_id
        self.color = color
        self.pad_multiple = max(1, int(pad_multiple))
        self._lock = threading.Lock()  # interpreters/sessions are not re-entrant
        if size is not None:
            self.resizable = False
            self.fixed_hw: tuple[int, int] | None = (int(size), int(size))
        else:
            self.resizable = self._probe()
            self.fixed_hw = None if self.resizable else self._native_hw()

    # subclass hooks
    def _native_hw(self) -> tuple[int, int]:
        raise NotImplementedError

    def _probe(self) -> bool:
        raise NotImplementedError

    def _run(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    # Graphs whose batch dimension is free take a stack of same-size inputs in one run
    # (`batch`); the others run them one by one.
    batchable = False

    def _input(self, img: np.ndarray) -> np.ndarray:
        if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) RGB array, got "
                             f"{getattr(img, 'shape', type(img))}")
        if img.dtype != np.uint8:
            raise ValueError(f"expected uint8, got {img.dtype}")
        h, w = img.shape[:2]
        if self.color == "BGR":
            img = img[:, :, ::-1]
        if self.fixed_hw is None:
            # Up to a multiple of pad_multiple, and at least MIN_SIDE: the generators downsample
            # 4-16x, and a side that shrinks to 1 px fails their reflect pads (OpenVINO refuses
            # it outright); the padding is cropped off again.
            m = self.pad_multiple
            th = max(h + (-h) % m, MIN_SIDE + (-MIN_SIDE) % m)
            tw = max(w + (-w) % m, MIN_SIDE + (-MIN_SIDE) % m)
            x = _pad_reflect(img, th - h, tw - w)
        else:
            side = max(h, w)
            x = _resize(_pad_reflect(img, side - h, side - w), *self.fixed_hw)
        return x.astype(np.float32) / 127.5 - 1.0

    def batch(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Stylize many images: same-size ones in one run where the graph's batch dimension
        is free, else one by one; the same outputs as calling the generator on each."""
        if not self.batchable or len(images) < 2:
            return [self(im) for im in images]
        out: list[np.ndarray | None] = [None] * len(images)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, im in enumerate(images):
            groups.setdefault(tuple(im.shape), []).append(i)
        for idx in groups.values():
            x = np.stack([self._input(images[i]) for i in idx])
            with self._lock:
                y = self._run(np.ascontiguousarray(x))
            for k, i in enumerate(idx):
                out[i] = self._output(y[k], x.shape[1:], *images[i].shape[:2])
        return out  # type: ignore[return-value]

    def __call__(self, rgb_uint8: np.ndarray) -> np.ndarray:
        x = self._input(rgb_uint8)[None]
        with self._lock:
            y = self._run(np.ascontiguousarray(x))[0]
        return self._output(y, x.shape[1:], *rgb_uint8.shape[:2])

    def _output(self, y: np.ndarray, in_shape, h: int, w: int) -> np.ndarray:
        if y.shape[:2] != tuple(in_shape[:2]) or y.ndim != 3 or y.shape[2] != 3:
            # e.g. a graph with a baked output size that was not patched: never crop silently
            raise RuntimeError(f"{self.model_id}: model returned {y.shape} for input "
                               f"{tuple(in_shape)}")
        y = np.clip((y + 1.0) * 127.5, 0, 255).round().astype(np.uint8)
        if self.fixed_hw is not None:
            side = max(h, w)
            y = _resize(y, side, side)
        y = y[:h, :w]
        if self.color == "BGR":
            y = y[:, :, ::-1]
        return np.ascontiguousarray(y)


# --------------------------------------------------------------------------------------------


class TFLiteGenerator(_ImageGenerator):
    """TFLite image-to-image generator (NHWC, float or int8 I/O), one interpreter per size."""

    _RESIZE_OPS = ("RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR")

    def __init__(self, session: LiteRTSession, model_id: str, color: str = "RGB",
                 size: int | None = None, pad_multiple: int = 8, max_cached: int = 4):
        self.session = session
        self.max_cached = max(1, int(max_cached))
        self._bytes = session.model_bytes
        graph = TFLiteGraph(self._bytes)
        self._in_idx, self._out_idx = graph.inputs[0], graph.outputs[0]
        in_shape = graph.shape(self._in_idx)
        if len(in_shape) != 4 or in_shape[3] != 3:
            raise ValueError(f"{model_id}: expected an NHWC RGB input, got {in_shape}")
        self._base_hw = (in_shape[1], in_shape[2])
        # Constant output sizes of upsampling ops: (byte offset, (h, w)) -> rescaled per size.
        self._size_consts: list[tuple[int, tuple[int, int]]] = []
        for name, ins, _ in graph.ops:
            if name in self._RESIZE_OPS and len(ins) > 1 and graph.is_const(ins[1]):
                start, _ = graph._buffer_span(ins[1])
                hw = tuple(int(v) for v in graph.raw(ins[1]))
                self._size_consts.append((start, hw))
        # Smallest side step at which every constant scales to an integer.
        step = 1
        for _, (ch, cw) in self._size_consts:
            for c, b in ((ch, self._base_hw[0]), (cw, self._base_hw[1])):
                need = b // gcd(b, c)
                step = step * need // gcd(step, need)
        pad_multiple = pad_multiple * step // gcd(pad_multiple, step)
        self._cache: OrderedDict[tuple[int, int], object] = OrderedDict()
        super().__init__(model_id, color, size, pad_multiple)

    def _native_hw(self) -> tuple[int, int]:
        return self._base_hw

    def _model_for(self, h: int, w: int) -> bytes:
        if (h, w) == self._base_hw or not self._size_consts:
            return self._bytes
        data = bytearray(self._bytes)
        bh, bw = self._base_hw
        for start, (ch, cw) in self._size_consts:
            data[start:start + 8] = np.array([ch * h // bh, cw * w // bw], "<i4").tobytes()
        return bytes(data)

    def _interpreter(self, h: int, w: int):
        """Interpreters per input size, LRU: allocate_tensors is the slow part, not invoke."""
        it = self._cache.get((h, w))
        if it is not None:
            self._cache.move_to_end((h, w))
            return it
        resized = (h, w) != self._base_hw
        it = self.session.interpreter(self._model_for(h, w), [1, h, w, 3] if resized else None,
                                      self._in_idx)
        self._cache[(h, w)] = it
        while len(self._cache) > self.max_cached:
            self._cache.popitem(last=False)
        return it

    def _probe(self) -> bool:
        # A small non-square size: catches graphs with baked reshapes (white-box's guided
        # filter) that fail or return the wrong shape when the input is resized.
        m = self.pad_multiple
        h = max(m, (self._base_hw[0] // 2) // m * m)
        w = h + m
        try:
            with self._lock:
                y = self._run(np.zeros((1, h, w, 3), np.float32))
        except (RuntimeError, ValueError):
            self._cache.pop((h, w), None)
            return False
        return y.shape[1:3] == (h, w)

    def _run(self, x: np.ndarray) -> np.ndarray:
        h, w = x.shape[1:3]
        it = self._interpreter(h, w)
        inp = it.get_input_details()[0]
        out = it.get_output_details()[0]
        if inp["dtype"] != np.float32:  # integer-only I/O: quantize with the input's params
            scale, zp = inp["quantization"]
            info = np.iinfo(inp["dtype"])
            x = np.clip(np.round(x / scale + zp), info.min, info.max).astype(inp["dtype"])
        it.set_tensor(inp["index"], x)
        it.invoke()
        y = it.get_tensor(out["index"])
        if y.dtype != np.float32:
            scale, zp = out["quantization"]
            y = (y.astype(np.float32) - zp) * scale
        return y


class OnnxGenerator(_ImageGenerator):
    """ONNX Runtime image-to-image generator; NCHW or NHWC taken from the input's shape, the
    input's float type (float32 or float16) from the graph."""

    def __init__(self, session: OrtSession | Session, model_id: str, color: str = "RGB",
                 size: int | None = None, pad_multiple: int = 8):
        self._session = self.session = session
        inp = session.get_inputs()[0]
        shape = list(inp.shape)
        if len(shape) != 4 or 3 not in (shape[1], shape[3]):
            raise ValueError(f"{model_id}: expected a 4-D image input, got {shape}")
        self._nchw = shape[1] == 3
        hw = shape[2:4] if self._nchw else shape[1:3]
        self._dynamic = not all(isinstance(d, int) and d > 0 for d in hw)
        self._hw = (512, 512) if self._dynamic else (int(hw[0]), int(hw[1]))
        self._in_name = inp.name
        self._in_dtype = session.input_dtype()
        self.batchable = not (isinstance(shape[0], int) and shape[0] > 0)
        super().__init__(model_id, color, size, pad_multiple)

    def _native_hw(self) -> tuple[int, int]:
        return self._hw

    def _probe(self) -> bool:
        return self._dynamic

    def _run(self, x: np.ndarray) -> np.ndarray:
        if self._nchw:
            x = x.transpose(0, 3, 1, 2)
        x = np.ascontiguousarray(x, dtype=self._in_dtype)
        y = self._session.run(None, {self._in_name: x})[0].astype(np.float32)
        return y.transpose(0, 2, 3, 1) if self._nchw else y
