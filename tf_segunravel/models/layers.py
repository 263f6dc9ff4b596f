"""Layers that reproduce Caffe's behaviour where Keras' built-ins differ, a dilated convolution
that runs as one op where TensorFlow can, and a dropout whose masks do not depend on how
training is distributed.

Every layer is a registered Keras serialisable, so a model that contains them saves and
loads as `.keras` without `custom_objects`.
"""

import concurrent.futures
import contextlib
import threading
import typing
import zlib
from collections.abc import Iterator

import keras
import tensorflow as tf

# The ImageNet mean that the Caffe VGG-16 and DeepLab weights were trained with, in BGR order.
CAFFE_MEAN_BGR = (104.008, 116.669, 122.675)


@keras.saving.register_keras_serializable(package="tf_segunravel")
class CaffePreprocess(keras.layers.Layer):
    """RGB pixels in 0..255 -> BGR minus the ImageNet mean, the input Caffe's VGG-16 expects.

    Living inside the model means training, unravel and the exported SavedModel all feed plain
    RGB pixels; nobody has to remember the colour order or the mean.
    """

    def __init__(
        self, mean_bgr: typing.Sequence[float] = CAFFE_MEAN_BGR, **kwargs: typing.Any
    ) -> None:
        super().__init__(**kwargs)
        self.mean_bgr = tuple(float(m) for m in mean_bgr)
        if len(self.mean_bgr) != 3:
            raise ValueError(f"mean_bgr must have 3 values, got {len(self.mean_bgr)}")

    def call(self, images: tf.Tensor) -> tf.Tensor:
        images = tf.cast(images, self.compute_dtype)
        bgr = tf.reverse(images, axis=[-1])
        return bgr - tf.constant(self.mean_bgr, dtype=self.compute_dtype)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "mean_bgr": list(self.mean_bgr)}


def caffe_pool_output_size(
    size: int | tf.Tensor, pool_size: int, stride: int, pad: int
) -> int | tf.Tensor:
    """Caffe's pooled size: ceil mode, minus a last window that would start in the padding.

    Works on Python ints and on scalar tensors (dynamic image sizes).
    """
    if isinstance(size, int):
        out = -(-(size + 2 * pad - pool_size) // stride) + 1
        if (out - 1) * stride >= size + pad:
            out -= 1
        return out
    out = (size + 2 * pad - pool_size + stride - 1) // stride + 1
    return out - tf.cast((out - 1) * stride >= size + pad, out.dtype)


@keras.saving.register_keras_serializable(package="tf_segunravel")
class CaffePooling2D(keras.layers.Layer):
    """Max or average pooling with Caffe's output size and border rules.

    Keras' pooling layers cannot express Caffe's: explicit symmetric padding with ceil-mode
    output size (an even 320-pixel input pools to 161 in Caffe, 160 in Keras 'same'), max
    pooling that never picks a padded tap, and average pooling whose divisor counts the padding
    (`pool_size` x `pool_size` at the border too) but not the extra ceil-mode overhang. The
    pretrained DeepLab weights were trained with exactly this arithmetic.
    """

    def __init__(
        self,
        mode: str = "max",
        pool_size: int = 3,
        strides: int = 1,
        padding: int = 1,
        **kwargs: typing.Any,
    ) -> None:
        super().__init__(**kwargs)
        if mode not in ("max", "avg"):
            raise ValueError(f"mode must be 'max' or 'avg', got {mode!r}")
        if not 0 <= padding < pool_size:
            raise ValueError(f"padding must be in [0, pool_size), got {padding}")
        self.mode = mode
        self.pool_size = int(pool_size)
        self.strides = int(strides)
        self.padding = int(padding)

    def output_size(self, size: int | tf.Tensor) -> int | tf.Tensor:
        """Pooled length of a spatial axis of length `size` (int or scalar tensor)."""
        return caffe_pool_output_size(size, self.pool_size, self.strides, self.padding)

    def _spatial_sizes(self, inputs):
        static = inputs.shape[1:3]
        dynamic = tf.shape(inputs)[1:3]
        return [static[i] if static[i] is not None else dynamic[i] for i in range(2)]

    def _divisor(self, size, out):
        """Per output index along one axis: window length clipped to [-pad, size + pad)."""
        start = tf.range(out) * self.strides - self.padding
        end = tf.minimum(start + self.pool_size, size + self.padding)
        return end - start

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        k, s, p = self.pool_size, self.strides, self.padding
        height, width = self._spatial_sizes(inputs)
        out_h, out_w = self.output_size(height), self.output_size(width)
        extra_h = (out_h - 1) * s + k - height - p
        extra_w = (out_w - 1) * s + k - width - p
        paddings = [[0, 0], [p, extra_h], [p, extra_w], [0, 0]]
        if self.mode == "max":
            lowest = inputs.dtype.min
            padded = tf.pad(inputs, paddings, constant_values=lowest)
            return tf.nn.max_pool2d(padded, k, s, "VALID")
        padded = tf.pad(inputs, paddings)
        window_sum = tf.nn.avg_pool2d(padded, k, s, "VALID") * float(k * k)
        divisor = self._divisor(height, out_h)[:, None] * self._divisor(width, out_w)[None, :]
        return window_sum / tf.cast(divisor, inputs.dtype)[None, :, :, None]

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        batch, height, width, channels = input_shape
        height = None if height is None else self.output_size(height)
        width = None if width is None else self.output_size(width)
        return (batch, height, width, channels)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "mode": self.mode,
            "pool_size": self.pool_size,
            "strides": self.strides,
            "padding": self.padding,
        }


