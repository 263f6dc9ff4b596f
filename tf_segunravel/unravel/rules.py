"""The unravel transitions (docs/method.md section 2), one function per kind of layer.

A rule is called as `rule(layer, inputs, output, points, settings)`: `inputs` is the layer's
recorded input tensor (a list of them for multi-input layers), `output` its recorded output,
`points` the `Points` arriving at the output, `settings` the `FixationSettings`. It returns
one `Points` per input, or a `Moved` that also carries the per-point channel scores of a
layer that chooses channels (for the K analysis).

Each rule moves a batch of points from a layer's output to its input(s) in a handful of
vectorised TensorFlow ops: gather every point's input window at once, score, pick. A point is
(image b, seed class, y, x, channel, count); rank-2 tensors (Dense inputs) use y = x = 0.
Ties go to the lowest index (row-major taps, then channel order), as numpy.argmax does.
"""

import typing

import keras
import tensorflow as tf

from tf_segunravel.grids import first_argmax
from tf_segunravel.models.layers import CaffePooling2D, CaffePreprocess


class Points(typing.NamedTuple):
    """Parallel int tensors [N]; `count` is int64 (paths multiply when K > 1)."""

    b: tf.Tensor
    cls: tf.Tensor
    y: tf.Tensor
    x: tf.Tensor
    ch: tf.Tensor
    count: tf.Tensor

    def take(self, indices):
        return Points(*(tf.gather(field, indices) for field in self))

    def where(self, mask):
        return Points(*(tf.boolean_mask(field, mask) for field in self))

    def replace(self, **fields):
        return self._replace(**fields)


class Moved(typing.NamedTuple):
    """What a channel-choosing rule returns: one `Points` per input, and the channel scores
    [N, C_in] it chose from (row i for arriving point i)."""

    points: list
    channel_scores: tf.Tensor | None = None


class UntraceableLayerError(ValueError):
    """A layer type the unravel rules do not cover."""


PASS_THROUGH = (
    keras.layers.InputLayer,
    keras.layers.Activation,
    keras.layers.ReLU,
    keras.layers.LeakyReLU,
    keras.layers.ELU,
    keras.layers.PReLU,
    keras.layers.Softmax,
    keras.layers.Dropout,
    keras.layers.SpatialDropout2D,
    keras.layers.GaussianNoise,
    keras.layers.GaussianDropout,
    keras.layers.BatchNormalization,
    keras.layers.LayerNormalization,
    keras.layers.GroupNormalization,
    keras.layers.UnitNormalization,
    keras.layers.Rescaling,
    keras.layers.Normalization,
    keras.layers.Identity,
    keras.layers.ActivityRegularization,
    CaffePreprocess,
)


def _pad_before(in_size, out_size, kernel, stride, dilation, padding):
    """Leading padding of one axis: Keras/TF 'same' puts the smaller half first."""
    if padding == "valid":
        return tf.constant(0, tf.int32)
    effective = (kernel - 1) * dilation + 1
    total = tf.maximum((out_size - 1) * stride + effective - in_size, 0)
    return total // 2


def _window(points, in_h, in_w, kernel, stride, dilation, before):
    """Tap coordinates [N, T] (row-major over the kernel) and which taps are inside."""
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    ti = tf.repeat(tf.range(kh) * dh, kw)
    tj = tf.tile(tf.range(kw) * dw, [kh])
    ys = points.y[:, None] * sh - before[0] + ti[None, :]
    xs = points.x[:, None] * sw - before[1] + tj[None, :]
    inside = (ys >= 0) & (ys < in_h) & (xs >= 0) & (xs < in_w)
    return ys, xs, inside


