"""The unravel transitions (METHOD.md section 2), one function per kind of layer.

Each rule moves a batch of points from a layer's output to its input(s) in a handful of
vectorised TensorFlow ops: gather every point's input window at once, score, pick. A point is
(image b, seed class, y, x, channel, count); rank-2 tensors (Dense inputs) use y = x = 0.
Ties go to the lowest index (row-major taps, then channel order), as numpy.argmax does.
"""

import typing

import keras
import tensorflow as tf

from tf_segunravel.models.layers import CaffePooling2D, CaffePreprocess

SHIFTS = ("none", "partial", "full")
DENSE_RULES = ("topk", "positive")


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


class UnravelConfig(typing.NamedTuple):
    """K (an int), or `mass` (a fraction, capped at `max_k` channels), the spatial shift and
    the Dense rule ("topk", or CNN-Fixations' "positive": every positive contribution)."""

    k: int = 1
    mass: float | None = None
    max_k: int = 16
    shift: str = "partial"
    dense_rule: str = "topk"
    # Called as hook(layer, channel_scores [N, C_in]) by the conv and dense rules; for
    # analyses such as the K experiment (eager mode only).
    hook: object = None


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


def first_argmax(values, axis=-1):
    """argmax that returns the lowest index among ties (tf.argmax leaves it unspecified)."""
    best = tf.reduce_max(values, axis=axis, keepdims=True)
    positions = tf.range(tf.shape(values)[axis])
    shape = [1] * len(values.shape)
    shape[axis] = -1
    positions = tf.reshape(positions, shape)
    large = tf.shape(values)[axis]
    return tf.reduce_min(tf.where(tf.equal(values, best), positions, large), axis=axis)


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


def select_channels(scores, config, rule="topk"):
    """Channels to keep per point from channel scores [N, C]: (parent index, channel) [M]."""
    channels = tf.shape(scores)[1]
    if rule == "positive":  # CNN-Fixations' FC rule; the best channel when none is positive
        keep = (scores > 0) | (
            tf.one_hot(first_argmax(scores), channels, on_value=True, off_value=False)
        )
        where = tf.cast(tf.where(keep), tf.int32)
        return where[:, 0], where[:, 1]
    if config.mass is None:
        k = tf.minimum(config.k, channels)
        _, top = tf.math.top_k(scores, k)  # stable: equal values keep channel order
        parents = tf.repeat(tf.range(tf.shape(scores)[0]), k)
        return parents, tf.reshape(top, [-1])
    cap = tf.minimum(config.max_k, channels)
    values, top = tf.math.top_k(scores, cap)
    total = tf.reduce_sum(tf.maximum(scores, 0.0), axis=1, keepdims=True)
    reached = tf.cumsum(values, axis=1) >= config.mass * total
    # The fewest channels whose running sum first reaches the fraction (all `cap` if never;
    # later negative contributions can pull the running sum back under it).
    first = tf.cast(first_argmax(tf.cast(reached, tf.int32)), tf.int32) + 1
    needed = tf.where(tf.reduce_any(reached, axis=1), first, cap)
    keep = tf.range(cap)[None, :] < needed[:, None]
    where = tf.cast(tf.where(keep), tf.int32)
    return where[:, 0], tf.gather_nd(top, where)


def conv_rule(layer, x, output, points, config):
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
    if config.hook is not None:
        config.hook(layer, channel_scores)
    parents, channels = select_channels(channel_scores, config)

    full = config.shift == "full" or (config.shift == "partial" and max(layer.dilation_rate) == 1)
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
    return [
        points.take(parents).replace(
            y=tf.gather_nd(ys, taps), x=tf.gather_nd(xs, taps), ch=in_channel
        )
    ]


def dense_rule(layer, x, output, points, config):
    """Dense on a vector (top-K or positive contributions); per position like a 1x1 conv."""
    kernel = tf.cast(layer.kernel, x.dtype)
    if len(x.shape) == 4:
        window = _gather_pixels(x, points.b, points.y[:, None], points.x[:, None])[:, 0]
    else:
        window = tf.gather(x, points.b)
    contributions = window * tf.transpose(tf.gather(kernel, points.ch, axis=1))
    if config.hook is not None:
        config.hook(layer, contributions)
    parents, channels = select_channels(contributions, config, config.dense_rule)
    return [points.take(parents).replace(ch=channels)]


def pooling_rule(layer, x, output, points, config):
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


def global_pooling_rule(layer, x, output, points, config):
    """Global max/average pooling: the largest value of the channel over the whole map."""
    width = tf.shape(x)[2]
    per_image = tf.gather(tf.transpose(x, [0, 3, 1, 2]), points.b)  # [N, C, H, W]
    plane = tf.gather(per_image, points.ch[:, None], axis=1, batch_dims=1)[:, 0]
    flat = first_argmax(tf.reshape(plane, [tf.shape(plane)[0], -1]))
    return [points.replace(y=flat // width, x=flat % width)]


def flatten_rule(layer, x, output, points, config):
    """Flatten of [B, H, W, C]: the output index unravels to (y, x, channel)."""
    _, _, width, channels = x.shape
    return [
        points.replace(
            y=points.ch // (width * channels),
            x=(points.ch // channels) % width,
            ch=points.ch % channels,
        )
    ]


def add_rule(layer, inputs, output, points, config):
    """Element-wise sum: each point goes to the summand with the larger value there."""
    index = tf.stack([points.b, points.y, points.x, points.ch], axis=-1)
    if len(inputs[0].shape) == 2:
        index = tf.stack([points.b, points.ch], axis=-1)
    values = tf.stack([tf.gather_nd(t, index) for t in inputs], axis=-1)
    winner = first_argmax(values)
    return [points.where(tf.equal(winner, i)) for i in range(len(inputs))]


def concatenate_rule(layer, inputs, output, points, config):
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


def resize_rule(layer, x, output, points, config):
    """Resizing / UpSampling2D: coordinates scaled to the input's grid."""

    def scale(position, axis):
        size_in, size_out = tf.shape(x)[axis], tf.shape(output)[axis]
        ratio = tf.cast(size_in, tf.float32) / tf.cast(size_out, tf.float32)
        mapped = tf.cast(tf.floor((tf.cast(position, tf.float32) + 0.5) * ratio), tf.int32)
        return tf.minimum(mapped, size_in - 1)

    return [points.replace(y=scale(points.y, 1), x=scale(points.x, 2))]


def rule_for(layer):
    """(rule, takes a list of inputs) for a layer, or UntraceableLayerError naming it."""
    if isinstance(layer, PASS_THROUGH):
        return (lambda layer, x, output, points, config: [points]), False
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