# The per-example keys of the batch being trained, per thread: `tf.distribute` runs each
# local replica's step in a thread of its own.
_example_keys = threading.local()


# (dtype, device) -> whether TensorFlow's own dilated Conv2D (forward and both gradients) runs
# there and agrees with Keras' convolution (`_direct_dilation_works`).
_DIRECT_DILATION: dict[tuple[str, str], bool] = {}


def _direct_dilation_works(dtype: str) -> bool:
    """Whether `tf.nn.conv2d(..., dilations=d)` and its gradients run for `dtype` on this
    process's default device and match Keras' convolution, tried once on a small input.

    oneDNN's kernels (TensorFlow's default on x86 CPUs) and GPUs run dilated convolutions and
    their gradients directly; TensorFlow's own CPU kernels refuse the input gradient ("Current
    CPU implementations do not yet support dilation rates larger than 1"), for example under
    TF_ENABLE_ONEDNN_OPTS=0, so there the layer keeps Keras' space-to-batch form. The two
    must agree on the probe, or the direct op is not used. The probe runs eagerly in a thread
    of its own: the layer is usually called while a `tf.function` is traced, where tapes are
    paused (`tf.init_scope`) and a failing op would only fail later, at run time.
    """
    device = tf.config.list_logical_devices()[-1].device_type
    key = (dtype, device)
    if key not in _DIRECT_DILATION:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            _DIRECT_DILATION[key] = pool.submit(_probe_direct_dilation, dtype).result()
    return _DIRECT_DILATION[key]


def _probe_direct_dilation(dtype: str) -> bool:
    values = tf.range(2 * 9 * 9 * 3, dtype=tf.float32) % 17 / 17
    x = tf.cast(tf.reshape(values, [2, 9, 9, 3]), dtype)
    kernel = tf.cast(tf.reshape(values[: 3 * 3 * 3 * 2], [3, 3, 3, 2]) - 0.5, dtype)

    def outputs(convolve):
        with tf.GradientTape() as tape:
            tape.watch([x, kernel])
            y = convolve(x, kernel)
            loss = tf.reduce_sum(tf.cast(y, tf.float32) ** 2)
        return [y, *tape.gradient(loss, [x, kernel])]

    try:
        direct = outputs(lambda x, k: tf.nn.conv2d(x, k, 1, "SAME", dilations=4))
    except (tf.errors.UnimplementedError, tf.errors.InvalidArgumentError, tf.errors.NotFoundError):
        return False
    reference = outputs(lambda x, k: keras.ops.conv(x, k, padding="same", dilation_rate=4))
    tolerance = 1e-2 if tf.as_dtype(dtype).size < 4 else 1e-5
    for a, b in zip(direct, reference, strict=True):
        a, b = tf.cast(a, tf.float32), tf.cast(b, tf.float32)
        if float(tf.reduce_max(tf.abs(a - b))) > tolerance * (1 + float(tf.reduce_max(tf.abs(b)))):
            return False
    return True


