"""TFLite files as Keras 3 functional models of standard layers, checked against LiteRT.

    from tf_segunravel.importers.tflite_model import import_tflite

    model = import_tflite("selfie_segmentation.tflite")     # NHWC in, NHWC scores out

TFLite is NHWC like Keras, so tensors keep their layout and only kernels are permuted (a
CONV_2D's [O, kh, kw, I] becomes Keras' [kh, kw, I, O]). TFLite's SAME padding is
TensorFlow's, which is Keras' 'same', so convolutions and pooling map onto Keras' own layers
exactly; a fused activation becomes its own layer after the op. MediaPipe's
`Convolution2DTransposeBias` custom op is a Conv2DTranspose with a bias. Float16 and int8
weights behind a DEQUANTIZE are dequantised exactly as the runtime does ((q - zero point) *
scale, in float32); a model whose activations are quantised is refused, since no float layer
computes its rounding.

Why LiteRT (`ai-edge-litert`) is the reference and not `tf.lite.Interpreter`: TensorFlow
marks its interpreter deprecated in favour of LiteRT, which is the runtime phones run and
whose XNNPACK delegate runs MediaPipe's custom op. Every import is run by LiteRT on a probe
input and refused where the largest difference exceeds `tolerance` times the tensor's range:
every tensor of the graph where LiteRT's built-in kernels run the whole model, the outputs
where it needs the delegate (a custom op).

The flatbuffer is read with LiteRT's own generated schema (`ai_edge_litert.schema_py_generated`).
Each refusal is a `TfliteImportError` (an InputError) whose one line names the file and what is
wrong: an unknown op and its operator, a quantised activation, a custom op other than
MediaPipe's, a model with no image input, a corrupt file.
"""

import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np

from tf_segunravel.errors import InputError
from tf_segunravel.importers.arithmetic import constant_rescaling
from tf_segunravel.importers.checking import TOLERANCE, one_line, probe, relative_difference
from tf_segunravel.models.framework_layers import ConstantPadding2D, Resize2D

L = keras.layers

# TensorType codes of the schema, and the numpy type of each constant kind imported.
_DTYPES = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 9: np.int8}
_FLOAT32, _FLOAT16 = 0, 1
_SAME = 0  # Padding.SAME
# ActivationFunctionType codes (RELU, RELU6, TANH) and the layer each becomes.
_FUSED: dict[int, Callable[[str], Any]] = {
    1: lambda name: L.ReLU(name=name),
    3: lambda name: L.ReLU(max_value=6.0, name=name),
    4: lambda name: L.Activation("tanh", name=name),
}
# MediaPipe's custom op, with its options as TfLiteTransposeConvParams: padding (1 SAME,
# 2 VALID), stride width, stride height, three int32s.
TRANSPOSE_CONV_BIAS = "Convolution2DTransposeBias"


class TfliteImportError(InputError):
    """A TFLite file the importer refuses; the message names the file and the reason."""


