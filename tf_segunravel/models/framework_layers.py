"""Layers with the exact arithmetic of other frameworks' ops where no Keras layer has it, for
the importers (`tf_segunravel/importers/`):

- `ConstantPadding2D`: padding with any constant (a max pooling's -inf border).
- `ExplicitPooling2D`: max or average pooling with explicit, possibly uneven padding,
  PyTorch's and ONNX's ceil mode, and an average that counts the padding or does not.
- `Resize2D`: nearest and bilinear resizing under ONNX's coordinate modes (half-pixel,
  PyTorch's half-pixel, aligned corners, asymmetric).

Keras' own layers differ where it matters: 'same' pooling puts the odd pixel of padding at
the end where PyTorch pads both sides, AveragePooling2D always leaves the padding out, and
Resizing knows half-pixel centres only. Each layer is a registered Keras serialisable, and the
unravel's layer table gives each its rule and geometry.
"""

import math
import typing

import keras
import tensorflow as tf

RESIZE_COORDINATES = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric")


def _pairs(padding) -> tuple[tuple[int, int], tuple[int, int]]:
    (top, bottom), (left, right) = padding
    return (int(top), int(bottom)), (int(left), int(right))


@keras.saving.register_keras_serializable(package="tf_segunravel")
class ConstantPadding2D(keras.layers.ZeroPadding2D):
    """ZeroPadding2D with another constant: `((top, bottom), (left, right))` rows and columns
    of `value`. A ZeroPadding2D subclass, so the unravel moves points through it as through
    zero padding."""

    def __init__(
        self,
        padding: typing.Sequence[typing.Sequence[int]] = ((0, 0), (0, 0)),
        value: float = 0.0,
        **kwargs: typing.Any,
    ) -> None:
        super().__init__(padding=_pairs(padding), **kwargs)
        self.value = float(value)

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        (top, bottom), (left, right) = self.padding
        paddings = [[0, 0], [top, bottom], [left, right], [0, 0]]
        value = tf.constant(self.value, inputs.dtype) if math.isfinite(self.value) else None
        if value is None:  # -inf: the lowest finite value pools the same and keeps gradients
            value = inputs.dtype.min if self.value < 0 else inputs.dtype.max
        return tf.pad(inputs, paddings, constant_values=value)

    def get_config(self) -> dict:
        return {**super().get_config(), "value": self.value}


