"""Rules for layers that move positions: pooling, resizing, padding, cropping, reshaping."""

import tensorflow as tf

from tf_segunravel.models.framework_layers import ExplicitPooling2D
from tf_segunravel.models.layers import CaffePooling2D
from tf_segunravel.unravel.rules.base import (
    AnyLayer,
    Points,
    UntraceableLayerError,
    as_map,
    best_index,
    clamp_taps,
    gather_pixels,
    pad_total,
    window_taps,
)
from tf_segunravel.unravel.settings import FixationSettings


def pooling_rule(
    layer: AnyLayer, x: tf.Tensor, output: tf.Tensor, points: Points, settings: FixationSettings
) -> list[Points]:
    """Max or average pooling: the largest input of the same channel in the window. With
    `padded_taps`, the window's taps on the padding hold zeros that compete (Seg-Unravel's
    code pads with zeros; the forward pass never picks them), a winner there clamped into
    the map."""
    kernel, stride = layer.pool_size, layer.strides
    in_size = (tf.shape(x)[1], tf.shape(x)[2])
    if isinstance(layer, CaffePooling2D):
        kernel, stride = (kernel, kernel), (stride, stride)
        before = [tf.constant(layer.padding), tf.constant(layer.padding)]
        after = before  # a ceil-mode window may reach past it: those taps are no candidates
    elif isinstance(layer, ExplicitPooling2D):
        before = [tf.constant(pad[0]) for pad in layer.padding]
        after = [tf.constant(pad[1]) for pad in layer.padding]
    else:
        before, after = [], []
        for a in (1, 2):
            total = pad_total(
                in_size[a - 1], tf.shape(output)[a], kernel[a - 1], stride[a - 1], 1, layer.padding
            )
            before.append(total // 2)
            after.append(total - total // 2)
    ys, xs, inside = window_taps(points, *in_size, kernel, stride, (1, 1), before)
    values = gather_pixels(x, points.b, ys, xs, points.ch)  # [N, T]
    scores = tf.where(inside, values, float("-inf"))
    if settings.padded_taps:
        padded = (
            (ys >= -before[0])
            & (ys < in_size[0] + after[0])
            & (xs >= -before[1])
            & (xs < in_size[1] + after[1])
        )
        scores = tf.where(inside, values, tf.where(padded, 0.0, float("-inf")))
    tap = best_index(scores, settings.ties)
    taps = tf.stack([tf.range(tf.shape(tap)[0]), tap], axis=-1)
    y, x_ = tf.gather_nd(ys, taps), tf.gather_nd(xs, taps)
    if settings.padded_taps:
        y, x_ = clamp_taps(y, x_, *in_size)
    return [points.replace(y=y, x=x_)]


def global_pooling_rule(
    layer: AnyLayer, x: tf.Tensor, output: tf.Tensor, points: Points, settings: FixationSettings
) -> list[Points]:
    """Global max/average pooling (keepdims or not): the largest value of the channel over
    the whole map."""
    width = tf.shape(x)[2]
    planes = tf.reshape(tf.transpose(x, [0, 3, 1, 2]), [tf.shape(x)[0], tf.shape(x)[3], -1])
    plane = tf.gather_nd(planes, tf.stack([points.b, points.ch], axis=-1))  # [N, H * W]
    flat = best_index(plane, settings.ties)
    return [points.replace(y=flat // width, x=flat % width)]


def flatten_rule(
    layer: AnyLayer, x: tf.Tensor, output: tf.Tensor, points: Points, settings: FixationSettings
) -> list[Points]:
    """Flatten of [B, H, W, C]: the output index unravels to (y, x, channel)."""
    _, _, width, channels = x.shape
    return [
        points.replace(
            y=points.ch // (width * channels),
            x=(points.ch // channels) % width,
            ch=points.ch % channels,
        )
    ]


def _element_index(points, tensor):
    """Row-major index of each point's element in one example of `tensor` (any rank
    `as_map` reads)."""
    shape = tf.shape(as_map(tensor))
    return (points.y * shape[2] + points.x) * shape[3] + points.ch


def reshape_rule(
    layer: AnyLayer, x: tf.Tensor, output: tf.Tensor, points: Points, settings: FixationSettings
) -> list[Points]:
    """Reshape between vectors [B, C], tokens [B, N, C] and maps [B, H, W, C]: the element
    keeps its row-major index, unravelled in the input's shape (`as_map`). Tokens to a map
    of their own grid ([B, HW, C] -> [B, H, W, C]) moves token y W + x to position (y, x),
    and back."""
    for tensor in (x, output):
        as_map(tensor)  # refuses a rank it cannot read
    index = _element_index(points, output)
    _, _, width, channels = tf.unstack(tf.shape(as_map(x)), num=4)
    return [
        points.replace(
            y=index // (width * channels), x=(index // channels) % width, ch=index % channels
        )
    ]


def permute_rule(
    layer: AnyLayer, x: tf.Tensor, output: tf.Tensor, points: Points, settings: FixationSettings
) -> list[Points]:
    """Permute of a [B, H, W, C] tensor: output axis k is input axis dims[k], so a point's
    coordinates are put back in the input's order."""
    if len(x.shape) != 4:
        raise UntraceableLayerError(
            f"unravel cannot trace layer {layer.name!r} (Permute): rank-{len(x.shape)} input"
        )
    coordinates = [None, None, None]
    for output_axis, field in enumerate((points.y, points.x, points.ch)):
        coordinates[layer.dims[output_axis] - 1] = field
    y, x_, ch = coordinates
    return [points.replace(y=y, x=x_, ch=ch)]


def resize_rule(
    layer: AnyLayer, x: tf.Tensor, output: tf.Tensor, points: Points, settings: FixationSettings
) -> list[Points]:
    """Resizing / UpSampling2D: coordinates scaled to the input's grid, pixel centres to
    pixel centres (resize_mapping="centres"), or first to first and last to last as Caffe's
    aligned-corner Interp ("corners")."""

    def scale(position, axis):
        size_in, size_out = tf.shape(x)[axis], tf.shape(output)[axis]
        position = tf.cast(position, tf.float32)
        if settings.resize_mapping == "corners":
            step = tf.cast(size_in - 1, tf.float32) / tf.cast(
                tf.maximum(size_out - 1, 1), tf.float32
            )
            mapped = tf.floor(position * step)
        else:
            ratio = tf.cast(size_in, tf.float32) / tf.cast(size_out, tf.float32)
            mapped = tf.floor((position + 0.5) * ratio)
        return tf.minimum(tf.cast(mapped, tf.int32), size_in - 1)

    return [points.replace(y=scale(points.y, 1), x=scale(points.x, 2))]


def resize2d_rule(
    layer: AnyLayer, x: tf.Tensor, output: tf.Tensor, points: Points, settings: FixationSettings
) -> list[Points]:
    """Resize2D: each output pixel to the input pixel it draws on most: the tap it copies
    (nearest), or the nearer of its two taps per axis (bilinear), under the layer's own
    coordinate mode."""

    def source(position, axis):
        size_in, size_out = x.shape[axis], output.shape[axis]
        sampled = tf.gather(layer.source_positions(size_in, size_out), position)
        nearest = tf.floor(sampled) if layer.interpolation == "nearest" else tf.floor(sampled + 0.5)
        return tf.clip_by_value(tf.cast(nearest, tf.int32), 0, size_in - 1)

    return [points.replace(y=source(points.y, 1), x=source(points.x, 2))]


def zero_padding_rule(
    layer: AnyLayer, x: tf.Tensor, output: tf.Tensor, points: Points, settings: FixationSettings
) -> list[Points]:
    """ZeroPadding2D: positions shift back by the leading padding. A point on the padding has
    no input of its own; it moves to the nearest input position (our choice: the layer after
    the padding never learns from the zeros, and a dropped point would lose its paths)."""
    (top, _), (left, _) = layer.padding
    return [
        points.replace(
            y=tf.clip_by_value(points.y - top, 0, tf.shape(x)[1] - 1),
            x=tf.clip_by_value(points.x - left, 0, tf.shape(x)[2] - 1),
        )
    ]


def cropping_rule(
    layer: AnyLayer, x: tf.Tensor, output: tf.Tensor, points: Points, settings: FixationSettings
) -> list[Points]:
    """Cropping2D: positions shift forward by the leading crop."""
    (top, _), (left, _) = layer.cropping
    return [points.replace(y=points.y + top, x=points.x + left)]