class _Context:
    """The state of one import: the graph's tensors as constants or Keras tensors."""

    def __init__(self, path: str, model: Any):
        from ai_edge_litert import schema_py_generated as schema

        self.path = path
        self.model = model
        self.graph = model.subgraphs[0]
        self.constants: dict[int, np.ndarray] = {}
        self.values: dict[int, Any] = {}
        self.dequantised: set[int] = set()  # outputs of a folded DEQUANTIZE
        # TensorFlow's converter writes a dilated convolution as SPACE_TO_BATCH_ND, a plain
        # VALID convolution, BATCH_TO_SPACE_ND: {tensor: (input, block, paddings)} for the
        # first, {tensor: (convolved, crops)} for the second, taken apart by the next op.
        self.space_to_batch: dict[int, tuple[Any, list[int], np.ndarray]] = {}
        self.batch_to_space: dict[int, tuple[Any, np.ndarray]] = {}
        self._names: set[str] = set()
        count = len(self.graph.tensors if self.graph.tensors is not None else [])
        for op in self.graph.operators if self.graph.operators is not None else []:
            indices = [*(op.inputs if op.inputs is not None else []),
                       *(op.outputs if op.outputs is not None else [])]  # fmt: skip
            if any(not -1 <= i < count for i in indices) or op.opcodeIndex >= len(
                model.operatorCodes if model.operatorCodes is not None else []
            ):
                raise TfliteImportError(f"{path}: an operator names a tensor or an op code "
                                        f"the file does not have; the file is corrupt")  # fmt: skip
        ends = [*(self.graph.inputs if self.graph.inputs is not None else []),
                *(self.graph.outputs if self.graph.outputs is not None else [])]  # fmt: skip
        if any(not 0 <= i < count for i in ends):
            raise TfliteImportError(f"{path}: the graph's inputs or outputs name no tensor")
        codes = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
        self.op_names = [
            _text(c.customCode)
            if c.customCode
            else codes.get(max(c.builtinCode, c.deprecatedBuiltinCode), "?")
            for c in model.operatorCodes
        ]
        for index, tensor in enumerate(self.graph.tensors):
            data = model.buffers[tensor.buffer].data if tensor.buffer < len(model.buffers) else None
            if data is not None and len(data):
                if tensor.type not in _DTYPES:
                    raise TfliteImportError(
                        f"{path}: tensor {self.tensor_name(index)!r} has a type (code "
                        f"{tensor.type}) the importer does not read"
                    )
                array = np.frombuffer(np.asarray(data, np.uint8).tobytes(), _DTYPES[tensor.type])
                shape = _shape(tensor)
                if array.size != int(np.prod(shape)):
                    raise TfliteImportError(
                        f"{path}: tensor {self.tensor_name(index)!r} holds {array.size} values "
                        f"for its shape {shape}; the file is corrupt"
                    )
                self.constants[index] = array.reshape(shape)

    def tensor_name(self, index: int) -> str:
        return _text(self.graph.tensors[index].name) or f"tensor{index}"

    def refuse(self, op, reason: str) -> TfliteImportError:
        if op is None:
            return TfliteImportError(f"{self.path}: {reason}")
        output = self.tensor_name(op.outputs[0]) if len(op.outputs) else "?"
        return TfliteImportError(
            f"{self.path}: {self.op_names[op.opcodeIndex]} operator {output!r}: {reason}"
        )

    def name(self, index: int, suffix: str = "") -> str:
        """A unique Keras layer name from a tensor's name."""
        wanted = self.tensor_name(index) + suffix
        base = re.sub(r"[^A-Za-z0-9_.-]", "_", wanted).strip("._-") or "layer"
        name, n = base, 1
        while name in self._names:
            n += 1
            name = f"{base}_{n}"
        self._names.add(name)
        return name

    def constant(self, op, position: int) -> np.ndarray:
        index = op.inputs[position] if position < len(op.inputs) else -1
        if index < 0 or index not in self.constants:
            raise self.refuse(op, f"input {position} must be a constant (a weight or a size)")
        if _quantised(self.graph.tensors[index]) and index not in self.dequantised:
            # A hybrid kernel: int8 weights, activations quantised on the fly by the runtime.
            raise self.refuse(op, "takes quantised int8 weights: quantised models are refused")
        return self.constants[index]

    def optional_constant(self, op, position: int) -> np.ndarray | None:
        if position >= len(op.inputs) or op.inputs[position] < 0:
            return None
        return self.constant(op, position)

    def value(self, op, position: int = 0) -> Any:
        index = op.inputs[position]
        if index in self.space_to_batch or index in self.batch_to_space:
            raise self.refuse(op, "takes a SPACE_TO_BATCH_ND tensor; only a convolution between "
                                  "it and its BATCH_TO_SPACE_ND is imported")  # fmt: skip
        if index not in self.values:
            raise self.refuse(op, f"input {self.tensor_name(index)!r} must be a tensor")
        return self.values[index]

    def dilated_input(self, op, options) -> tuple[Any, tuple[int, int]]:
        """The input of a convolution and its dilation: a SPACE_TO_BATCH_ND's input padded
        as it pads, and its block, or the plain input and the options' dilation."""
        index = op.inputs[0]
        if index not in self.space_to_batch:
            return self.map_value(op), (options.dilationHFactor, options.dilationWFactor)
        x, block, paddings = self.space_to_batch[index]
        if options.padding == _SAME or (options.dilationHFactor, options.dilationWFactor) != (1, 1):
            raise self.refuse(op, "a convolution inside SPACE_TO_BATCH_ND must be VALID")
        if paddings.any():
            x = L.ZeroPadding2D(tuple(map(tuple, paddings)), name=self.name(index))(x)
        return x, (block[0], block[1])

    def map_value(self, op, position: int = 0) -> Any:
        found = self.value(op, position)
        if len(found.shape) != 4:
            raise self.refuse(op, f"input {self.tensor_name(op.inputs[position])!r} is not 4-D")
        return found


def _text(value) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _shape(tensor) -> list[int]:
    return [int(d) for d in (tensor.shape if tensor.shape is not None else [])]


def _fused(ctx, op, tensor, options) -> Any:
    """`tensor` through the op's fused activation, as its own layer."""
    code = getattr(options, "fusedActivationFunction", 0)
    if code == 0:
        return tensor
    if code not in _FUSED:
        raise ctx.refuse(op, f"fused activation {code} is not imported")
    return _FUSED[code](ctx.name(op.outputs[0], "_activation"))(tensor)


