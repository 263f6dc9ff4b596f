"""Where a model's score grid sits on the image, derived from its layers.

Per axis, a tensor's position i covers image pixel `scale * i + offset`: the centre of its
receptive field. The map starts as (1, 0) at the image and every layer composes its own:

- a window (convolution, pooling, depthwise and separable convolution) with stride s,
  effective kernel k = (kernel - 1) dilation + 1 and leading padding p puts output j over
  input j s - p + (k - 1) / 2;
- a transposed convolution inverts that: output j over input (j + p - (k - 1) / 2) / s;
- a resize from n to m positions (half-pixel centres) puts output j over input
  (j + 0.5) n / m - 0.5;
- zero padding by a shifts positions by -a, cropping by a by +a;
- a global pooling, Flatten or Dense output is one position over the centre of its input;
- per-element, per-channel and merging layers leave the map unchanged (a merge follows its
  first input; the others cover the same positions).

Paddings depend on the input size ('same' with stride 2 pads differently for odd and even
sizes), so the map is computed from the sizes of one recorded pass, with TensorFlow ops that
also run inside a SavedModel signature. DeepLab-LargeFOV's map is (8, 0) on both axes:
score i over pixel 8i, DeepLab's aligned-corner rule (tested).
"""

import keras
import tensorflow as tf

from tf_segunravel.models.layers import CaffePooling2D
from tf_segunravel.unravel import graph
from tf_segunravel.unravel.rules.base import pad_before, spatial_size

L = keras.layers


def _pair(value):
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _window(layer):
    """(kernel, stride, dilation, padding) per axis of a windowed layer, or None."""
    if isinstance(layer, CaffePooling2D):
        kernel, stride = _pair(layer.pool_size), _pair(layer.strides)
        return kernel, stride, (1, 1), ("caffe", layer.padding)
    if isinstance(layer, (L.Conv2D, L.DepthwiseConv2D, L.SeparableConv2D)) and not isinstance(
        layer, L.Conv2DTranspose
    ):
        return layer.kernel_size, layer.strides, layer.dilation_rate, layer.padding
    if isinstance(layer, (L.MaxPooling2D, L.AveragePooling2D)):
        return layer.pool_size, layer.strides, (1, 1), layer.padding
    return None


def keeps_map(layer):
    """Whether `layer` leaves the map unchanged (per-element, per-channel and merging layers:
    every layer `step_map` has no case for)."""
    return _window(layer) is None and not isinstance(layer, _MAPPING_LAYERS)


def step_map(layer, in_size, out_size, axis):
    """(a, b): this layer puts output position j over input position a j + b on `axis`
    (0: height, 1: width), given the two sizes (int32 scalars)."""
    in_size, out_size = tf.cast(in_size, tf.int32), tf.cast(out_size, tf.int32)
    window = _window(layer)
    if window is not None:
        kernel, stride, dilation, padding = window
        k, s, d = kernel[axis], stride[axis], dilation[axis]
        if isinstance(padding, tuple):  # CaffePooling2D: symmetric explicit padding
            before = tf.constant(float(padding[1]))
        else:
            before = tf.cast(pad_before(in_size, out_size, k, s, d, padding), tf.float32)
        centre = ((k - 1) * d) / 2.0
        return tf.constant(float(s)), centre - before
    if isinstance(layer, L.Conv2DTranspose):
        k, s, d = layer.kernel_size[axis], layer.strides[axis], layer.dilation_rate[axis]
        before = tf.cast(pad_before(out_size, in_size, k, s, d, layer.padding), tf.float32)
        centre = ((k - 1) * d) / 2.0
        return tf.constant(1.0 / s), (before - centre) / s
    if isinstance(layer, (L.UpSampling2D, L.Resizing)):
        ratio = tf.cast(in_size, tf.float32) / tf.cast(out_size, tf.float32)
        return ratio, 0.5 * ratio - 0.5
    if isinstance(layer, L.ZeroPadding2D):
        return tf.constant(1.0), -float(layer.padding[axis][0])
    if isinstance(layer, L.Cropping2D):
        return tf.constant(1.0), float(layer.cropping[axis][0])
    if isinstance(layer, (L.GlobalAveragePooling2D, L.GlobalMaxPooling2D, L.Flatten, L.Dense)):
        return _collapse(in_size, out_size)
    return tf.constant(1.0), tf.constant(0.0)


_MAPPING_LAYERS = (
    L.Conv2DTranspose,
    L.UpSampling2D,
    L.Resizing,
    L.ZeroPadding2D,
    L.Cropping2D,
    L.GlobalAveragePooling2D,
    L.GlobalMaxPooling2D,
    L.Flatten,
    L.Dense,
)


def _collapse(in_size, out_size):
    """A map of n positions reduced to one (global pooling) sits over their centre; a
    layer that keeps the size (Dense per position) keeps the map."""
    n = tf.cast(in_size, tf.float32)
    collapsed = tf.not_equal(in_size, out_size)
    return tf.where(collapsed, n, 1.0), tf.where(collapsed, (n - 1.0) / 2.0, 0.0)


def _spatial(value):
    """(height, width) of a map; a vector is one position."""
    if len(value.shape) == 4:
        return spatial_size(value)
    return tf.constant(1), tf.constant(1)


def score_geometry(steps, values, input_id, output_id):
    """float32 [2, 2]: rows (height, width), columns (scale, offset) of the map from the
    score grid to image pixels, from the recorded values of one pass."""
    maps = {input_id: ((tf.constant(1.0), tf.constant(0.0)), (tf.constant(1.0), tf.constant(0.0)))}
    for step in steps:
        if step.inputs[0] not in maps:
            continue
        source = maps[step.inputs[0]]
        if keeps_map(step.layer):  # no ops for the many layers that move nothing
            maps.update((output, source) for output in step.outputs)
            continue
        in_size = _spatial(values[step.inputs[0]])
        for output in step.outputs:
            out_size = _spatial(values[output])
            composed = []
            for axis in (0, 1):
                a, b = step_map(step.layer, in_size[axis], out_size[axis], axis)
                scale, offset = source[axis]
                composed.append((scale * a, offset + scale * tf.cast(b, tf.float32)))
            maps[output] = tuple(composed)
    (scale_y, offset_y), (scale_x, offset_x) = maps[output_id]
    return tf.stack([tf.stack([scale_y, offset_y]), tf.stack([scale_x, offset_x])])


class ScoreMap:
    """A model's scores together with where they sit on the image.

        scores, geometry = ScoreMap(model)(images)
        full = grids.scores_at_size(scores, height, width, geometry)

    One recorded pass (the same computation as `model(images, training=False)`) gives the
    scores and the sizes `score_geometry` needs.
    """

    def __init__(self, model):
        self.steps, self.input_id, outputs = graph.flatten_graph(model)
        if len(outputs) != 1:
            raise ValueError(f"a score map needs one output, got {len(outputs)}")
        self.output_id = outputs[0]

    @tf.autograph.experimental.do_not_convert  # static Python over the graph (see tracer)
    def __call__(self, images):
        values = graph.record(self.steps, self.input_id, tf.cast(images, tf.float32))
        scores = values[self.output_id]
        if len(scores.shape) == 2:  # a classifier: one position over the whole image
            scores = scores[:, None, None, :]
        return scores, score_geometry(self.steps, values, self.input_id, self.output_id)

    def at_image_size(self, images):
        """Scores [B, H, W, C] on the images' own pixels (`grids.scores_at_size`)."""
        from tf_segunravel.grids import scores_at_size

        scores, geometry = self(images)
        return scores_at_size(scores, tf.shape(images)[1], tf.shape(images)[2], geometry)
