"""Rules for layers that weigh input channels: convolutions of every kind, and Dense."""

import typing

import tensorflow as tf

from tf_segunravel.unravel.rules import kernel_rows
from tf_segunravel.unravel.rules.base import (
    AnyLayer,
    Moved,
    Points,
    UntraceableLayerError,
    as_map,
    best_index,
    clamp_taps,
    gather_pixels,
    pad_before,
    select_channels,
    spatial_size,
    window_taps,
)
from tf_segunravel.unravel.rules.kernel_rows import KernelRows
from tf_segunravel.unravel.settings import FixationSettings


def _before(x, output, kernel, strides, dilation, padding):
    """Leading padding (top, left) of a window layer from its recorded sizes."""
    in_size, out_size = spatial_size(x), spatial_size(output)
    return [
        pad_before(in_size[a], out_size[a], kernel[a], strides[a], dilation[a], padding)
        for a in (0, 1)
    ]


def filter_rows(kernel: tf.Tensor, filters: tf.Tensor) -> tf.Tensor:
    """Each point's filter as one row [N, kh * kw * C_in] of a kernel [kh, kw, C_in, F].

    Gathering from the kernel's last axis copies one scalar at a time: cheap for a few points
    (a classifier's one seed), but on fc6 of LargeFOV (1,681 points) a third of the whole
    unravel. Past about F / 8 points the kernel is transposed once and each filter taken as a
    contiguous row instead (measured: 1 point of a 3x3x512x512 kernel 0.4 ms by columns, 9 ms
    by rows; 1,681 points of 3x3x512x1024 74 ms by columns, 42 ms by rows). Same values."""
    flat = tf.reshape(kernel, [-1, tf.shape(kernel)[-1]])  # [T * C_in, F]
    return tf.cond(
        _few(filters, flat),
        lambda: _by_columns(flat, filters),
        lambda: tf.gather(tf.transpose(flat), filters),
    )


def _few(filters, flat):
    """Whether so few points read the kernel `flat` [T * C_in, F] that gathering their
    filters as columns is cheaper than reading rows of its transpose (`filter_rows`)."""
    return tf.size(filters) * 8 < tf.shape(flat)[1]


def _by_columns(flat, filters):
    return tf.transpose(tf.gather(flat, filters, axis=1))


def window_weights(
    kernel: tf.Tensor, filters: tf.Tensor, inside: tf.Tensor, held: KernelRows | None = None
) -> tf.Tensor:
    """Each point's filter over its window [N, T, C_in] from a kernel [kh, kw, C_in, F], zero
    at the taps outside the input (`inside` [N, T]): the window's products then sum to the
    channel scores without a mask. With `held` (the layer's `kernel_rows.KernelRows`) and
    past about F / 8 points, each tap's weights are one row of its table, and an outside
    tap reads the table's zero row, so masking costs nothing; otherwise as `filter_rows`,
    masked. The same values as masking the products (up to the sign of a zero)."""
    kh, kw, channels, filters_total = kernel.shape
    taps = kh * kw

    def masked(rows):
        weights = tf.reshape(rows, [-1, taps, channels])
        return weights * tf.cast(inside, weights.dtype)[..., None]

    if held is None:
        return masked(filter_rows(kernel, filters))
    flat = tf.reshape(kernel, [-1, filters_total])

    def by_rows():
        # The table's check runs here, only where the table is read: a layer that few
        # points reach (deep in a DeepLabV3+ backbone) reads columns and checks nothing.
        row = filters[:, None] * taps + tf.range(taps)[None, :]
        row = tf.where(inside, row, filters_total * taps)  # outside: the zero row
        return tf.cast(tf.gather(held.rows(), row), kernel.dtype)  # cast: same values

    return tf.cond(_few(filters, flat), lambda: masked(_by_columns(flat, filters)), by_rows)


def inside_sum(contributions: tf.Tensor, inside: tf.Tensor) -> tf.Tensor:
    """Contributions [N, T, C] summed over the taps inside the input: [N, C]. (The same
    products and sum as masking the window first, so results are unchanged bit for bit; a
    batched matmul would sum in another order and could flip near-ties.)"""
    return tf.reduce_sum(contributions * tf.cast(inside, contributions.dtype)[..., None], axis=1)


def tap_values(contributions: tf.Tensor, parents: tf.Tensor, channels: tf.Tensor) -> tf.Tensor:
    """contributions[parents[m], t, channels[m]] for every tap t: [M, T], read element by
    element (gathering the parents' whole [T, C] blocks first copies C times as much)."""
    taps = tf.shape(contributions)[1]
    shape = tf.stack([tf.shape(parents)[0], taps])
    index = tf.stack(
        [
            tf.broadcast_to(parents[:, None], shape),
            tf.broadcast_to(tf.range(taps)[None, :], shape),
            tf.broadcast_to(channels[:, None], shape),
        ],
        axis=-1,
    )
    return tf.gather_nd(contributions, index)