def _padding(ctx, op, options) -> str:
    return "same" if options.padding == _SAME else "valid"


# --- Ops -------------------------------------------------------------------------------------


def _dilated(ctx, op, output):
    """Marks a convolution's output for its BATCH_TO_SPACE_ND when its input came from a
    SPACE_TO_BATCH_ND (`_Context.space_to_batch`)."""
    if op.inputs[0] in ctx.space_to_batch:
        ctx.batch_to_space[op.outputs[0]] = (output, np.zeros((2, 2), np.int64))
    return output


def _space_to_batch(ctx, op, options):
    x = ctx.map_value(op)
    block = [int(v) for v in np.ravel(ctx.constant(op, 1))]
    paddings = ctx.constant(op, 2).astype(np.int64).reshape(2, 2)
    ctx.space_to_batch[op.outputs[0]] = (x, block, paddings)
    return None


def _batch_to_space(ctx, op, options):
    index = op.inputs[0]
    if index not in ctx.batch_to_space:
        raise ctx.refuse(op, "BATCH_TO_SPACE_ND of a tensor no dilated convolution made")
    tensor, _ = ctx.batch_to_space[index]
    crops = ctx.constant(op, 2).astype(np.int64).reshape(2, 2)
    if crops.any():
        tensor = L.Cropping2D(tuple(map(tuple, crops)), name=ctx.name(op.outputs[0]))(tensor)
    return tensor


def _conv(ctx, op, options):
    x, dilation = ctx.dilated_input(op, options)
    kernel = ctx.constant(op, 1).astype(np.float32)  # [O, kh, kw, I / groups]
    bias = ctx.optional_constant(op, 2)
    filters, kh, kw, per_group = kernel.shape
    groups = int(x.shape[-1]) // per_group
    layer = L.Conv2D(
        filters,
        (kh, kw),
        strides=(options.strideH, options.strideW),
        padding=_padding(ctx, op, options),
        dilation_rate=dilation,
        groups=groups,
        use_bias=bias is not None,
        name=ctx.name(op.outputs[0]),
    )
    output = layer(x)
    layer.set_weights([kernel.transpose(1, 2, 3, 0)] + ([bias] if bias is not None else []))
    return _dilated(ctx, op, _fused(ctx, op, output, options))


def _depthwise(ctx, op, options):
    x, dilation = ctx.dilated_input(op, options)
    kernel = ctx.constant(op, 1).astype(np.float32)  # [1, kh, kw, C * multiplier]
    bias = ctx.optional_constant(op, 2)
    _, kh, kw, out_channels = kernel.shape
    channels = int(x.shape[-1])
    multiplier = out_channels // channels
    layer = L.DepthwiseConv2D(
        (kh, kw),
        strides=(options.strideH, options.strideW),
        padding=_padding(ctx, op, options),
        depth_multiplier=multiplier,
        dilation_rate=dilation,
        use_bias=bias is not None,
        name=ctx.name(op.outputs[0]),
    )
    output = layer(x)
    weights = [kernel.reshape(kh, kw, channels, multiplier)]
    layer.set_weights(weights + ([bias] if bias is not None else []))
    return _dilated(ctx, op, _fused(ctx, op, output, options))


def _transpose_conv_layer(ctx, op, x, kernel, bias, strides, padding, out_shape):
    """Conv2DTranspose from a TFLite [O, kh, kw, I] kernel, checked to give `out_shape`."""
    filters, kh, kw, _ = kernel.shape
    layer = L.Conv2DTranspose(
        filters,
        (kh, kw),
        strides=strides,
        padding=padding,
        use_bias=bias is not None,
        name=ctx.name(op.outputs[0]),
    )
    output = layer(x)
    if list(output.shape[1:3]) != list(out_shape[1:3]):
        raise ctx.refuse(
            op, f"output size {list(out_shape[1:3])} is not Keras' {list(output.shape[1:3])}"
        )
    weights = [kernel.astype(np.float32).transpose(1, 2, 0, 3)]
    layer.set_weights(weights + ([bias.astype(np.float32)] if bias is not None else []))
    return output


def _transpose_conv(ctx, op, options):
    out_shape = ctx.constant(op, 0).tolist()
    kernel = ctx.constant(op, 1)
    x = ctx.map_value(op, 2)
    bias = ctx.optional_constant(op, 3)
    strides = (options.strideH, options.strideW)
    output = _transpose_conv_layer(
        ctx, op, x, kernel, bias, strides, _padding(ctx, op, options), out_shape
    )
    return _fused(ctx, op, output, options)