def _gather_pixels(tensor, b, ys, xs):
    """tensor[b, ys, xs, :] for ys, xs [N, T] (clamped; callers mask what is outside)."""
    ys = tf.clip_by_value(ys, 0, tf.shape(tensor)[1] - 1)
    xs = tf.clip_by_value(xs, 0, tf.shape(tensor)[2] - 1)
    bs = tf.broadcast_to(b[:, None], tf.shape(ys))
    return tf.gather_nd(tensor, tf.stack([bs, ys, xs], axis=-1))


def channels_to_reach(scores, fraction, cap=None):
    """Per row of channel contributions [N, C], the fewest channels that, taken largest
    first, reach `fraction` of the row's positive total ("mass" K, docs/method.md).

    Returns (needed int32 [N], the channels largest first int32 [N, cap]). A row that never
    reaches it (later negative contributions can pull the running sum back under) needs all
    `cap` (default: every channel). Both the mass rule and the K analysis count with this.
    """
    channels = tf.shape(scores)[1]
    cap = channels if cap is None else tf.minimum(cap, channels)
    values, top = tf.math.top_k(scores, cap)  # stable: equal values keep channel order
    total = tf.reduce_sum(tf.maximum(scores, 0.0), axis=1, keepdims=True)
    reached = tf.cumsum(values, axis=1) >= fraction * total
    first = tf.cast(first_argmax(tf.cast(reached, tf.int32)), tf.int32) + 1
    return tf.where(tf.reduce_any(reached, axis=1), first, cap), top


def select_channels(scores, settings, rule="topk"):
    """Channels to keep per point from channel scores [N, C]: (parent index, channel) [M]."""
    channels = tf.shape(scores)[1]
    if rule == "positive":  # CNN-Fixations' FC rule; the best channel when none is positive
        keep = (scores > 0) | (
            tf.one_hot(first_argmax(scores), channels, on_value=True, off_value=False)
        )
        where = tf.cast(tf.where(keep), tf.int32)
        return where[:, 0], where[:, 1]
    if settings.mass is None:
        k = tf.minimum(settings.k, channels)
        _, top = tf.math.top_k(scores, k)  # stable: equal values keep channel order
        parents = tf.repeat(tf.range(tf.shape(scores)[0]), k)
        return parents, tf.reshape(top, [-1])
    needed, top = channels_to_reach(scores, settings.mass, settings.max_k)
    keep = tf.range(tf.shape(top)[1])[None, :] < needed[:, None]
    where = tf.cast(tf.where(keep), tf.int32)
    return where[:, 0], tf.gather_nd(top, where)