def _full_shift(settings, dilation):
    """Full shift where the rule's shift setting asks for it (partial: undilated only)."""
    return settings.shift == "full" or (settings.shift == "partial" and max(dilation) == 1)


def convolve(
    x: tf.Tensor,
    output: tf.Tensor,
    points: Points,
    settings: FixationSettings,
    kernel: tf.Tensor,
    strides: typing.Sequence[int],
    dilation: typing.Sequence[int],
    padding: str,
    groups: int = 1,
    held: KernelRows | None = None,
) -> Moved:
    """The convolution rule on a kernel [kh, kw, C_in / groups, filters]: top-K input
    channels by summed contribution, then the position by the shift setting. `held`: the
    kernel's `KernelRows`, when it is a layer's variable."""
    kernel = tf.cast(kernel, x.dtype)
    kh, kw, group_in, filters = kernel.shape
    before = _before(x, output, (kh, kw), strides, dilation, padding)
    ys, xs, inside = window_taps(points, *spatial_size(x), (kh, kw), strides, dilation, before)
    window = gather_pixels(x, points.b, ys, xs)  # [N, T, C_in], clamped outside
    in_channels = tf.range(group_in)[None, :]
    if groups > 1:
        in_channels += (points.ch // (filters // groups))[:, None] * group_in
        window = tf.gather(window, in_channels, axis=2, batch_dims=1)
    weights = window_weights(kernel, points.ch, inside, held)  # zero outside the input
    contributions = window * weights  # [N, T, C_in]
    if kh * kw == 1:  # a sum over one tap is that tap (TensorFlow copies it): no sum
        channel_scores = contributions[:, 0]
    else:
        channel_scores = tf.reduce_sum(contributions, axis=1)
    if one_channel(settings):
        # Each point keeps one channel and is its own parent: one argmax, no rows gathered.
        parents, channels = None, tf.cast(best_index(channel_scores, settings.ties), tf.int32)
    else:
        parents, channels = select_channels(channel_scores, settings)

    if _full_shift(settings, dilation):
        if parents is None:
            per_tap = tf.gather(contributions, channels, axis=2, batch_dims=1)  # [N, T]
        else:
            per_tap = tap_values(contributions, parents, channels)  # [M, T]
            inside = tf.gather(inside, parents)
        # A tap on the padding contributes a padded zero: a candidate only with padded_taps.
        outside = 0.0 if settings.padded_taps else float("-inf")
        per_tap = tf.where(inside, per_tap, outside)
        tap = best_index(per_tap, settings.ties)
    else:  # the kernel centre
        tap = tf.fill(tf.shape(channels), ((kh - 1) // 2) * kw + (kw - 1) // 2)
    if groups == 1:  # the input channel is the chosen one
        in_channel = channels
    else:  # the chosen one within the point's group
        rows = in_channels if parents is None else tf.gather(in_channels, parents)
        in_channel = tf.gather(rows, channels, axis=1, batch_dims=1)
    moved = to_taps(points, parents, ys, xs, tap, in_channel, x, settings)
    return Moved([moved], channel_scores)


def to_taps(
    points: Points,
    parents: tf.Tensor,
    ys: tf.Tensor,
    xs: tf.Tensor,
    tap: tf.Tensor,
    channel: tf.Tensor,
    x: tf.Tensor,
    settings: FixationSettings,
) -> Points:
    """The moved points of a window rule: point m, child of `parents[m]` (or point m itself
    when `parents` is None, saving the parents' gathers), to tap `tap[m]` of its parent's
    window (`ys`, `xs` [N, T]) on input channel `channel[m]`; a padded tap chosen under
    `padded_taps` is clamped into the input `x`."""
    if parents is None:
        y = tf.gather(ys, tap, axis=1, batch_dims=1)
        x_ = tf.gather(xs, tap, axis=1, batch_dims=1)
    else:
        taps = tf.stack([parents, tap], axis=-1)
        y, x_ = tf.gather_nd(ys, taps), tf.gather_nd(xs, taps)
    if settings.padded_taps:
        y, x_ = clamp_taps(y, x_, *spatial_size(x))
    if parents is None:
        return points.replace(y=y, x=x_, ch=channel)
    return points.moved(parents, y=y, x=x_, ch=channel)


def one_channel(settings: FixationSettings) -> bool:
    """Whether every point keeps exactly one channel (K = 1, no mass): the argmax the top-1
    choice would make, ties broken alike (the lowest index, or with ties="last" the highest)."""
    return settings.k == 1 and settings.mass is None


def conv_rule(
    layer: AnyLayer,
    x: tf.Tensor,
    output: tf.Tensor,
    points: Points,
    settings: FixationSettings,
    kernel: tf.Tensor | None = None,
) -> Moved:
    """Conv2D (any kernel, stride, dilation, padding, groups) and 1x1 convolutions.

    `kernel` replaces the layer's own (the contrastive unravel's margin kernel)."""
    return convolve(
        x,
        output,
        points,
        settings,
        layer.kernel if kernel is None else kernel,
        layer.strides,
        layer.dilation_rate,
        layer.padding,
        getattr(layer, "groups", 1),
        held=kernel_rows.for_layer(layer) if kernel is None else None,
    )


def depthwise(
    x: tf.Tensor,
    output: tf.Tensor,
    points: Points,
    settings: FixationSettings,
    kernel: tf.Tensor,
    strides: typing.Sequence[int],
    dilation: typing.Sequence[int],
    padding: str,
) -> Moved:
    """The depthwise rule on a kernel [kh, kw, C_in, multiplier]: output channel o reads
    input channel o // multiplier only, so there is no channel to choose; K applies to the
    taps (full shift: the top-K taps by contribution, each child keeping its parent's
    count; no shift: the centre)."""
    kernel = tf.cast(kernel, x.dtype)
    kh, kw, channels, multiplier = kernel.shape
    before = _before(x, output, (kh, kw), strides, dilation, padding)
    ys, xs, inside = window_taps(points, *spatial_size(x), (kh, kw), strides, dilation, before)
    in_channel = points.ch // multiplier
    values = gather_pixels(x, points.b, ys, xs, in_channel)  # [N, T]
    weights = filter_rows(tf.reshape(kernel, [kh * kw, channels * multiplier]), points.ch)
    contributions = values * weights  # [N, T]
    if _full_shift(settings, dilation) and one_channel(settings):
        # One tap per point, its own parent: padded taps compete with zeros under
        # padded_taps, else every inside tap beats every outside one.
        outside = 0.0 if settings.padded_taps else float("-inf")
        parents = None
        tap = best_index(tf.where(inside, contributions, outside), settings.ties)
    elif _full_shift(settings, dilation) and settings.padded_taps:
        # Padded taps contribute zeros and compete; a chosen one is clamped below.
        parents, tap = select_channels(tf.where(inside, contributions, 0.0), settings)
    elif _full_shift(settings, dilation):
        # Taps outside the input score below every inside tap, so they are picked last.
        lowest = tf.reduce_min(contributions) - 1.0
        scores = tf.where(inside, contributions, lowest)
        parents, tap = select_channels(scores, settings)
        keep = tf.gather_nd(inside, tf.stack([parents, tap], axis=-1))
        parents, tap = tf.boolean_mask(parents, keep), tf.boolean_mask(tap, keep)
    else:  # the kernel centre, one child per point
        parents = None
        tap = tf.fill(tf.shape(points.b), ((kh - 1) // 2) * kw + (kw - 1) // 2)
    channel = in_channel if parents is None else tf.gather(in_channel, parents)
    return Moved([to_taps(points, parents, ys, xs, tap, channel, x, settings)])


def depthwise_rule(
    layer: AnyLayer,
    x: tf.Tensor,
    output: tf.Tensor,
    points: Points,
    settings: FixationSettings,
    kernel: tf.Tensor | None = None,
) -> Moved:
    """DepthwiseConv2D, with any depth multiplier. `kernel` replaces the layer's own (a
    one-channel head's two classes: one input channel, multiplier 2)."""
    return depthwise(
        x,
        output,
        points,
        settings,
        layer.kernel if kernel is None else kernel,
        layer.strides,
        layer.dilation_rate,
        layer.padding,
    )


def separable_rule(
    layer: AnyLayer,
    x: tf.Tensor,
    output: tf.Tensor,
    points: Points,
    settings: FixationSettings,
    kernel: tf.Tensor | None = None,
) -> Moved:
    """SeparableConv2D, traced as its two steps: the pointwise 1x1 convolution (top-K
    channels of the depthwise output), then the depthwise step to the input. The depthwise
    output is not a tensor of the graph, so it is computed here from the recorded input.
    `kernel` replaces the pointwise kernel, as in `conv_rule`."""
    strides, dilation = tuple(layer.strides), tuple(layer.dilation_rate)
    middle = tf.nn.depthwise_conv2d(
        x,
        tf.cast(layer.depthwise_kernel, x.dtype),
        strides=(1, *strides, 1),
        padding=layer.padding.upper(),
        dilations=dilation,
    )
    pointwise = convolve(
        middle,
        output,
        points,
        settings,
        layer.pointwise_kernel if kernel is None else kernel,
        (1, 1),
        (1, 1),
        "valid",
        held=kernel_rows.for_layer(layer, "pointwise_kernel") if kernel is None else None,
    )
    (between,) = pointwise.points
    moved = depthwise(
        x, middle, between, settings, layer.depthwise_kernel, strides, dilation, layer.padding
    )
    return Moved(moved.points, pointwise.channel_scores)


def transpose_rule(
    layer: AnyLayer,
    x: tf.Tensor,
    output: tf.Tensor,
    points: Points,
    settings: FixationSettings,
    kernel: tf.Tensor | None = None,
) -> Moved:
    """Conv2DTranspose: input position i feeds output i s - p + t d for each tap t, so an
    output point's candidates are the taps t with (o + p - t d) / s a whole position inside
    the input. Top-K input channels by summed contribution; position by the shift setting
    (no shift: the candidate tap nearest the kernel centre). `kernel` replaces the layer's
    own, as in `conv_rule` (its filters on axis 2)."""
    kernel = tf.cast(layer.kernel if kernel is None else kernel, x.dtype)  # [kh, kw, F, C_in]
    kh, kw, _, in_channels = kernel.shape
    (sh, sw), (dh, dw) = layer.strides, layer.dilation_rate
    in_h, in_w = tf.shape(x)[1], tf.shape(x)[2]
    # The forward convolution from the output's grid to the input's has this padding.
    top = pad_before(tf.shape(output)[1], in_h, kh, sh, dh, layer.padding)
    left = pad_before(tf.shape(output)[2], in_w, kw, sw, dw, layer.padding)
    ty = tf.repeat(tf.range(kh), kw)
    tx = tf.tile(tf.range(kw), [kh])
    num_y = points.y[:, None] + top - ty[None, :] * dh
    num_x = points.x[:, None] + left - tx[None, :] * dw
    ys, xs = num_y // sh, num_x // sw
    inside = (
        (num_y % sh == 0) & (num_x % sw == 0) & (ys >= 0) & (ys < in_h) & (xs >= 0) & (xs < in_w)
    )
    window = gather_pixels(x, points.b, ys, xs)  # [N, T, C_in], clamped outside
    # The kernel's filter axis is not its last here, so each gather copies C_in at once.
    weights = tf.gather(tf.reshape(kernel, [kh * kw, -1, in_channels]), points.ch, axis=1)
    contributions = window * tf.transpose(weights, [1, 0, 2])  # [N, T, C_in]
    channel_scores = inside_sum(contributions, inside)
    has_input = tf.reduce_any(inside, axis=1)  # a stride beyond the kernel leaves holes
    parents, channels = select_channels(channel_scores, settings)
    keep = tf.gather(has_input, parents)
    parents, channels = tf.boolean_mask(parents, keep), tf.boolean_mask(channels, keep)
    if _full_shift(settings, layer.dilation_rate):
        per_tap = tap_values(contributions, parents, channels)
        per_tap = tf.where(tf.gather(inside, parents), per_tap, float("-inf"))
    else:  # the candidate nearest the kernel centre
        centre = tf.cast((ty - (kh - 1) // 2) ** 2 + (tx - (kw - 1) // 2) ** 2, tf.float32)
        per_tap = tf.where(tf.gather(inside, parents), -centre[None, :], float("-inf"))
    tap = best_index(per_tap, settings.ties)
    taps = tf.stack([parents, tap], axis=-1)
    moved = points.moved(parents, y=tf.gather_nd(ys, taps), x=tf.gather_nd(xs, taps), ch=channels)
    return Moved([moved], channel_scores)


def dense_rule(
    layer: AnyLayer,
    x: tf.Tensor,
    output: tf.Tensor,
    points: Points,
    settings: FixationSettings,
    kernel: tf.Tensor | None = None,
) -> Moved:
    """Dense on a vector (top-K or positive contributions); on tokens or a map, per position
    like a 1x1 conv. `kernel` replaces the layer's own, as in `conv_rule`."""
    kernel = tf.cast(layer.kernel if kernel is None else kernel, x.dtype)
    if len(kernel.shape) != 2:
        raise UntraceableLayerError(
            f"unravel cannot trace layer {layer.name!r} (Dense): a kernel of rank "
            f"{len(kernel.shape)} (its rule reads [C_in, C_out])"
        )
    window = gather_pixels(as_map(x), points.b, points.y[:, None], points.x[:, None])[:, 0]
    contributions = window * tf.transpose(tf.gather(kernel, points.ch, axis=1))
    parents, channels = select_channels(contributions, settings, settings.dense_rule)
    return Moved([points.moved(parents, ch=channels)], contributions)


# The kernels each rule reads by rows through `kernel_rows` (an engine holds their tables).
HELD_KERNELS = {conv_rule: ("kernel",), separable_rule: ("pointwise_kernel",)}