def _transpose_conv_bias(ctx, op, options):
    """MediaPipe's Convolution2DTransposeBias: inputs x, kernel [O, kh, kw, I], bias."""
    raw = bytes(np.asarray(op.customOptions if op.customOptions is not None else [], np.uint8))
    if len(raw) != 12:
        raise ctx.refuse(op, f"its options are {len(raw)} bytes, not TfLiteTransposeConvParams' 12")
    padding, stride_w, stride_h = np.frombuffer(raw, "<i4").tolist()
    if padding not in (1, 2):
        raise ctx.refuse(op, f"padding code {padding} is neither SAME (1) nor VALID (2)")
    x = ctx.map_value(op)
    kernel, bias = ctx.constant(op, 1), ctx.constant(op, 2)
    out_shape = _shape(ctx.graph.tensors[op.outputs[0]])
    mode = "same" if padding == 1 else "valid"
    return _transpose_conv_layer(ctx, op, x, kernel, bias, (stride_h, stride_w), mode, out_shape)


def _pool(kind: type) -> Callable:
    def convert(ctx, op, options):
        x = ctx.map_value(op)
        layer = kind(
            (options.filterHeight, options.filterWidth),
            strides=(options.strideH, options.strideW),
            padding=_padding(ctx, op, options),
            name=ctx.name(op.outputs[0]),
        )
        return _fused(ctx, op, layer(x), options)

    return convert


def _mean(ctx, op, options):
    x = ctx.map_value(op)
    axes = sorted(int(a) % 4 for a in np.ravel(ctx.constant(op, 1)))
    if axes != [1, 2]:
        raise ctx.refuse(op, f"MEAN over axes {axes}: only the spatial mean is imported")
    keepdims = bool(getattr(options, "keepDims", False))
    return L.GlobalAveragePooling2D(keepdims=keepdims, name=ctx.name(op.outputs[0]))(x)


def _channel_constant(ctx, op, constant: np.ndarray, x) -> np.ndarray | float:
    values = np.asarray(constant, np.float32)
    if values.size == 1:
        return float(values.reshape(()))
    channels = int(x.shape[-1])
    if values.size == channels and values.shape[-1] == channels:
        return values.reshape(channels)
    raise ctx.refuse(op, f"a constant of shape {list(values.shape)}: only scalars and "
                         f"per-channel constants are imported")  # fmt: skip


def _arithmetic(kind: str) -> Callable:
    merge = {"ADD": L.Add, "SUB": L.Subtract, "MUL": L.Multiply}

    def convert(ctx, op, options):
        a, b = op.inputs[0], op.inputs[1]
        name = ctx.name(op.outputs[0])
        if a in ctx.values and b in ctx.values:
            if kind not in merge:
                raise ctx.refuse(op, "division of two tensors is not imported")
            x, y = ctx.values[a], ctx.values[b]
            if len(x.shape) != len(y.shape):
                raise ctx.refuse(op, "an operation between tensors of different ranks")
            return _fused(ctx, op, merge[kind](name=name)([x, y]), options)
        first = a in ctx.values
        x = ctx.value(op, 0 if first else 1)
        c = _channel_constant(ctx, op, ctx.constant(op, 1 if first else 0), x)
        layer = constant_rescaling(kind.lower(), c, first, name)
        if layer is None:
            raise ctx.refuse(op, "a constant divided by a tensor is not imported")
        return _fused(ctx, op, layer(x), options)

    return convert


def _resize(interpolation: str) -> Callable:
    def convert(ctx, op, options):
        x = ctx.map_value(op)
        height, width = (int(v) for v in np.ravel(ctx.constant(op, 1)))
        if options.alignCorners and options.halfPixelCenters:
            raise ctx.refuse(op, "align_corners with half_pixel_centers is not imported")
        if options.alignCorners:
            coordinates = "align_corners"
        elif options.halfPixelCenters:
            coordinates = "half_pixel"
        else:
            coordinates = "asymmetric"
        if interpolation == "nearest" and coordinates == "half_pixel":
            # TensorFlow's half-pixel nearest samples floor((x + 0.5) * in / out): the floor of
            # x * in / out, asymmetric's, wherever out is a whole multiple of in (UpSampling2D).
            size = [int(d) for d in x.shape[1:3]]
            if height % size[0] or width % size[1]:
                raise ctx.refuse(op, "half-pixel nearest resizing by a fractional factor")
            coordinates = "asymmetric"
        elif interpolation == "nearest" and coordinates != "asymmetric":
            raise ctx.refuse(op, f"nearest resizing with {coordinates} is not imported")
        layer = Resize2D((height, width), interpolation, coordinates, name=ctx.name(op.outputs[0]))
        return layer(x)

    return convert