def conv_rule(layer, x, output, points, settings):
    """Conv2D (any kernel, stride, dilation, padding, groups) and 1x1 convolutions."""
    kernel = tf.cast(layer.kernel, x.dtype)
    kh, kw, group_in, filters = kernel.shape
    groups = getattr(layer, "groups", 1)
    in_h, in_w = tf.shape(x)[1], tf.shape(x)[2]
    before = [
        _pad_before(
            in_h, tf.shape(output)[1], kh, layer.strides[0], layer.dilation_rate[0], layer.padding
        ),
        _pad_before(
            in_w, tf.shape(output)[2], kw, layer.strides[1], layer.dilation_rate[1], layer.padding
        ),
    ]
    ys, xs, inside = _window(
        points, in_h, in_w, (kh, kw), layer.strides, layer.dilation_rate, before
    )
    window = _gather_pixels(x, points.b, ys, xs) * tf.cast(inside, x.dtype)[..., None]
    in_channels = tf.range(group_in)[None, :]
    if groups > 1:
        in_channels += (points.ch // (filters // groups))[:, None] * group_in
        window = tf.gather(window, in_channels, axis=2, batch_dims=1)
    weights = tf.gather(tf.reshape(kernel, [kh * kw, group_in, filters]), points.ch, axis=2)
    contributions = window * tf.transpose(weights, [2, 0, 1])  # [N, T, C_in]
    channel_scores = tf.reduce_sum(contributions, axis=1)
    parents, channels = select_channels(channel_scores, settings)

    full = settings.shift == "full" or (
        settings.shift == "partial" and max(layer.dilation_rate) == 1
    )
    if full:
        per_tap = tf.gather(
            tf.gather(contributions, parents), channels[:, None], axis=2, batch_dims=1
        )[..., 0]  # [M, T]
        per_tap = tf.where(tf.gather(inside, parents), per_tap, float("-inf"))
        tap = first_argmax(per_tap)
    else:  # the kernel centre
        tap = tf.fill(tf.shape(parents), ((kh - 1) // 2) * kw + (kw - 1) // 2)
    taps = tf.stack([parents, tap], axis=-1)
    in_channel = tf.gather_nd(
        tf.broadcast_to(in_channels, [tf.shape(ys)[0], group_in]), tf.stack([parents, channels], -1)
    )
    moved = points.take(parents).replace(
        y=tf.gather_nd(ys, taps), x=tf.gather_nd(xs, taps), ch=in_channel
    )
    return Moved([moved], channel_scores)


def dense_rule(layer, x, output, points, settings):
    """Dense on a vector (top-K or positive contributions); per position like a 1x1 conv."""
    kernel = tf.cast(layer.kernel, x.dtype)
    if len(x.shape) == 4:
        window = _gather_pixels(x, points.b, points.y[:, None], points.x[:, None])[:, 0]
    else:
        window = tf.gather(x, points.b)
    contributions = window * tf.transpose(tf.gather(kernel, points.ch, axis=1))
    parents, channels = select_channels(contributions, settings, settings.dense_rule)
    return Moved([points.take(parents).replace(ch=channels)], contributions)


def pooling_rule(layer, x, output, points, settings):
    """Max or average pooling: the largest input of the same channel in the window."""
    kernel, stride = layer.pool_size, layer.strides
    if isinstance(layer, CaffePooling2D):
        kernel, stride = (kernel, kernel), (stride, stride)
        before = [tf.constant(layer.padding), tf.constant(layer.padding)]
    else:
        before = [
            _pad_before(
                tf.shape(x)[a], tf.shape(output)[a], kernel[a - 1], stride[a - 1], 1, layer.padding
            )
            for a in (1, 2)
        ]
    ys, xs, inside = _window(points, tf.shape(x)[1], tf.shape(x)[2], kernel, stride, (1, 1), before)
    pixels = _gather_pixels(x, points.b, ys, xs)  # [N, T, C]
    values = tf.gather(pixels, points.ch[:, None], axis=2, batch_dims=1)[..., 0]
    tap = first_argmax(tf.where(inside, values, float("-inf")))
    taps = tf.stack([tf.range(tf.shape(tap)[0]), tap], axis=-1)
    return [points.replace(y=tf.gather_nd(ys, taps), x=tf.gather_nd(xs, taps))]


def global_pooling_rule(layer, x, output, points, settings):
    """Global max/average pooling: the largest value of the channel over the whole map."""
    width = tf.shape(x)[2]
    per_image = tf.gather(tf.transpose(x, [0, 3, 1, 2]), points.b)  # [N, C, H, W]
    plane = tf.gather(per_image, points.ch[:, None], axis=1, batch_dims=1)[:, 0]
    flat = first_argmax(tf.reshape(plane, [tf.shape(plane)[0], -1]))
    return [points.replace(y=flat // width, x=flat % width)]


def flatten_rule(layer, x, output, points, settings):
    """Flatten of [B, H, W, C]: the output index unravels to (y, x, channel)."""
    _, _, width, channels = x.shape
    return [
        points.replace(
            y=points.ch // (width * channels),
            x=(points.ch // channels) % width,
            ch=points.ch % channels,
        )
    ]


def add_rule(layer, inputs, output, points, settings):
    """Element-wise sum: each point goes to the summand with the larger value there."""
    index = tf.stack([points.b, points.y, points.x, points.ch], axis=-1)
    if len(inputs[0].shape) == 2:
        index = tf.stack([points.b, points.ch], axis=-1)
    values = tf.stack([tf.gather_nd(t, index) for t in inputs], axis=-1)
    winner = first_argmax(values)
    return [points.where(tf.equal(winner, i)) for i in range(len(inputs))]


def concatenate_rule(layer, inputs, output, points, settings):
    """Channel concatenation: each point goes to the input that owns its channel."""
    axis = layer.axis if layer.axis >= 0 else len(inputs[0].shape) + layer.axis
    if axis != len(inputs[0].shape) - 1:
        raise UntraceableLayerError(f"layer {layer.name!r}: Concatenate on axis {layer.axis}")
    routed, offset = [], 0
    for tensor in inputs:
        size = tensor.shape[-1]
        mask = (points.ch >= offset) & (points.ch < offset + size)
        routed.append(points.where(mask).replace(ch=tf.boolean_mask(points.ch, mask) - offset))
        offset += size
    return routed


def resize_rule(layer, x, output, points, settings):
    """Resizing / UpSampling2D: coordinates scaled to the input's grid."""

    def scale(position, axis):
        size_in, size_out = tf.shape(x)[axis], tf.shape(output)[axis]
        ratio = tf.cast(size_in, tf.float32) / tf.cast(size_out, tf.float32)
        mapped = tf.cast(tf.floor((tf.cast(position, tf.float32) + 0.5) * ratio), tf.int32)
        return tf.minimum(mapped, size_in - 1)

    return [points.replace(y=scale(points.y, 1), x=scale(points.x, 2))]


def pass_through(layer, x, output, points, settings):
    """Per-element and per-channel layers: the point stays where it is."""
    return [points]


def _unsupported_layout(layer):
    """Why the rules cannot follow this layer's layout, or None.

    Every spatial rule reads tensors as [B, H, W, C] and maps positions by plain resizing; a
    channels-first layer or an aspect-ratio crop or pad would be traced, wrongly, as if it
    were one of those, so it is refused instead.
    """
    if getattr(layer, "data_format", None) == "channels_first":
        return "data_format='channels_first' (the rules read [B, H, W, C])"
    if isinstance(layer, keras.layers.Resizing):
        for option in ("crop_to_aspect_ratio", "pad_to_aspect_ratio"):
            if getattr(layer, option, False):
                return f"{option}=True (the resize rule maps plain resizing only)"
    return None


def rule_for(layer):
    """(rule, takes a list of inputs) for a layer, or UntraceableLayerError naming it."""
    if isinstance(layer, PASS_THROUGH):
        return pass_through, False
    unsupported = _unsupported_layout(layer)
    if unsupported:
        raise UntraceableLayerError(
            f"unravel cannot trace layer {layer.name!r} ({type(layer).__name__}): {unsupported}"
        )
    if isinstance(layer, keras.layers.Conv2D) and not isinstance(
        layer, (keras.layers.Conv2DTranspose, keras.layers.DepthwiseConv2D)
    ):
        return conv_rule, False
    table = [
        (keras.layers.Dense, dense_rule, False),
        (
            (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D, CaffePooling2D),
            pooling_rule,
            False,
        ),
        (
            (keras.layers.GlobalMaxPooling2D, keras.layers.GlobalAveragePooling2D),
            global_pooling_rule,
            False,
        ),
        (keras.layers.Flatten, flatten_rule, False),
        (keras.layers.Add, add_rule, True),
        (keras.layers.Concatenate, concatenate_rule, True),
        ((keras.layers.Resizing, keras.layers.UpSampling2D), resize_rule, False),
    ]
    for types, rule, multi in table:
        if isinstance(layer, types):
            if getattr(layer, "keepdims", False):
                break
            return rule, multi
    raise UntraceableLayerError(
        f"unravel cannot trace layer {layer.name!r} ({type(layer).__name__}): no rule for it"
    )
