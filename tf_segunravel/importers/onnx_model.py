"""ONNX files as Keras 3 functional models of standard layers, checked against onnxruntime.

    from tf_segunravel.importers.onnx_model import import_onnx

    model = import_onnx("unet.onnx")            # NHWC in, NHWC scores out
    model = import_onnx("unet.onnx", input_size=(256, 320))   # a dynamic height and width

NCHW becomes NHWC by permuting weights and axes, never by inserting transposes: every 4-D
tensor of the ONNX graph is an [N, H, W, C] Keras tensor. Where no Keras layer has an op's
exact arithmetic, a layer of `tf_segunravel.models.framework_layers` does (padded pooling,
resizing under ONNX's coordinate modes). Shape arithmetic (Shape, Gather, Slice, Concat, ...
feeding a Resize or a Reshape) is folded for the input's size, so the model is built for one
height and width: the ONNX input's own, or `input_size` where they are dynamic.

Why written here: onnx2keras is silently wrong on padded pooling and fails on bilinear
resizing, onnx2tf pins another TensorFlow and emits Keras 2 lambdas, and nobuco is Keras 2
only (docs/importers.md). The `onnx` package parses the file and onnxruntime, the reference,
runs it: every import is compared with onnxruntime on a probe input, every tensor of the graph
and not only the outputs, and refused when the largest difference exceeds `tolerance` times
the tensor's range (`compare`).

Each refusal is an `OnnxImportError` (an InputError) whose one line names the file and what
is wrong: an unknown op and its node, an attribute value without an exact layer, a dynamic
size without `input_size`, external data outside the model's folder, a corrupt file.
"""

import dataclasses
import math
import os
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import keras
import numpy as np

from tf_segunravel.errors import InputError
from tf_segunravel.importers.arithmetic import constant_rescaling
from tf_segunravel.importers.checking import TOLERANCE, one_line, probe, relative_difference
from tf_segunravel.models.framework_layers import (
    ConstantPadding2D,
    ExplicitPooling2D,
    PositionAttention,
    Resize2D,
    pooled_size,
)

if TYPE_CHECKING:
    import onnx

L = keras.layers


class OnnxImportError(InputError):
    """An ONNX file the importer refuses; the message names the file and the reason."""