def _strided_slice(ctx, op, options):
    """A crop of a map's height and width (Keras' Cropping2D, as the converter writes it)."""
    x = ctx.map_value(op)
    begin, end, strides = (ctx.constant(op, i).astype(np.int64) for i in (1, 2, 3))
    masks = options.ellipsisMask or options.newAxisMask or options.shrinkAxisMask
    if masks or (strides != 1).any():
        raise ctx.refuse(op, "only a unit-stride crop of height and width is imported")
    size = [1 if d is None else int(d) for d in x.shape]
    start = [0 if options.beginMask >> a & 1 else int(begin[a]) % size[a] for a in range(4)]
    stop = [size[a] if options.endMask >> a & 1 else int(end[a]) for a in range(4)]
    stop = [s + size[a] if s < 0 else min(s, size[a]) for a, s in enumerate(stop)]
    if start[0] or start[3] or stop[0] != size[0] or stop[3] != size[3]:
        raise ctx.refuse(op, "a slice of the batch or the channels is not imported")
    cropping = ((start[1], size[1] - stop[1]), (start[2], size[2] - stop[2]))
    return L.Cropping2D(cropping, name=ctx.name(op.outputs[0]))(x)


def _concat(ctx, op, options):
    tensors = [ctx.value(op, i) for i in range(len(op.inputs))]
    rank = len(tensors[0].shape)
    axis = options.axis % rank
    if axis == 0:
        raise ctx.refuse(op, "a concatenation over the batch")
    layer = L.Concatenate(axis=axis, name=ctx.name(op.outputs[0]))
    return _fused(ctx, op, layer(tensors), options)


def _pad(ctx, op, options):
    x = ctx.map_value(op)
    pads = ctx.constant(op, 1).astype(np.int64)
    value = 0.0
    if len(op.inputs) > 2 and op.inputs[2] >= 0:
        value = float(np.ravel(ctx.constant(op, 2))[0])
    if pads.shape != (4, 2) or pads[0].any() or pads[3].any():
        raise ctx.refuse(op, f"paddings {pads.tolist()}: only height and width are padded")
    padding = (tuple(pads[1]), tuple(pads[2]))
    name = ctx.name(op.outputs[0])
    if value == 0.0:
        return L.ZeroPadding2D(padding, name=name)(x)
    return ConstantPadding2D(padding, value, name=name)(x)


def _activation(make: Callable) -> Callable:
    def convert(ctx, op, options):
        return make(ctx.name(op.outputs[0]), options)(ctx.value(op))

    return convert


def _prelu(ctx, op, options):
    x = ctx.map_value(op)
    alpha = np.asarray(ctx.constant(op, 1), np.float32)
    channels = int(x.shape[-1])
    layer = L.PReLU(shared_axes=[1, 2], name=ctx.name(op.outputs[0]))
    output = layer(x)
    layer.set_weights([np.broadcast_to(alpha.reshape(-1)[-channels:], (1, 1, channels))])
    return output


def _softmax(ctx, op, options):
    if getattr(options, "beta", 1.0) != 1.0:
        raise ctx.refuse(op, f"softmax with beta={options.beta} is not imported")
    return L.Softmax(axis=-1, name=ctx.name(op.outputs[0]))(ctx.value(op))


def _reshape(ctx, op, options):
    x = ctx.value(op)
    target = _shape(ctx.graph.tensors[op.outputs[0]])
    have = [1 if d is None else int(d) for d in x.shape]
    if have == target:
        return x
    if len(have) == 4 and have[1:3] == [1, 1] and target == [have[0], have[3]]:
        return L.Flatten(name=ctx.name(op.outputs[0]))(x)
    if len(have) == 2 and target == [have[0], 1, 1, have[1]]:
        return L.Reshape((1, 1, have[1]), name=ctx.name(op.outputs[0]))(x)
    raise ctx.refuse(op, f"RESHAPE {have} -> {target} is not imported")


def _fully_connected(ctx, op, options):
    x = ctx.value(op)
    if len(x.shape) != 2:
        raise ctx.refuse(op, "only FULLY_CONNECTED on a [N, K] tensor is imported")
    weight = ctx.constant(op, 1).astype(np.float32)  # [units, K]
    bias = ctx.optional_constant(op, 2)
    layer = L.Dense(weight.shape[0], use_bias=bias is not None, name=ctx.name(op.outputs[0]))
    output = layer(x)
    layer.set_weights([weight.T] + ([bias.astype(np.float32)] if bias is not None else []))
    return _fused(ctx, op, output, options)