def pooled_size(size: int, kernel: int, stride: int, before: int, after: int, ceil: bool) -> int:
    """ONNX's (and PyTorch's) pooled length; in ceil mode a last window that would start in
    the trailing padding is dropped."""
    span = size + before + after - kernel
    out = (-(-span // stride) if ceil else span // stride) + 1
    if ceil and (out - 1) * stride >= size + before:
        out -= 1
    return out


@keras.saving.register_keras_serializable(package="tf_segunravel")
class ExplicitPooling2D(keras.layers.Layer):
    """Max or average pooling of [B, H, W, C] with explicit padding
    `((top, bottom), (left, right))`, floor or ceil output size, and for the average a divisor
    that counts the padding (`count_include_pad`) or only the input's pixels. Max pooling
    never picks a padded tap. Spatial sizes must be static (the importers fix them)."""

    def __init__(
        self,
        mode: str = "max",
        pool_size: typing.Sequence[int] = (2, 2),
        strides: typing.Sequence[int] = (2, 2),
        padding: typing.Sequence[typing.Sequence[int]] = ((0, 0), (0, 0)),
        ceil_mode: bool = False,
        count_include_pad: bool = False,
        **kwargs: typing.Any,
    ) -> None:
        super().__init__(**kwargs)
        if mode not in ("max", "avg"):
            raise ValueError(f"mode must be 'max' or 'avg', got {mode!r}")
        self.mode = mode
        self.pool_size = tuple(int(k) for k in pool_size)
        self.strides = tuple(int(s) for s in strides)
        self.padding = _pairs(padding)
        self.ceil_mode = bool(ceil_mode)
        self.count_include_pad = bool(count_include_pad)

    def output_sizes(self, height: int, width: int) -> tuple[int, int]:
        return tuple(  # type: ignore[return-value]
            pooled_size(size, k, s, pad[0], pad[1], self.ceil_mode)
            for size, k, s, pad in zip(
                (height, width), self.pool_size, self.strides, self.padding, strict=True
            )
        )

    def _extents(self, height: int, width: int):
        """Per axis: (output size, padding after the input that the windows reach)."""
        out = self.output_sizes(height, width)
        reach = [
            (o - 1) * s + k - size - pad[0]
            for o, s, k, size, pad in zip(
                out, self.strides, self.pool_size, (height, width), self.padding, strict=True
            )
        ]
        return out, reach

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        height, width = inputs.shape[1], inputs.shape[2]
        if height is None or width is None:
            raise ValueError(f"{self.name}: needs a static spatial size, got {inputs.shape}")
        out, reach = self._extents(height, width)
        (top, _), (left, _) = self.padding
        # Pad to exactly what the windows read (ceil mode may read past the stated padding).
        paddings = [[0, 0], [top, max(reach[0], 0)], [left, max(reach[1], 0)], [0, 0]]
        kernel, strides = list(self.pool_size), list(self.strides)
        if self.mode == "max":
            padded = tf.pad(inputs, paddings, constant_values=inputs.dtype.min)
            pooled = tf.nn.max_pool2d(padded, kernel, strides, "VALID")
        else:
            padded = tf.pad(inputs, paddings)
            window_sum = tf.nn.avg_pool2d(padded, kernel, strides, "VALID") * float(
                kernel[0] * kernel[1]
            )
            divisor = self._divisor(0, height, out[0])[:, None] * self._divisor(1, width, out[1])
            pooled = window_sum / tf.constant(divisor, inputs.dtype)[None, :, :, None]
        return pooled[:, : out[0], : out[1]]

    def _divisor(self, axis: int, size: int, out: int):
        """Per output index along `axis`: the window's taps that the divisor counts. With
        count_include_pad, the stated padding counts but a ceil-mode overhang does not."""
        import numpy as np

        k, s = self.pool_size[axis], self.strides[axis]
        before, after = self.padding[axis]
        start = np.arange(out) * s - before
        end = start + k
        if self.count_include_pad:
            low, high = -before, size + after
        else:
            low, high = 0, size
        return (np.minimum(end, high) - np.maximum(start, low)).astype("float32")

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        batch, height, width, channels = input_shape
        if height is None or width is None:
            return (batch, None, None, channels)
        return (batch, *self.output_sizes(height, width), channels)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "mode": self.mode,
            "pool_size": list(self.pool_size),
            "strides": list(self.strides),
            "padding": [list(p) for p in self.padding],
            "ceil_mode": self.ceil_mode,
            "count_include_pad": self.count_include_pad,
        }


@keras.saving.register_keras_serializable(package="tf_segunravel")
class Resize2D(keras.layers.Layer):
    """Resizes [B, H, W, C] to `size` (height, width) by `interpolation` ("nearest" or
    "bilinear") under ONNX's `coordinates` mode, which says where an output pixel samples the
    input (x_out -> x_in):

    - half_pixel: (x_out + 0.5) / scale - 0.5 (tf.image.resize, Keras' Resizing);
    - pytorch_half_pixel: the same, but 0 where the output has one pixel;
    - align_corners: x_out (in - 1) / (out - 1), the first and last pixels aligned;
    - asymmetric: x_out / scale.

    Nearest takes the floor of the sampled position (PyTorch's `nearest`, ONNX's
    nearest_mode=floor). The scale is out / in (the importers pass sizes, not scales)."""

    def __init__(
        self,
        size: typing.Sequence[int] = (1, 1),
        interpolation: str = "bilinear",
        coordinates: str = "half_pixel",
        **kwargs: typing.Any,
    ) -> None:
        super().__init__(**kwargs)
        if interpolation not in ("nearest", "bilinear"):
            raise ValueError(f"interpolation must be nearest or bilinear, got {interpolation!r}")
        if coordinates not in RESIZE_COORDINATES:
            raise ValueError(
                f"coordinates must be one of {RESIZE_COORDINATES}, got {coordinates!r}"
            )
        self.size = tuple(int(v) for v in size)
        self.interpolation = interpolation
        self.coordinates = coordinates

    def source_positions(self, in_size: int, out_size: int) -> tf.Tensor:
        """float32 [out_size]: where each output pixel samples the input axis."""
        x = tf.range(out_size, dtype=tf.float32)
        if self.coordinates == "align_corners":
            step = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
            return x * step
        scale = out_size / in_size
        if self.coordinates == "asymmetric":
            return x / scale
        if self.coordinates == "pytorch_half_pixel" and out_size == 1:
            return tf.zeros([1], tf.float32)
        return (x + 0.5) / scale - 0.5

    def _taps(self, in_size: int, out_size: int):
        """Per output pixel: the two input taps and the second one's weight (bilinear), or
        one tap (nearest)."""
        position = self.source_positions(in_size, out_size)
        if self.interpolation == "nearest":
            return tf.clip_by_value(tf.cast(tf.floor(position), tf.int32), 0, in_size - 1)
        position = tf.clip_by_value(position, 0.0, float(in_size - 1))
        low = tf.cast(tf.floor(position), tf.int32)
        high = tf.minimum(low + 1, in_size - 1)
        return low, high, position - tf.cast(low, tf.float32)

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        height, width = inputs.shape[1], inputs.shape[2]
        if height is None or width is None:
            raise ValueError(f"{self.name}: needs a static spatial size, got {inputs.shape}")
        # Written out as gathers: tf.image.resize has no asymmetric or PyTorch half-pixel
        # mode, and this way every mode shares one arithmetic.
        if self.interpolation == "nearest":
            rows = tf.gather(inputs, self._taps(height, self.size[0]), axis=1)
            return tf.gather(rows, self._taps(width, self.size[1]), axis=2)
        y0, y1, wy = self._taps(height, self.size[0])
        x0, x1, wx = self._taps(width, self.size[1])
        dtype = inputs.dtype
        wy = tf.cast(wy, dtype)[None, :, None, None]
        wx = tf.cast(wx, dtype)[None, None, :, None]
        top, bottom = tf.gather(inputs, y0, axis=1), tf.gather(inputs, y1, axis=1)
        rows = top + (bottom - top) * wy
        left, right = tf.gather(rows, x0, axis=2), tf.gather(rows, x1, axis=2)
        return left + (right - left) * wx

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (input_shape[0], *self.size, input_shape[3])

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "size": list(self.size),
            "interpolation": self.interpolation,
            "coordinates": self.coordinates,
        }