@keras.saving.register_keras_serializable(package="tf_segunravel")
class AtrousConv2D(keras.layers.Conv2D):
    """Keras' `Conv2D` (same weights, config and results) whose dilated convolution runs as
    TensorFlow's one `Conv2D` op with `dilations`, where that op and its gradients run.

    Keras convolves with `tf.nn.convolution`, which turns every dilated convolution into
    space-to-batch, a convolution of the pieces, and batch-to-space. On a small feature map
    with a large dilation that is slow: DeepLab-LargeFOV's fc6 (dilation 12) on the 13 x 13
    map of a 97-pixel crop becomes 144 pieces of 4 x 4 per image, mostly padding, and took
    a quarter of the main job's train step (docs/benchmarks.md). oneDNN and GPUs convolve
    with dilations directly; elsewhere (`_direct_dilation_works`) the layer falls back to
    Keras' form. Undilated, strided, grouped or channels-first convolutions are Keras' own.
    """

    def convolution_op(self, inputs: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
        direct = (
            max(self.dilation_rate) > 1
            and tuple(self.strides) == (1, 1)
            and self.groups == 1
            and self.data_format == "channels_last"
            and _direct_dilation_works(self.compute_dtype)
        )
        if not direct:
            return super().convolution_op(inputs, kernel)
        return tf.nn.conv2d(
            inputs,
            kernel,
            strides=1,
            padding=self.padding.upper(),
            dilations=list(self.dilation_rate),
        )


@contextlib.contextmanager
def example_keys(keys: tf.Tensor | None) -> Iterator[None]:
    """Within this block, `KeyedDropout` layers draw each example's mask from its key.

    `keys` is int64 [B, 2], one (seed, global example index) row per example of the batch
    (the replica's share of it under `tf.distribute`); None leaves Keras' own dropout."""
    previous = getattr(_example_keys, "value", None)
    _example_keys.value = keys
    try:
        yield
    finally:
        _example_keys.value = previous


@keras.saving.register_keras_serializable(package="tf_segunravel")
class KeyedDropout(keras.layers.Dropout):
    """Dropout whose mask for an example is a function of (seed, the example's index in the
    training stream, the layer), inside `example_keys`; Keras' `Dropout` outside it.

    Keras draws dropout masks from a seed generator that advances per call, per replica: a
    2-worker cluster, one process with the same global batch and a resumed run each drop
    other units. Keyed on the example, as the input pipeline already keys its augmentation,
    every one of them drops the same units. Written by hand because Keras' dropout takes one
    seed per call, not one per example.
    """

    def call(self, inputs: tf.Tensor, training: bool = False) -> tf.Tensor:
        keys = getattr(_example_keys, "value", None)
        if not training or self.rate == 0 or keys is None:
            return super().call(inputs, training=training)
        salt = zlib.crc32(self.name.encode())  # each layer its own masks
        shape = tf.shape(inputs)[1:]

        def keep(key):
            seed = tf.random.experimental.stateless_fold_in(key, salt)
            return tf.random.stateless_uniform(shape, seed) >= self.rate

        kept = tf.map_fn(keep, tf.cast(keys, tf.int64), fn_output_signature=tf.bool)
        scale = tf.cast(1.0 / (1.0 - self.rate), inputs.dtype)
        return tf.where(kept, inputs * scale, tf.zeros_like(inputs))