OPS: dict[str, Callable] = {
    "CONV_2D": _conv,
    "DEPTHWISE_CONV_2D": _depthwise,
    "TRANSPOSE_CONV": _transpose_conv,
    TRANSPOSE_CONV_BIAS: _transpose_conv_bias,
    "AVERAGE_POOL_2D": _pool(L.AveragePooling2D),
    "MAX_POOL_2D": _pool(L.MaxPooling2D),
    "MEAN": _mean,
    "ADD": _arithmetic("ADD"),
    "SUB": _arithmetic("SUB"),
    "MUL": _arithmetic("MUL"),
    "DIV": _arithmetic("DIV"),
    "RESIZE_BILINEAR": _resize("bilinear"),
    "RESIZE_NEAREST_NEIGHBOR": _resize("nearest"),
    "CONCATENATION": _concat,
    "STRIDED_SLICE": _strided_slice,
    "SPACE_TO_BATCH_ND": _space_to_batch,
    "BATCH_TO_SPACE_ND": _batch_to_space,
    "PAD": _pad,
    "PADV2": _pad,
    "RELU": _activation(lambda name, o: L.ReLU(name=name)),
    "RELU6": _activation(lambda name, o: L.ReLU(max_value=6.0, name=name)),
    "LEAKY_RELU": _activation(lambda name, o: L.LeakyReLU(negative_slope=o.alpha, name=name)),
    "PRELU": _prelu,
    "LOGISTIC": _activation(lambda name, o: L.Activation("sigmoid", name=name)),
    "TANH": _activation(lambda name, o: L.Activation("tanh", name=name)),
    "HARD_SWISH": _activation(lambda name, o: L.Activation("hard_silu", name=name)),
    "SOFTMAX": _softmax,
    "RESHAPE": _reshape,
    "FULLY_CONNECTED": _fully_connected,
}


def _fold(ctx, op, kind: str) -> np.ndarray | None:
    """The output of `op` when it computes on constants and static shapes (a transposed
    convolution's output shape, computed from its input's SHAPE), else None."""
    inputs = [i for i in (op.inputs if op.inputs is not None else []) if i >= 0]
    if kind == "SHAPE" and inputs and inputs[0] in ctx.values:
        shape = [1 if d is None else int(d) for d in ctx.values[inputs[0]].shape]
        return np.array(shape, np.int32)
    if not inputs or any(i not in ctx.constants for i in inputs):
        return None
    x = [ctx.constants[i] for i in inputs]
    options = op.builtinOptions
    if kind == "PACK":
        return np.stack(x, axis=options.axis)
    if kind == "CONCATENATION":
        return np.concatenate(x, axis=options.axis)
    if kind == "STRIDED_SLICE" and x[0].ndim == 1:
        masks = (options.beginMask, options.endMask, options.ellipsisMask, options.newAxisMask)
        if masks[2] or masks[3]:
            return None
        start = None if masks[0] & 1 else int(x[1][0])
        stop = None if masks[1] & 1 else int(x[2][0])
        sliced = x[0][slice(start, stop, int(x[3][0]))]
        return sliced[0] if options.shrinkAxisMask & 1 else sliced
    arithmetic = {"ADD": np.add, "SUB": np.subtract, "MUL": np.multiply}
    if kind in arithmetic and getattr(options, "fusedActivationFunction", 0) == 0:
        return arithmetic[kind](x[0], x[1]).astype(np.result_type(x[0], x[1]))
    if kind == "CAST":
        dtype = _DTYPES.get(ctx.graph.tensors[op.outputs[0]].type)
        return None if dtype is None else x[0].astype(dtype)
    return None


def _dequantize(ctx, op) -> np.ndarray | None:
    """A DEQUANTIZE of a constant, folded as the runtime computes it; None otherwise."""
    index = op.inputs[0]
    if index not in ctx.constants:
        return None
    tensor = ctx.graph.tensors[index]
    values = ctx.constants[index]
    if tensor.type == _FLOAT16:
        return values.astype(np.float32)
    q = tensor.quantization
    if q is None or q.scale is None or not len(q.scale):
        raise ctx.refuse(op, "a quantised constant without a scale")
    shape = [1] * values.ndim
    if len(q.scale) > 1:
        shape[q.quantizedDimension] = len(q.scale)
    scale = np.asarray(q.scale, np.float32).reshape(shape)
    zero = np.asarray(q.zeroPoint if q.zeroPoint is not None else [0], np.float32).reshape(
        shape if len(q.scale) > 1 else [1] * values.ndim
    )
    return ((values.astype(np.float32) - zero) * scale).astype(np.float32)