@dataclasses.dataclass
class Value:
    """A tensor of the ONNX graph as a Keras tensor. `is_map`: a 4-D ONNX tensor
    [N, C, H, W] held as [N, H, W, C]; otherwise the layouts agree."""

    tensor: Any
    is_map: bool
    # Two views of maps that no Keras tensor holds in their ONNX shape, each taken apart by
    # the op PyTorch's exporters put after it, and refused by every other op (`_Context.value`):
    # `groups` > 0: `tensor` is a map seen as [N, groups, C/groups * H * W], the reshape
    # around an InstanceNormalization that is GroupNorm; `stacked`: maps stacked on a new ONNX
    # axis `stack_axis` (Unsqueeze and Concat), which a ReduceSum/Mean/Max over that axis
    # merges (`sum(features)` in a decoder).
    groups: int = 0
    stacked: list | None = None
    stack_axis: int = 0
    # Attention over a map's positions (MAnet's PAB), built up op by op: `tokens`, a map
    # seen as [N, HW, C] (a groups = C view transposed); `attention`, the stages after it:
    # {"stage": "scores" | "softmax" | "attended", "q", "k", "v": map tensors, "flat": the
    # scores reshaped to [N, HW * HW], "joint": the softmax over every pair, "transposed":
    # the attended values as [N, C, HW]}. The last reshape to a map makes one
    # PositionAttention layer of them.
    tokens: bool = False
    attention: dict | None = None

    @property
    def is_view(self) -> bool:
        return (
            self.groups > 0 or self.stacked is not None or self.tokens or self.attention is not None
        )

    @property
    def onnx_shape(self) -> list[int]:
        """Its static ONNX shape, the batch as 1 (what shape arithmetic folds with)."""
        shape = [1 if d is None else int(d) for d in self.tensor.shape]
        if self.is_map or self.is_view:
            n, h, w, c = shape
            shape = [n, c, h, w]
        if self.groups:
            return [n, self.groups, c // self.groups * h * w]
        if self.stacked is not None:
            shape.insert(self.stack_axis, len(self.stacked))
        if self.tokens:
            return [n, h * w, c]
        if self.attention is not None:
            if self.attention["stage"] == "attended":
                return [n, c, h * w] if self.attention["transposed"] else [n, h * w, c]
            return [n, h * w * h * w] if self.attention["flat"] else [n, h * w, h * w]
        return shape


class _Context:
    """The state of one import: constants, values and the layer names in use."""

    def __init__(self, path: str):
        self.path = path
        self.constants: dict[str, np.ndarray] = {}
        self.values: dict[str, Value] = {}
        self._names: set[str] = set()

    def refuse(self, node, reason: str) -> OnnxImportError:
        if node is None:
            return OnnxImportError(f"{self.path}: {reason}")
        label = f"{node.op_type} node {node.name or (list(node.output) or ['?'])[0]!r}"
        return OnnxImportError(f"{self.path}: {label}: {reason}")

    def name(self, wanted: str) -> str:
        """A unique Keras layer name from an ONNX tensor name."""
        base = re.sub(r"[^A-Za-z0-9_.-]", "_", wanted).strip("._-") or "layer"
        name, n = base, 1
        while name in self._names:
            n += 1
            name = f"{base}_{n}"
        self._names.add(name)
        return name

    def constant(self, node, index: int, required: bool = True) -> np.ndarray | None:
        """Input `index` of `node` as a constant (None when absent and not required)."""
        if index >= len(node.input) or not node.input[index]:
            if required:
                raise self.refuse(node, f"input {index} is missing")
            return None
        name = node.input[index]
        if name not in self.constants:
            raise self.refuse(node, f"input {name!r} must be a constant (a weight or a size)")
        return self.constants[name]

    def value(self, node, index: int = 0, view: bool = False) -> Value:
        """Input `index` of `node` as a tensor; a view (`Value.groups`, `Value.stacked`) only
        where the converter takes it apart (`view`)."""
        name = node.input[index]
        if name not in self.values:
            raise self.refuse(node, f"input {name!r} is a constant where a tensor is needed")
        found = self.values[name]
        if found.is_view and not view:
            raise self.refuse(
                node,
                f"input {name!r} is an image tensor reshaped to {found.onnx_shape}, which only "
                f"GroupNorm's and a stacked sum's ops are imported for",
            )
        return found

    def map_value(self, node, index: int = 0) -> Value:
        found = self.value(node, index)
        if not found.is_map:
            raise self.refuse(node, f"input {node.input[index]!r} is not a 4-D image tensor")
        return found


def _attributes(node) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _text(value):
    return value.decode() if isinstance(value, bytes) else value


# --- Shape arithmetic, folded with numpy ---------------------------------------------------


def _fold(ctx: _Context, node, attrs: dict) -> list[np.ndarray] | None:
    """The outputs of `node` when it computes on constants (and on static shapes), else
    None."""
    from onnx import numpy_helper
    from onnx.helper import tensor_dtype_to_np_dtype

    op = node.op_type
    if op == "Constant":
        if "value" in attrs:
            return [numpy_helper.to_array(attrs["value"])]
        for key, dtype in (("value_float", np.float32), ("value_int", np.int64)):
            if key in attrs:
                return [np.array(attrs[key], dtype)]
        for key, dtype in (("value_floats", np.float32), ("value_ints", np.int64)):
            if key in attrs:
                return [np.array(list(attrs[key]), dtype)]
        raise ctx.refuse(node, f"unsupported constant attributes {sorted(attrs)}")
    if op == "Shape" and node.input[0] in ctx.values:
        shape = np.array(ctx.values[node.input[0]].onnx_shape, np.int64)
        return [shape[attrs.get("start", 0) : attrs.get("end", len(shape))]]
    names = [n for n in node.input if n]
    if not names or any(n not in ctx.constants for n in names):
        return None
    x: list[Any] = [ctx.constants[n] if n else None for n in node.input]
    if op == "Identity":
        return [x[0]]
    if op == "Cast":
        return [x[0].astype(tensor_dtype_to_np_dtype(attrs["to"]))]
    if op == "Gather":
        return [np.take(x[0], x[1], axis=attrs.get("axis", 0))]
    if op == "Unsqueeze":
        axes: list[int] = list(attrs["axes"]) if "axes" in attrs else x[1].tolist()
        out = x[0]
        rank = out.ndim + len(axes)
        for axis in sorted(a % rank for a in axes):
            out = np.expand_dims(out, axis)
        return [out]
    if op == "Squeeze":
        dropped = attrs.get("axes") if "axes" in attrs else (x[1].tolist() if len(x) > 1 else None)
        return [np.squeeze(x[0], axis=None if dropped is None else tuple(dropped))]
    if op == "Concat":
        return [np.concatenate(x, axis=attrs["axis"])]
    if op == "Slice":
        starts, ends = x[1], x[2]
        sliced = x[3] if len(x) > 3 and x[3] is not None else np.arange(len(starts))
        steps = x[4] if len(x) > 4 and x[4] is not None else np.ones(len(starts), np.int64)
        index = [slice(None)] * x[0].ndim
        for start, end, axis, step in zip(starts, ends, sliced, steps, strict=True):
            index[int(axis)] = slice(int(start), int(end), int(step))
        return [x[0][tuple(index)]]
    if op == "Reshape":
        return [x[0].reshape(_reshape_target(x[0].shape, x[1]))]
    if op == "ConstantOfShape":
        fill = numpy_helper.to_array(attrs["value"]) if "value" in attrs else np.zeros(1, "f4")
        return [np.full(x[0].astype(np.int64), fill.reshape(-1)[0], fill.dtype)]
    binary = {
        "Add": np.add,
        "Sub": np.subtract,
        "Mul": np.multiply,
        "Equal": np.equal,
        "Max": np.maximum,
        "Min": np.minimum,
    }
    if op in binary:
        return [binary[op](x[0], x[1]).astype(np.result_type(x[0], x[1]))]
    if op == "Div":
        if np.issubdtype(x[0].dtype, np.integer):  # ONNX integer division truncates
            return [np.trunc(x[0] / x[1]).astype(x[0].dtype)]
        return [(x[0] / x[1]).astype(x[0].dtype)]
    if op in ("Floor", "Ceil", "Sqrt", "Neg", "Abs"):
        function = {"Floor": np.floor, "Ceil": np.ceil, "Sqrt": np.sqrt}
        function.update({"Neg": np.negative, "Abs": np.abs})
        return [function[op](x[0]).astype(x[0].dtype)]
    if op == "Where":
        return [np.where(x[0], x[1], x[2])]
    if op == "Range":
        return [np.arange(x[0], x[1], x[2]).astype(x[0].dtype)]
    if op == "Expand":
        return [x[0] * np.ones(x[1].astype(np.int64), x[0].dtype)]
    return None


def _reshape_target(shape: Sequence[int], target: np.ndarray) -> list[int]:
    """ONNX Reshape's target: 0 copies the input's dimension, -1 is inferred."""
    return [int(shape[i]) if t == 0 else int(t) for i, t in enumerate(target.tolist())]


# --- Layers --------------------------------------------------------------------------------


def _pads(ctx, node, attrs, spatial: Sequence[int] | None = None):
    """((top, bottom), (left, right)) from ONNX pads [top, left, bottom, right] or auto_pad."""
    auto = _text(attrs.get("auto_pad", "NOTSET"))
    if auto in ("NOTSET", "VALID"):
        pads = list(attrs.get("pads", [0, 0, 0, 0])) if auto == "NOTSET" else [0, 0, 0, 0]
        if len(pads) != 4:
            raise ctx.refuse(node, f"pads {pads}: only 2-D spatial ops are imported")
        return (pads[0], pads[2]), (pads[1], pads[3])
    if spatial is None:
        raise ctx.refuse(node, f"auto_pad={auto} is not supported here")
    kernel = attrs["kernel_shape"]
    strides = attrs.get("strides", [1, 1])
    dilations = attrs.get("dilations", [1, 1])
    out = []
    for size, k, s, d in zip(spatial, kernel, strides, dilations, strict=True):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small, large = total // 2, total - total // 2
        out.append((small, large) if auto == "SAME_UPPER" else (large, small))
    return tuple(out)


def _padded(ctx, node, x: Value, padding, value: float = 0.0):
    (top, bottom), (left, right) = padding
    if not any((top, bottom, left, right)):
        return x.tensor
    if min(top, bottom, left, right) < 0:
        raise ctx.refuse(node, f"negative padding {padding}")
    name = ctx.name(f"{node.output[0]}_pad")
    if value == 0.0:
        return L.ZeroPadding2D(padding, name=name)(x.tensor)
    return ConstantPadding2D(padding, value, name=name)(x.tensor)


def _conv(ctx, node, attrs):
    x = ctx.map_value(node)
    weight = ctx.constant(node, 1)
    bias = ctx.constant(node, 2, required=False)
    out_channels, per_group, kh, kw = weight.shape
    groups = attrs.get("group", 1)
    strides = tuple(attrs.get("strides", [1, 1]))
    dilation = tuple(attrs.get("dilations", [1, 1]))
    in_channels = x.onnx_shape[1]
    padding = _pads(ctx, node, {**attrs, "kernel_shape": (kh, kw)}, x.onnx_shape[2:])
    # Padding that is Keras' own 'same' for this size stays inside the convolution, so the
    # unravel treats the border as a Keras-built network's (no zero taps to choose); other
    # padding (PyTorch's stride-2 pads both sides) is an explicit ZeroPadding2D.
    same = padding == _same_padding(x.onnx_shape[2:], (kh, kw), strides, dilation)
    tensor = x.tensor if same else _padded(ctx, node, x, padding)
    common = dict(
        strides=strides,
        dilation_rate=dilation,
        padding="same" if same and any(any(p) for p in padding) else "valid",
        use_bias=bias is not None,
        name=ctx.name(node.output[0]),
    )
    if groups == in_channels and per_group == 1 and groups > 1:
        multiplier = out_channels // in_channels
        layer = L.DepthwiseConv2D((kh, kw), depth_multiplier=multiplier, **common)
        kernel = weight.reshape(in_channels, multiplier, kh, kw).transpose(2, 3, 0, 1)
    else:
        layer = L.Conv2D(out_channels, (kh, kw), groups=groups, **common)
        kernel = weight.transpose(2, 3, 1, 0)
    output = layer(tensor)
    layer.set_weights([kernel] + ([bias] if bias is not None else []))
    return [Value(output, True)]


def _same_padding(sizes, kernel, strides, dilation) -> tuple:
    """((top, bottom), (left, right)) of TensorFlow's 'same' for these sizes: the total that
    keeps ceil(size / stride) outputs, the smaller half first."""
    out = []
    for size, k, s, d in zip(sizes, kernel, strides, dilation, strict=True):
        total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
        out.append((total // 2, total - total // 2))
    return tuple(out)


def _conv_transpose(ctx, node, attrs):
    x = ctx.map_value(node)
    weight = ctx.constant(node, 1)
    bias = ctx.constant(node, 2, required=False)
    if attrs.get("group", 1) != 1:
        raise ctx.refuse(node, "grouped transposed convolutions are not imported")
    _, out_channels, kh, kw = weight.shape
    strides = tuple(attrs.get("strides", [1, 1]))
    dilation = tuple(attrs.get("dilations", [1, 1]))
    if max(dilation) > 1 and max(strides) > 1:
        raise ctx.refuse(node, "a transposed convolution both strided and dilated")
    if _text(attrs.get("auto_pad", "NOTSET")) != "NOTSET":
        raise ctx.refuse(node, "auto_pad on a transposed convolution is not imported")
    if any(k < s for k, s in zip((kh, kw), strides, strict=True)):
        raise ctx.refuse(node, "a transposed convolution with a kernel smaller than its stride")
    layer = L.Conv2DTranspose(
        out_channels,
        (kh, kw),
        strides=strides,
        dilation_rate=dilation,
        padding="valid",
        use_bias=bias is not None,
        name=ctx.name(f"{node.output[0]}_full"),
    )
    full = layer(x.tensor)
    layer.set_weights([weight.transpose(2, 3, 1, 0)] + ([bias] if bias is not None else []))
    # Keras' valid output is (in - 1) stride + (k - 1) dilation + 1; ONNX crops its pads from
    # that and adds output_padding at the end.
    (top, bottom), (left, right) = _pads(ctx, node, attrs)
    extra = list(attrs.get("output_padding", [0, 0]))
    if "output_shape" in attrs:
        sizes = [int(d) for d in full.shape[1:3]]
        wanted = list(attrs["output_shape"])[-2:]
        # ONNX: without auto_pad the odd pixel of the total padding comes off the start.
        total = [s + e - w for s, e, w in zip(sizes, extra, wanted, strict=True)]
        top, bottom = total[0] - total[0] // 2, total[0] // 2
        left, right = total[1] - total[1] // 2, total[1] // 2
    crop = ((top, bottom - extra[0]), (left, right - extra[1]))
    if min(min(c) for c in crop) < 0:
        raise ctx.refuse(node, f"output_padding {extra} beyond the padding {attrs.get('pads')}")
    if not any(any(c) for c in crop):
        return [Value(full, True)]
    return [Value(L.Cropping2D(crop, name=ctx.name(node.output[0]))(full), True)]


def _batch_norm(ctx, node, attrs):
    x = ctx.map_value(node)
    gamma, beta, mean, variance = (ctx.constant(node, i) for i in range(1, 5))
    layer = L.BatchNormalization(epsilon=attrs.get("epsilon", 1e-5), name=ctx.name(node.output[0]))
    output = layer(x.tensor)
    layer.set_weights([gamma, beta, mean, variance])
    return [Value(output, True)]


def _activation(function: str) -> Callable:
    def convert(ctx, node, attrs):
        x = ctx.value(node)
        return [Value(L.Activation(function, name=ctx.name(node.output[0]))(x.tensor), x.is_map)]

    return convert


def _relu(ctx, node, attrs):
    x = ctx.value(node)
    return [Value(L.ReLU(name=ctx.name(node.output[0]))(x.tensor), x.is_map)]


def _leaky_relu(ctx, node, attrs):
    x = ctx.value(node)
    layer = L.LeakyReLU(negative_slope=attrs.get("alpha", 0.01), name=ctx.name(node.output[0]))
    return [Value(layer(x.tensor), x.is_map)]


def _prelu(ctx, node, attrs):
    x = ctx.map_value(node)
    slope = ctx.constant(node, 1).reshape(-1).astype(np.float32)
    channels = x.onnx_shape[1]
    if slope.size not in (1, channels):
        raise ctx.refuse(node, f"a slope of {slope.size} values for {channels} channels")
    layer = L.PReLU(shared_axes=[1, 2], name=ctx.name(node.output[0]))
    output = layer(x.tensor)
    layer.set_weights([np.broadcast_to(slope, (channels,)).reshape(1, 1, channels)])
    return [Value(output, True)]


def _clip(ctx, node, attrs):
    x = ctx.value(node)
    low = attrs.get("min")
    high = attrs.get("max")
    if len(node.input) > 1 and node.input[1]:
        low = float(ctx.constant(node, 1))
    if len(node.input) > 2 and node.input[2]:
        high = float(ctx.constant(node, 2))
    if low != 0.0:
        raise ctx.refuse(node, f"Clip with min={low}: only Clip(0, max) (ReLU6) is imported")
    layer = L.ReLU(max_value=high, name=ctx.name(node.output[0]))
    return [Value(layer(x.tensor), x.is_map)]


def _hard_sigmoid(ctx, node, attrs):
    """max(0, min(1, alpha x + beta)): the affine part, then a ReLU capped at 1 (PyTorch
    exports alpha = 1/6, PaddlePaddle 0.2)."""
    x = ctx.value(node)
    alpha, beta = float(attrs.get("alpha", 0.2)), float(attrs.get("beta", 0.5))
    affine = L.Rescaling(alpha, beta, name=ctx.name(f"{node.output[0]}_affine"))(x.tensor)
    return [Value(L.ReLU(max_value=1.0, name=ctx.name(node.output[0]))(affine), x.is_map)]


def _attention_softmax(ctx, node, attrs, x: Value) -> list[Value]:
    stage = x.attention or {}
    axis = attrs.get("axis", -1)
    rank = 2 if stage.get("flat") else 3
    if stage.get("stage") != "scores" or axis % rank != rank - 1:
        raise ctx.refuse(node, f"Softmax over axis {axis} of attention scores is not imported")
    joint = bool(stage["flat"])  # over all pairs at once (MAnet), else over each query's row
    return [Value(x.tensor, False, attention={**stage, "stage": "softmax", "joint": joint})]


def _softmax(ctx, node, attrs):
    viewed = ctx.value(node, view=True)
    if viewed.attention is not None:
        return _attention_softmax(ctx, node, attrs, viewed)
    x = ctx.value(node)
    axis = attrs.get("axis", -1)
    rank = len(x.tensor.shape)
    axis %= rank
    if x.is_map:
        axis = {0: 0, 1: 3, 2: 1, 3: 2}[axis]
    if axis == 0:
        raise ctx.refuse(node, "a softmax over the batch")
    layer = L.Softmax(axis=axis, name=ctx.name(node.output[0]))
    return [Value(layer(x.tensor), x.is_map)]


def _channel_constant(ctx, node, constant: np.ndarray, x: Value) -> np.ndarray | float:
    """A constant operand as a scalar or a per-channel vector (else refused)."""
    values = np.asarray(constant, np.float32)
    if values.size == 1:
        return float(values.reshape(()))
    shape = x.onnx_shape
    channels = shape[1] if len(shape) > 1 else shape[-1]
    if x.is_map:
        padded = values.reshape((1,) * (4 - values.ndim) + values.shape)
        if padded.shape[0] == 1 and padded.shape[2:] == (1, 1) and padded.shape[1] == channels:
            return padded.reshape(channels)
    elif values.ndim >= 1 and values.shape[-1] == channels and values.size == channels:
        return values.reshape(channels)
    raise ctx.refuse(node, f"a constant of shape {list(values.shape)}: only scalars and "
                           f"per-channel constants are imported")  # fmt: skip


def _arithmetic(op: str) -> Callable:
    merge = {"Add": L.Add, "Sub": L.Subtract, "Mul": L.Multiply}

    def convert(ctx, node, attrs):
        a, b = node.input[0], node.input[1]
        name = ctx.name(node.output[0])
        if a in ctx.values and b in ctx.values:
            if op not in merge:
                raise ctx.refuse(node, "division of two tensors is not imported")
            x, y = ctx.value(node, 0), ctx.value(node, 1)
            if x.is_map != y.is_map:
                raise ctx.refuse(node, "an operation between an image tensor and a vector")
            return [Value(merge[op](name=name)([x.tensor, y.tensor]), x.is_map)]
        x_first = a in ctx.values
        x = ctx.value(node, 0 if x_first else 1)
        c = _channel_constant(ctx, node, ctx.constants[b if x_first else a], x)
        layer = constant_rescaling(op.lower(), c, x_first, name)
        if layer is None:
            raise ctx.refuse(node, "a constant divided by a tensor is not imported")
        return [Value(layer(x.tensor), x.is_map)]

    return convert


def _pool(mode: str) -> Callable:
    def convert(ctx, node, attrs):
        x = ctx.map_value(node)
        kernel = tuple(attrs["kernel_shape"])
        strides = tuple(attrs.get("strides", [1, 1]))
        if any(d != 1 for d in attrs.get("dilations", [1, 1])):
            raise ctx.refuse(node, "dilated pooling is not imported")
        padding = _pads(ctx, node, attrs, x.onnx_shape[2:])
        ceil = bool(attrs.get("ceil_mode", 0))
        include_pad = bool(attrs.get("count_include_pad", 0))
        name = ctx.name(node.output[0])
        sizes = x.onnx_shape[2:]
        plain = not any(any(p) for p in padding) and all(
            pooled_size(n, k, s, 0, 0, ceil) == pooled_size(n, k, s, 0, 0, False)
            for n, k, s in zip(sizes, kernel, strides, strict=True)
        )
        if plain:
            layer = (L.MaxPooling2D if mode == "max" else L.AveragePooling2D)(
                kernel, strides, padding="valid", name=name
            )
        else:
            layer = ExplicitPooling2D(mode, kernel, strides, padding, ceil, include_pad, name=name)
        return [Value(layer(x.tensor), True)]

    return convert


def _global_pool(mode: str) -> Callable:
    def convert(ctx, node, attrs):
        x = ctx.map_value(node)
        kind = L.GlobalAveragePooling2D if mode == "avg" else L.GlobalMaxPooling2D
        return [Value(kind(keepdims=True, name=ctx.name(node.output[0]))(x.tensor), True)]

    return convert


def _reduce(merge: type) -> Callable:
    """ReduceSum/Mean/Max over the axis that maps are stacked on, as one merge layer."""

    def convert(ctx, node, attrs):
        x = ctx.value(node, view=True)
        axes = attrs.get("axes")
        if axes is None and len(node.input) > 1:
            axes = ctx.constant(node, 1).tolist()
        if node.op_type == "ReduceMean" and x.stacked is None:
            return _reduce_mean(ctx, node, attrs)
        if x.stacked is None or attrs.get("keepdims", 1) or axes is None:
            raise ctx.refuse(node, "only a sum over maps stacked on a new axis is imported")
        if [a % 5 for a in axes] != [x.stack_axis]:
            raise ctx.refuse(node, f"{node.op_type} over axes {axes}, not the stacking axis")
        if len(x.stacked) == 1:
            return [Value(x.stacked[0], True)]
        return [Value(merge(name=ctx.name(node.output[0]))(x.stacked), True)]

    return convert


def _unsqueeze(ctx, node, attrs):
    x = ctx.map_value(node)
    axes = attrs["axes"] if "axes" in attrs else ctx.constant(node, 1).tolist()
    if len(axes) != 1:
        raise ctx.refuse(node, f"Unsqueeze of an image tensor on axes {list(axes)}")
    return [Value(x.tensor, False, stacked=[x.tensor], stack_axis=int(axes[0]) % 5)]


def _instance_norm(ctx, node, attrs):
    """InstanceNormalization of a map, or of a map seen in groups (`Value.groups`): PyTorch's
    GroupNorm, exported as reshape, InstanceNormalization, reshape, then its affine Mul and
    Add. Keras' GroupNormalization normalises each group of channels over H x W."""
    x = ctx.value(node, view=True)
    if not (x.is_map or x.groups):
        raise ctx.refuse(node, f"InstanceNormalization of a tensor of shape {x.onnx_shape}")
    channels = int(x.tensor.shape[-1])
    groups = x.groups or channels
    scale, bias = ctx.constant(node, 1), ctx.constant(node, 2)
    per_group = channels // groups
    layer = L.GroupNormalization(
        groups=groups, epsilon=attrs.get("epsilon", 1e-5), name=ctx.name(node.output[0])
    )
    output = layer(x.tensor)
    layer.set_weights([np.repeat(scale, per_group), np.repeat(bias, per_group)])
    return [Value(output, x.is_map, groups=x.groups)]


def _reduce_mean(ctx, node, attrs):
    ctx.map_value(node)  # refused unless an image tensor
    axes = attrs.get("axes")
    if axes is None and len(node.input) > 1:
        axes = ctx.constant(node, 1).tolist()
    if sorted(a % 4 for a in (axes or [])) != [2, 3] or not attrs.get("keepdims", 1):
        raise ctx.refuse(node, f"ReduceMean over axes {axes}: only the spatial mean is imported")
    return _global_pool("avg")(ctx, node, attrs)


def _concat(ctx, node, attrs):
    values = [ctx.value(node, i, view=True) for i in range(len(node.input))]
    if any(v.stacked is not None for v in values):
        axes = {v.stack_axis for v in values if v.stacked is not None}
        if not all(v.stacked is not None for v in values) or axes != {attrs["axis"] % 5}:
            raise ctx.refuse(node, "a concatenation of stacked maps off their stacking axis")
        parts = [t for v in values for t in v.stacked or []]
        return [Value(parts[0], False, stacked=parts, stack_axis=axes.pop())]
    if any(v.is_view for v in values):
        raise ctx.refuse(node, "a concatenation of image tensors reshaped into groups")
    if len({v.is_map for v in values}) != 1:
        raise ctx.refuse(node, "a concatenation of image tensors and vectors")
    axis = attrs["axis"] % len(values[0].tensor.shape)
    if values[0].is_map:
        axis = {1: 3, 2: 1, 3: 2}.get(axis, 0)
    if axis == 0:
        raise ctx.refuse(node, "a concatenation over the batch")
    layer = L.Concatenate(axis=axis, name=ctx.name(node.output[0]))
    return [Value(layer([v.tensor for v in values]), values[0].is_map)]


def _resize(ctx, node, attrs):
    x = ctx.map_value(node)
    shape = x.onnx_shape
    if node.op_type == "Upsample":
        scales = ctx.constant(node, 1)
        sizes = None
    else:
        scales = ctx.constant(node, 2, required=False)
        sizes = ctx.constant(node, 3, required=False)
    if sizes is not None and sizes.size:
        height, width = (int(v) for v in sizes[-2:])
    elif scales is not None and scales.size:
        if scales[0] != 1 or scales[1] != 1:
            raise ctx.refuse(node, f"scales {scales.tolist()} resize the batch or channels")
        height, width = (math.floor(n * s) for n, s in zip(shape[2:], scales[2:], strict=True))
    else:
        raise ctx.refuse(node, "neither scales nor sizes is given")
    mode = _text(attrs.get("mode", "nearest"))
    coordinates = _text(attrs.get("coordinate_transformation_mode", "half_pixel"))
    if node.op_type == "Upsample":
        coordinates = "asymmetric"
    if mode == "linear":
        interpolation = "bilinear"
    elif mode == "nearest":
        interpolation = "nearest"
        nearest_mode = _text(attrs.get("nearest_mode", "round_prefer_floor"))
        if node.op_type != "Upsample" and nearest_mode != "floor":
            raise ctx.refuse(node, f"nearest_mode={nearest_mode}: only floor is imported")
    else:
        raise ctx.refuse(node, f"mode={mode}: only nearest and linear are imported")
    if coordinates not in ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric"):
        raise ctx.refuse(node, f"coordinate_transformation_mode={coordinates} is not imported")
    if attrs.get("antialias", 0):
        raise ctx.refuse(node, "antialiased resizing is not imported")
    layer = Resize2D((height, width), interpolation, coordinates, name=ctx.name(node.output[0]))
    return [Value(layer(x.tensor), True)]


def _pad(ctx, node, attrs):
    x = ctx.map_value(node)
    if _text(attrs.get("mode", "constant")) != "constant":
        raise ctx.refuse(node, f"mode={_text(attrs['mode'])}: only constant padding is imported")
    pads = attrs.get("pads")
    if pads is None:
        pads = ctx.constant(node, 1).tolist()
    value = attrs.get("value", 0.0)
    if len(node.input) > 2 and node.input[2]:
        value = float(ctx.constant(node, 2).reshape(-1)[0])
    if len(node.input) > 3 and node.input[3]:
        raise ctx.refuse(node, "Pad with axes is not imported")
    if len(pads) != 8 or any(pads[i] for i in (0, 1, 4, 5)):
        raise ctx.refuse(node, f"pads {pads}: only height and width are padded")
    padding = ((pads[2], pads[6]), (pads[3], pads[7]))
    tensor = _padded(ctx, node, x, padding, value)
    return [Value(tensor, True)]


def _identity(ctx, node, attrs):
    return [ctx.value(node)]


def _flatten(ctx, node, attrs):
    x = ctx.value(node)
    if x.is_map and x.onnx_shape[2:] != [1, 1]:
        raise ctx.refuse(node, "flattening a map larger than 1 x 1 (its order differs in NHWC)")
    if attrs.get("axis", 1) != 1:
        raise ctx.refuse(node, f"Flatten axis={attrs['axis']}: only axis 1 is imported")
    return [Value(L.Flatten(name=ctx.name(node.output[0]))(x.tensor), False)]


def _reshape(ctx, node, attrs):
    x = ctx.value(node, view=True)
    target = _reshape_target(x.onnx_shape, ctx.constant(node, 1))
    if x.is_map and len(target) == 3 and target[0] == x.onnx_shape[0]:
        _, c, h, w = x.onnx_shape
        if 0 < target[1] and c % target[1] == 0 and target[2] in (-1, c // target[1] * h * w):
            return [Value(x.tensor, False, groups=target[1])]  # GroupNorm's first reshape
    if x.groups:
        shape = Value(x.tensor, True).onnx_shape
        if target != shape:
            raise ctx.refuse(node, f"Reshape of {x.onnx_shape} to {target}, not back to {shape}")
        return [Value(x.tensor, True)]
    if x.stacked is not None:
        raise ctx.refuse(node, f"Reshape of stacked maps {x.onnx_shape} is not imported")
    if x.attention is not None:
        return [_attention_reshape(ctx, node, x, target)]
    if x.is_map and x.onnx_shape[2:] == [1, 1] and len(target) == 2:
        return [Value(L.Flatten(name=ctx.name(node.output[0]))(x.tensor), False)]
    if not x.is_map and target[1:] == x.onnx_shape[1:]:
        return [x]
    raise ctx.refuse(node, f"Reshape {x.onnx_shape} -> {target} is not imported")


def _attention_reshape(ctx, node, x: Value, target: list[int]) -> Value:
    """Attention scores flattened or unflattened, or the attended values reshaped to a map:
    then one PositionAttention layer."""
    stage = x.attention or {}
    n = x.onnx_shape[0]
    if stage["stage"] in ("scores", "softmax"):
        height, width = (int(d) for d in stage["q"].shape[1:3])
        positions = height * width
        if target in ([n, positions * positions], [n, -1]):
            return Value(x.tensor, False, attention={**stage, "flat": True})
        if target in ([n, positions, positions], [n, positions, -1], [n, -1, positions]):
            return Value(x.tensor, False, attention={**stage, "flat": False})
    else:
        values = stage["v"]
        height, width, channels = (int(d) for d in values.shape[1:])
        if target == [n, channels, height, width]:
            layer = PositionAttention(
                joint_softmax=stage["joint"],
                channel_major=not stage["transposed"],
                name=ctx.name(node.output[0]),
            )
            return Value(layer([stage["q"], stage["k"], values]), True)
    raise ctx.refuse(node, f"Reshape of attention {x.onnx_shape} to {target} is not imported")


def _transpose(ctx, node, attrs):
    x = ctx.value(node, view=True)
    perm = list(attrs.get("perm", []))
    if perm == [0, 2, 1] and x.groups and x.groups == int(x.tensor.shape[-1]):
        return [Value(x.tensor, False, tokens=True)]  # a map as [N, HW, C]
    stage = x.attention or {}
    if perm == [0, 2, 1] and stage.get("stage") == "attended" and not stage["transposed"]:
        return [Value(x.tensor, False, attention={**stage, "transposed": True})]
    raise ctx.refuse(
        node, f"Transpose {perm} of {x.onnx_shape}: only a map's positions and channels swap"
    )


def _attention_matmul(ctx, node, a: Value, b: Value) -> list[Value]:
    """Queries [N, HW, Cq] times keys [N, Cq, HW] (scores), or the softmax of the scores
    times values [N, HW, C] (attended values)."""
    if a.tokens and b.groups and b.groups == int(b.tensor.shape[-1]):
        if a.tensor.shape[1:3] != b.tensor.shape[1:3]:
            raise ctx.refuse(node, "queries and keys of different map sizes")
        attention = {"stage": "scores", "q": a.tensor, "k": b.tensor, "flat": False}
        return [Value(a.tensor, False, attention=attention)]
    stage = a.attention or {}
    if stage.get("stage") == "softmax" and b.tokens:
        if b.tensor.shape[1:3] != stage["q"].shape[1:3]:
            raise ctx.refuse(node, "attention and values of different map sizes")
        attention = {**stage, "stage": "attended", "v": b.tensor, "transposed": False}
        return [Value(b.tensor, False, attention=attention)]
    raise ctx.refuse(
        node,
        f"MatMul of {a.onnx_shape} by {b.onnx_shape}: only attention over a map's "
        f"positions multiplies two tensors",
    )


def _gemm(ctx, node, attrs):
    x = ctx.value(node)
    if x.is_map or len(x.tensor.shape) != 2 or attrs.get("transA", 0):
        raise ctx.refuse(node, "only Gemm of a [N, K] tensor by a constant is imported")
    weight = ctx.constant(node, 1).astype(np.float32)
    weight = weight.T if attrs.get("transB", 0) else weight
    weight = weight * attrs.get("alpha", 1.0)
    bias = ctx.constant(node, 2, required=False)
    layer = L.Dense(weight.shape[1], use_bias=bias is not None, name=ctx.name(node.output[0]))
    output = layer(x.tensor)
    weights = [weight]
    if bias is not None:
        weights.append(np.broadcast_to(bias * attrs.get("beta", 1.0), weight.shape[1:]))
    layer.set_weights(weights)
    return [Value(output, False)]


def _matmul(ctx, node, attrs):
    if node.input[0] in ctx.values and node.input[1] in ctx.values:
        a, b = ctx.value(node, 0, view=True), ctx.value(node, 1, view=True)
        return _attention_matmul(ctx, node, a, b)
    return _gemm(ctx, node, {})


OPS: dict[str, Callable] = {
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "BatchNormalization": _batch_norm,
    "Relu": _relu,
    "LeakyRelu": _leaky_relu,
    "PRelu": _prelu,
    "Clip": _clip,
    "Sigmoid": _activation("sigmoid"),
    "Tanh": _activation("tanh"),
    "HardSigmoid": _hard_sigmoid,
    "HardSwish": _activation("hard_silu"),
    "Softmax": _softmax,
    "Add": _arithmetic("Add"),
    "Sub": _arithmetic("Sub"),
    "Mul": _arithmetic("Mul"),
    "Div": _arithmetic("Div"),
    "MaxPool": _pool("max"),
    "AveragePool": _pool("avg"),
    "GlobalAveragePool": _global_pool("avg"),
    "GlobalMaxPool": _global_pool("max"),
    "ReduceMean": _reduce(L.Average),
    "ReduceSum": _reduce(L.Add),
    "ReduceMax": _reduce(L.Maximum),
    "Unsqueeze": _unsqueeze,
    "InstanceNormalization": _instance_norm,
    "Concat": _concat,
    "Resize": _resize,
    "Upsample": _resize,
    "Pad": _pad,
    "Identity": _identity,
    "Dropout": _identity,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "Transpose": _transpose,
}


# --- Reading, building and checking ----------------------------------------------------------


def read_onnx(path: str) -> "onnx.ModelProto":
    """The ONNX model at `path` with its weights, external data read only from inside the
    model's own folder."""
    import onnx
    from onnx import external_data_helper

    if not os.path.isfile(path):
        raise OnnxImportError(f"{path}: no such ONNX file")
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and friends: any unreadable file
        raise OnnxImportError(f"{path}: not a readable ONNX file ({type(e).__name__})") from e
    folder = os.path.realpath(os.path.dirname(os.path.abspath(path)))
    for tensor in external_data_helper._get_all_tensors(model):
        if not external_data_helper.uses_external_data(tensor):
            continue
        location = {e.key: e.value for e in tensor.external_data}.get("location", "")
        target = os.path.realpath(os.path.join(folder, location))
        if os.path.commonpath([folder, target]) != folder:
            raise OnnxImportError(
                f"{path}: tensor {tensor.name!r} reads external data from {location!r}, "
                f"outside the model's folder; refused"
            )
        if not os.path.isfile(target):
            raise OnnxImportError(f"{path}: tensor {tensor.name!r}: no external data {location!r}")
    try:
        external_data_helper.load_external_data_for_model(model, folder)
    except Exception as e:
        raise OnnxImportError(f"{path}: its external data is unreadable ({e})") from e
    return model


def _input_shape(ctx, model, input_size) -> tuple[str, list[int]]:
    initialisers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initialisers]
    if len(inputs) != 1:
        raise ctx.refuse(None, f"{len(inputs)} inputs; only one image input is imported")
    tensor_type = inputs[0].type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
    if len(dims) != 4:
        raise ctx.refuse(None, f"input {inputs[0].name!r} of rank {len(dims)} is not an image")
    _, channels, height, width = dims
    if channels is None:
        raise ctx.refuse(None, f"input {inputs[0].name!r} has no fixed channel count")
    if input_size is not None:
        height, width = (int(v) for v in input_size)
    if height is None or width is None:
        raise ctx.refuse(
            None,
            f"input {inputs[0].name!r} has a dynamic height or width; give the size to build "
            f"it for as input_size=HEIGHT,WIDTH",
        )
    return inputs[0].name, [channels, height, width]


def build_keras(
    model: "onnx.ModelProto", path: str, input_size: Sequence[int] | None = None
) -> keras.Model:
    """The Keras model of the ONNX `model` (from `path`, named in errors), unchecked."""
    return _build(model, path, input_size)[0]


def _build(model, path: str, input_size: Sequence[int] | None) -> tuple[keras.Model, _Context]:
    from onnx import numpy_helper

    ctx = _Context(path)
    for tensor in model.graph.initializer:
        ctx.constants[tensor.name] = numpy_helper.to_array(tensor)
    name, (channels, height, width) = _input_shape(ctx, model, input_size)
    image = keras.Input((height, width, channels), name=ctx.name(name))
    ctx.values[name] = Value(image, True)
    for node in model.graph.node:
        if not node.output:
            raise ctx.refuse(node, "has no output")
        for name in node.input:
            if name and name not in ctx.values and name not in ctx.constants:
                raise ctx.refuse(node, f"input {name!r} is made by no node before it")
        try:
            attrs = _attributes(node)
            folded = _fold(ctx, node, attrs)
        except OnnxImportError:
            raise
        except Exception as e:  # a malformed attribute or constant
            raise ctx.refuse(node, f"cannot be read ({one_line(e)})") from e
        if folded is not None:
            for output, value in zip(node.output, folded, strict=False):
                ctx.constants[output] = np.asarray(value)
            continue
        if node.domain not in ("", "ai.onnx"):
            raise ctx.refuse(node, f"custom op of domain {node.domain!r} is not imported")
        convert = OPS.get(node.op_type)
        if convert is None:
            raise ctx.refuse(node, "no importer for this op (docs/importers.md lists them)")
        try:
            converted = convert(ctx, node, attrs)
        except OnnxImportError:
            raise
        except Exception as e:  # an attribute or shape the converter did not foresee
            raise ctx.refuse(node, f"cannot be imported ({one_line(e)})") from e
        for output, value in zip(node.output, converted, strict=False):
            ctx.values[output] = value
    outputs = []
    for output in model.graph.output:
        if output.name not in ctx.values:
            raise ctx.refuse(None, f"output {output.name!r} is a constant")
        outputs.append(_named(ctx, ctx.values[output.name], output.name))
    network = keras.Model(image, outputs if len(outputs) > 1 else outputs[0], name="onnx_import")
    return network, ctx


def _named(ctx, value: Value, name: str):
    """The output tensor, its layer named after the ONNX output (so `output=NAME` finds it)."""
    layer = value.tensor._keras_history.operation
    wanted = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    if getattr(layer, "name", None) == wanted or not isinstance(layer, L.Layer):
        return value.tensor
    return L.Identity(name=ctx.name(name))(value.tensor)


def compare(
    model: "onnx.ModelProto",
    network: keras.Model,
    path: str,
    tolerance: float = TOLERANCE,
    values: dict[str, Any] | None = None,
) -> float:
    """The largest difference between onnxruntime and `network` on a probe input, relative to
    each tensor's range (at least checking.SMALLEST_RANGE): over the outputs, and over every
    tensor of `values` ({ONNX name: Keras tensor of `network`}) where given, so that a refusal
    names the first node that differs. OnnxImportError above `tolerance`."""
    import onnx
    import onnxruntime

    outputs = [o.name for o in model.graph.output]
    names = list(outputs)
    if values:
        names += [n.output[0] for n in model.graph.node if n.output[0] in values]
        names = list(dict.fromkeys(names))
    probed = onnx.ModelProto()
    probed.CopyFrom(model)
    for name in names[len(outputs) :]:
        probed.graph.output.append(onnx.helper.make_tensor_value_info(name, 1, None))
    height, width, channels = network.inputs[0].shape[1:]
    x = probe((1, channels, height, width))
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1  # a reproducible reference
    try:
        session = onnxruntime.InferenceSession(
            probed.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        expected = session.run(names, {session.get_inputs()[0].name: x})
    except Exception as e:  # onnxruntime's own errors: an invalid graph, a bad shape
        message = str(e).splitlines()[0] if str(e) else ""
        raise OnnxImportError(
            f"{path}: onnxruntime cannot run it, so the import cannot be checked "
            f"({type(e).__name__}: {message})"
        ) from e
    tensors = list(network.outputs) + [values[n] for n in names[len(outputs) :]] if values else []
    inspected = keras.Model(network.inputs[0], tensors) if values else network
    got = inspected(np.transpose(x, (0, 2, 3, 1)))
    got = list(got) if isinstance(got, (list, tuple)) else [got]
    worst, first = 0.0, None
    made_by = {n.output[0]: n for n in model.graph.node}
    position = {name: i for i, name in enumerate(made_by)}
    # Outputs first in the lists, but the first node that differs is reported in graph order.
    order = sorted(range(len(names)), key=lambda i: position.get(names[i], -1))
    for i in order:
        name, want, have = names[i], expected[i], np.asarray(got[i])
        if have.ndim == 4:
            have = np.transpose(have, (0, 3, 1, 2))
        if have.shape != want.shape:
            raise OnnxImportError(
                f"{path}: tensor {name!r} has shape {list(have.shape)} here and "
                f"{list(want.shape)} in onnxruntime; refused"
            )
        difference = relative_difference(have, want)
        if difference > tolerance and first is None:
            first = name
        worst = max(worst, difference)
    if first is not None or not worst <= tolerance:
        node = made_by.get(first or "")
        where = f" first at {node.op_type} node {node.name or first!r}" if node else ""
        raise OnnxImportError(
            f"{path}: the import differs from onnxruntime by {worst:.2e} of a tensor's range"
            f"{where} (tolerance {tolerance:.0e}); refused"
        )
    return worst


def import_onnx(
    path: str | os.PathLike,
    *,
    input_size: Sequence[int] | None = None,
    tolerance: float = TOLERANCE,
) -> keras.Model:
    """The ONNX file at `path` as a Keras functional model with [1, H, W, C] float input,
    checked against onnxruntime (`compare`)."""
    path = os.fspath(path)
    model = read_onnx(path)
    network, ctx = _build(model, path, input_size)
    checked = {k: v.tensor for k, v in ctx.values.items() if not v.is_view}
    compare(model, network, path, tolerance, checked)
    return network
