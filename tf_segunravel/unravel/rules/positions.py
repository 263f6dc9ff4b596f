"""How a layer maps positions: each layer kind's step map (docs/method.md, "Where scores sit").

A step map is called as `step_map(layer, in_size, out_size, axis)` with the two sizes of one
axis (0: height, 1: width) as int32 scalar tensors, and returns (a, b): the layer puts output
position j over input position a j + b. `score_geometry` composes them from the image to the
scores. Per kind:

- a window (convolution, pooling, depthwise and separable convolution) with stride s,
  effective kernel k = (kernel - 1) dilation + 1 and leading padding p puts output j over
  input j s - p + (k - 1) / 2;
- a transposed convolution inverts that: output j over input (j + p - (k - 1) / 2) / s;
- a resize from n to m positions (half-pixel centres) puts output j over input
  (j + 0.5) n / m - 0.5;
- zero padding by a shifts positions by -a, cropping by a by +a;
- a global pooling, Flatten or Dense output is one position over the centre of its input;
- per-element, per-channel and merging layers keep the map (`KEEPS_MAP`; a merge follows the
  input whose positions stayed finest on the way from the image, the first among equals:
  `geometry._finest_map`).

Paddings depend on the input size ('same' with stride 2 pads differently for odd and even
sizes), so the maps take the recorded sizes, and are TensorFlow ops that also run inside a
SavedModel signature.
"""

from collections.abc import Callable
from typing import TypeAlias

import tensorflow as tf

from tf_segunravel.unravel.rules.base import AnyLayer, Size, pad_before

# A step map's (a, b): output position j lies over input position a j + b.
StepResult: TypeAlias = tuple[tf.Tensor, tf.Tensor]

# A layer kind's geometry when the layer leaves every position where it is.
KEEPS_MAP = "keeps_map"


def _pair(value):
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def window_step(
    kernel: int, stride: int, dilation: int, padding: str | int, in_size: Size, out_size: Size
) -> StepResult:
    """(a, b) of a window layer on one axis; `padding` is 'valid', 'same' or a number of
    leading pixels (Caffe's explicit symmetric padding)."""
    if isinstance(padding, str):
        before = tf.cast(
            pad_before(tf.cast(in_size, tf.int32), tf.cast(out_size, tf.int32), kernel, stride,
                       dilation, padding),
            tf.float32,
        )  # fmt: skip
    else:
        before = tf.constant(float(padding))
    centre = ((kernel - 1) * dilation) / 2.0
    return tf.constant(float(stride)), centre - before


def window_geometry(
    kernel_size: int | tuple[int, int],
    strides: int | tuple[int, int] = 1,
    dilation_rate: int | tuple[int, int] = 1,
    padding: str | int | tuple[int, int] = "valid",
) -> Callable[..., StepResult]:
    """The step map of a layer that slides a window like a convolution: for registering a
    custom layer whose positions follow one (`register_rule(..., geometry=...)`)."""
    kernel, stride, dilation = _pair(kernel_size), _pair(strides), _pair(dilation_rate)
    padding = padding.lower() if isinstance(padding, str) else padding
    pads = padding if isinstance(padding, str) else _pair(padding)

    def step_map(layer, in_size, out_size, axis):
        pad = pads if isinstance(pads, str) else pads[axis]
        return window_step(kernel[axis], stride[axis], dilation[axis], pad, in_size, out_size)

    return step_map


def conv_window_map(layer: AnyLayer, in_size: Size, out_size: Size, axis: int) -> StepResult:
    """Conv2D, DepthwiseConv2D, SeparableConv2D."""
    return window_step(
        layer.kernel_size[axis],
        layer.strides[axis],
        layer.dilation_rate[axis],
        layer.padding,
        in_size,
        out_size,
    )


def pooling_map(layer: AnyLayer, in_size: Size, out_size: Size, axis: int) -> StepResult:
    """MaxPooling2D, AveragePooling2D, CaffePooling2D (explicit symmetric padding) and
    ExplicitPooling2D (explicit padding per side)."""
    padding = layer.padding
    if isinstance(padding, (tuple, list)) and isinstance(padding[0], (tuple, list)):
        padding = padding[axis][0]  # ((top, bottom), (left, right)): the leading pixels
    elif isinstance(padding, (tuple, list, int)):
        padding = _pair(padding)[axis]
    kernel, stride = _pair(layer.pool_size)[axis], _pair(layer.strides)[axis]
    return window_step(kernel, stride, 1, padding, in_size, out_size)


def transpose_map(layer: AnyLayer, in_size: Size, out_size: Size, axis: int) -> StepResult:
    """Conv2DTranspose: the inverse of the window map."""
    k, s, d = layer.kernel_size[axis], layer.strides[axis], layer.dilation_rate[axis]
    in_size, out_size = tf.cast(in_size, tf.int32), tf.cast(out_size, tf.int32)
    before = tf.cast(pad_before(out_size, in_size, k, s, d, layer.padding), tf.float32)
    centre = ((k - 1) * d) / 2.0
    return tf.constant(1.0 / s), (before - centre) / s


def resize_map(layer: AnyLayer, in_size: Size, out_size: Size, axis: int) -> StepResult:
    """UpSampling2D and Resizing (half-pixel centres)."""
    ratio = tf.cast(in_size, tf.float32) / tf.cast(out_size, tf.float32)
    return ratio, 0.5 * ratio - 0.5


def resize2d_map(layer: AnyLayer, in_size: Size, out_size: Size, axis: int) -> StepResult:
    """Resize2D, under its coordinate mode (output j samples input a j + b)."""
    in_size, out_size = tf.cast(in_size, tf.float32), tf.cast(out_size, tf.float32)
    if layer.coordinates == "align_corners":
        return (in_size - 1) / tf.maximum(out_size - 1, 1.0), tf.constant(0.0)
    ratio = in_size / out_size
    if layer.coordinates == "asymmetric":
        return ratio, tf.constant(0.0)
    return ratio, 0.5 * ratio - 0.5


def zero_padding_map(layer: AnyLayer, in_size: Size, out_size: Size, axis: int) -> StepResult:
    return tf.constant(1.0), tf.constant(-float(layer.padding[axis][0]))


def cropping_map(layer: AnyLayer, in_size: Size, out_size: Size, axis: int) -> StepResult:
    return tf.constant(1.0), tf.constant(float(layer.cropping[axis][0]))


def collapse_map(layer: AnyLayer, in_size: Size, out_size: Size, axis: int) -> StepResult:
    """Global pooling, Flatten, Dense: a map of n positions reduced to one sits over their
    centre; a layer that keeps the size (Dense per position) keeps the map."""
    in_size, out_size = tf.cast(in_size, tf.int32), tf.cast(out_size, tf.int32)
    n = tf.cast(in_size, tf.float32)
    collapsed = tf.not_equal(in_size, out_size)
    return tf.where(collapsed, n, 1.0), tf.where(collapsed, (n - 1.0) / 2.0, 0.0)