# --- Reading, building and checking ----------------------------------------------------------


def read_tflite(path: str) -> Any:
    """The TFLite model at `path` as the schema's object tree (`ModelT`)."""
    from ai_edge_litert import schema_py_generated as schema

    if not os.path.isfile(path):
        raise TfliteImportError(f"{path}: no such TFLite file")
    with open(path, "rb") as f:
        content = f.read()
    if len(content) < 8 or content[4:8] != b"TFL3":
        raise TfliteImportError(f"{path}: not a TFLite file (no TFL3 identifier)")
    try:
        model = schema.ModelT.InitFromPackedBuf(content, 0)
    except Exception as e:  # the flatbuffer reader's errors on a corrupt file
        raise TfliteImportError(f"{path}: not a readable TFLite file ({type(e).__name__})") from e
    if not model.subgraphs:
        raise TfliteImportError(f"{path}: the model has no graph")
    return model


def _quantised(tensor) -> bool:
    q = tensor.quantization
    return q is not None and q.scale is not None and len(q.scale) > 0


def build_keras(model: Any, path: str) -> tuple[keras.Model, dict[str, Any]]:
    """The Keras model of the TFLite `model` (from `path`, named in errors), unchecked, and its
    Keras tensors by TFLite tensor name."""
    try:
        ctx = _Context(path, model)
    except TfliteImportError:
        raise
    except Exception as e:  # a corrupt table the schema reader let through
        raise TfliteImportError(f"{path}: not a readable TFLite file ({one_line(e)})") from e
    graph = ctx.graph
    if len(model.subgraphs) > 1:
        raise ctx.refuse(None, f"{len(model.subgraphs)} subgraphs; one is imported")
    inputs = list(graph.inputs if graph.inputs is not None else [])
    if len(inputs) != 1:
        raise ctx.refuse(None, f"{len(inputs)} inputs; only one image input is imported")
    tensor = graph.tensors[inputs[0]]
    shape = _shape(tensor)
    if len(shape) != 4 or min(shape[1:]) <= 0:
        raise ctx.refuse(None, f"input {ctx.tensor_name(inputs[0])!r} of shape {shape} "
                               f"is not an image")  # fmt: skip
    if tensor.type != _FLOAT32 or _quantised(tensor):
        raise ctx.refuse(
            None,
            f"input {ctx.tensor_name(inputs[0])!r} is quantised; only float models (float16 "
            f"or int8 weights behind a DEQUANTIZE at most) are imported",
        )
    image = keras.Input(tuple(shape[1:]), name=ctx.name(inputs[0]))
    ctx.values[inputs[0]] = image
    for op in graph.operators if graph.operators is not None else []:
        kind = ctx.op_names[op.opcodeIndex] if op.opcodeIndex < len(ctx.op_names) else "?"
        if op.outputs is None or not len(op.outputs):
            raise ctx.refuse(None, f"a {kind} operator has no output")
        if kind == "DEQUANTIZE":
            folded = _dequantize(ctx, op)
            if folded is None:
                raise ctx.refuse(op, "dequantises an activation: quantised models are refused")
            ctx.constants[op.outputs[0]] = folded
            ctx.dequantised.add(op.outputs[0])
            continue
        folded = _fold(ctx, op, kind)
        if folded is not None:
            ctx.constants[op.outputs[0]] = np.asarray(folded)
            continue
        if kind == "QUANTIZE":
            raise ctx.refuse(op, "quantises its activations: quantised models are refused")
        for index in op.inputs if op.inputs is not None else []:
            known = ctx.constants.keys() | ctx.values.keys() | ctx.space_to_batch.keys()
            if index >= 0 and index not in known and index not in ctx.batch_to_space:
                raise ctx.refuse(op, f"input {ctx.tensor_name(index)!r} is made by no operator")
            if index >= 0 and index in ctx.values and _quantised(graph.tensors[index]):
                raise ctx.refuse(op, "a quantised activation: quantised models are refused")
        convert = OPS.get(kind)
        if convert is None:
            custom = ctx.model.operatorCodes[op.opcodeIndex].customCode
            what = "custom op" if custom else "op"
            raise ctx.refuse(op, f"no importer for this {what} (docs/importers.md lists them)")
        try:
            output = convert(ctx, op, op.builtinOptions)
        except TfliteImportError:
            raise
        except Exception as e:  # an option or shape the converter did not foresee
            raise ctx.refuse(op, f"cannot be imported ({one_line(e)})") from e
        if output is not None and op.outputs[0] not in ctx.batch_to_space:
            ctx.values[op.outputs[0]] = output
    outputs = []
    for index in graph.outputs if graph.outputs is not None else []:
        if index not in ctx.values:
            raise ctx.refuse(None, f"output {ctx.tensor_name(index)!r} is a constant")
        outputs.append(_named(ctx, ctx.values[index], index))
    network = keras.Model(image, outputs if len(outputs) > 1 else outputs[0], name="tflite_import")
    return network, {ctx.tensor_name(i): t for i, t in ctx.values.items()}