@keras.saving.register_keras_serializable(package="tf_segunravel")
class PositionAttention(keras.layers.Layer):
    """Attention over the positions of a map, from three maps of one size: queries
    [B, H, W, Cq], keys [B, H, W, Cq] and values [B, H, W, C] (segmentation-models-pytorch's
    MAnet computes its PAB block so).

    With positions in row-major order, S = Q K^T is [HW, HW]; A is its softmax over every
    pair of the image at once (`joint_softmax`, MAnet's) or over each query's row; M = A V is
    [HW, C]. `channel_major`: the output is M's memory read as [C, H, W] (MAnet reshapes
    [N, HW, C] straight to [N, C, H, W], which mixes positions with channels); otherwise it
    is read as [H, W, C], each position's attended value."""

    def __init__(
        self, joint_softmax: bool = True, channel_major: bool = True, **kwargs: typing.Any
    ) -> None:
        super().__init__(**kwargs)
        self.joint_softmax = bool(joint_softmax)
        self.channel_major = bool(channel_major)

    def call(self, inputs: typing.Sequence[tf.Tensor]) -> tf.Tensor:
        queries, keys, values = inputs
        batch, height, width = tf.shape(values)[0], tf.shape(values)[1], tf.shape(values)[2]
        channels = values.shape[-1]
        positions = height * width
        q = tf.reshape(queries, [batch, positions, queries.shape[-1]])
        k = tf.reshape(keys, [batch, positions, keys.shape[-1]])
        v = tf.reshape(values, [batch, positions, channels])
        scores = tf.matmul(q, k, transpose_b=True)
        if self.joint_softmax:
            flat = tf.nn.softmax(tf.reshape(scores, [batch, -1]), axis=-1)
            attention = tf.reshape(flat, [batch, positions, positions])
        else:
            attention = tf.nn.softmax(scores, axis=-1)
        attended = tf.matmul(attention, v)  # [B, HW, C]
        if self.channel_major:
            return tf.transpose(
                tf.reshape(attended, [batch, channels, height, width]), [0, 2, 3, 1]
            )
        return tf.reshape(attended, [batch, height, width, channels])

    def compute_output_shape(self, input_shapes: typing.Sequence[tuple]) -> tuple:
        return tuple(input_shapes[2])

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "joint_softmax": self.joint_softmax,
            "channel_major": self.channel_major,
        }