def _named(ctx, tensor, index: int):
    """The output tensor, its layer named after the TFLite output."""
    wanted = re.sub(r"[^A-Za-z0-9_.-]", "_", ctx.tensor_name(index))
    layer = getattr(tensor, "_keras_history", None)
    if layer is not None and getattr(layer.operation, "name", None) == wanted:
        return tensor
    return L.Identity(name=ctx.name(index))(tensor)


def _interpreter(content: bytes, every_tensor: bool):
    """LiteRT's interpreter of `content`, its tensors allocated; RuntimeError or ValueError
    where LiteRT cannot read or prepare it. `every_tensor`: built-in kernels only, so that
    every intermediate tensor is kept (no delegate runs a custom op then)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    options: dict[str, Any] = {}
    if every_tensor:
        options = {
            "experimental_op_resolver_type": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
            "experimental_preserve_all_tensors": True,
        }
    interpreter = Interpreter(model_content=content, num_threads=1, **options)
    interpreter.allocate_tensors()
    return interpreter


def compare(
    path: str,
    network: keras.Model,
    tolerance: float = TOLERANCE,
    values: dict[str, Any] | None = None,
) -> float:
    """The largest difference between LiteRT and `network` on a probe input, relative to each
    tensor's range: over every tensor of `values` ({TFLite name: Keras tensor}) where LiteRT's
    built-in kernels run the model, else over the outputs. TfliteImportError above
    `tolerance`."""
    import warnings

    with open(path, "rb") as f:
        content = f.read()
    x = probe(network.inputs[0].shape[1:]).reshape((1, *network.inputs[0].shape[1:]))
    expected: dict[str, np.ndarray] = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # preserve_all_tensors' "for debugging" warning
            interpreter = _interpreter(content, every_tensor=bool(values))
    except (RuntimeError, ValueError):  # a custom op only a delegate runs: outputs only
        values = None
        try:
            interpreter = _interpreter(content, every_tensor=False)
        except (RuntimeError, ValueError) as e:
            message = str(e).splitlines()[0] if str(e) else ""
            raise TfliteImportError(
                f"{path}: LiteRT cannot run it, so the import cannot be checked ({message})"
            ) from e
    try:
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
        interpreter.invoke()
    except (RuntimeError, ValueError) as e:
        message = str(e).splitlines()[0] if str(e) else ""
        raise TfliteImportError(
            f"{path}: LiteRT cannot run it, so the import cannot be checked ({message})"
        ) from e
    by_name = {d["name"]: d["index"] for d in interpreter.get_tensor_details()}
    if values:  # in graph order, so that a refusal names the first tensor that differs
        names = [n for n in values if n in by_name]
        inspected = keras.Model(network.inputs[0], [values[n] for n in names])
    else:
        names = [d["name"] for d in interpreter.get_output_details()]
        inspected = network
    for name in names:
        expected[name] = interpreter.get_tensor(by_name[name])
    got = inspected(x)
    got = list(got) if isinstance(got, (list, tuple)) else [got]
    worst, first = 0.0, None
    for name, have in zip(names, got, strict=True):
        want, have = expected[name], np.asarray(have)
        if have.shape != want.shape:
            raise TfliteImportError(
                f"{path}: tensor {name!r} has shape {list(have.shape)} here and "
                f"{list(want.shape)} in LiteRT; refused"
            )
        difference = relative_difference(have, want)
        if difference > tolerance and first is None:
            first = name
        worst = max(worst, difference)
    if first is not None or not worst <= tolerance:
        raise TfliteImportError(
            f"{path}: the import differs from LiteRT by {worst:.2e} of a tensor's range at "
            f"tensor {first!r} (tolerance {tolerance:.0e}); refused"
        )
    return worst


def import_tflite(path: str | os.PathLike, *, tolerance: float = TOLERANCE) -> keras.Model:
    """The TFLite file at `path` as a Keras functional model with [1, H, W, C] float input,
    checked against LiteRT (`compare`)."""
    path = os.fspath(path)
    network, values = build_keras(read_tflite(path), path)
    compare(path, network, tolerance, values)
    return network


__all__: Sequence[str] = ("TfliteImportError", "build_keras", "compare", "import_tflite")
