"""Rules for layers that combine several inputs element by element, or by channel."""

import tensorflow as tf

from tf_segunravel.unravel.rules.base import (
    AnyLayer,
    Points,
    UntraceableLayerError,
    as_map,
    best_index,
    gather_pixels,
    select_channels,
    spatial_size,
)
from tf_segunravel.unravel.settings import FixationSettings


def value_at(tensor: tf.Tensor, points: Points) -> tf.Tensor:
    """tensor's value at each point, broadcasting as the merge did: a size-1 axis (a
    [B, 1, 1, C] gate, a single channel) is read at 0; a [B, C] vector at (b, channel),
    tokens [B, N, C] at (b, x, channel) (`as_map`)."""
    tensor = as_map(tensor)
    shape = tf.shape(tensor)
    index = [
        points.b,
        tf.minimum(points.y, shape[1] - 1),
        tf.minimum(points.x, shape[2] - 1),
        tf.minimum(points.ch, shape[3] - 1),
    ]
    return tf.gather_nd(tensor, tf.stack(index, axis=-1))


def _route(points, inputs, scores, settings, eligible=None):
    """Each point to the input with the highest score there (ties broken by
    `settings.ties`), among the `eligible` inputs (default: all)."""
    scores = tf.stack(scores, axis=-1)
    if eligible is not None:
        scores = tf.where(tf.constant(eligible)[None, :], scores, float("-inf"))
    winner = best_index(scores, settings.ties)
    return [points.where(tf.equal(winner, i)) for i in range(len(inputs))]


def add_rule(
    layer: AnyLayer,
    inputs: list[tf.Tensor],
    output: tf.Tensor,
    points: Points,
    settings: FixationSettings,
) -> list[Points]:
    """Element-wise sum, average or maximum: each point goes to the input with the larger
    value there."""
    return _route(
        points, inputs, [value_at(t, points) for t in inputs], settings, _full(inputs, output)
    )


def minimum_rule(
    layer: AnyLayer,
    inputs: list[tf.Tensor],
    output: tf.Tensor,
    points: Points,
    settings: FixationSettings,
) -> list[Points]:
    """Element-wise minimum: each point goes to the input that gave the minimum."""
    return _route(
        points, inputs, [-value_at(t, points) for t in inputs], settings, _full(inputs, output)
    )


def subtract_rule(
    layer: AnyLayer,
    inputs: list[tf.Tensor],
    output: tf.Tensor,
    points: Points,
    settings: FixationSettings,
) -> list[Points]:
    """a - b: each point goes to the operand with the larger contribution, a or -b."""
    first, second = inputs
    scores = [value_at(first, points), -value_at(second, points)]
    return _route(points, inputs, scores, settings, _full(inputs, output))


def multiply_rule(
    layer: AnyLayer,
    inputs: list[tf.Tensor],
    output: tf.Tensor,
    points: Points,
    settings: FixationSettings,
) -> list[Points]:
    """Element-wise product. A broadcast factor (a squeeze-and-excite gate [B, 1, 1, C], a
    vector) scales the map but holds no position, so the point stays on the full-size
    input(s); among those, it goes to the larger factor there."""
    return _route(
        points, inputs, [value_at(t, points) for t in inputs], settings, _full(inputs, output)
    )


def _full(inputs, output):
    """Which inputs have the output's shape (the others are broadcast); all when none has."""
    full = [t.shape[1:] == output.shape[1:] and len(t.shape) == len(output.shape) for t in inputs]
    return full if any(full) else [True] * len(inputs)


def scaled_sum_rule(
    layer: AnyLayer,
    inputs: list[tf.Tensor],
    output: tf.Tensor,
    points: Points,
    settings: FixationSettings,
) -> list[Points]:
    """inputs[0] + scale * inputs[1] (InceptionResNetV2's CustomScaleLayer): each point goes
    to the larger of the two contributions there."""
    scale = float(layer.scale)
    scores = [value_at(inputs[0], points), scale * value_at(inputs[1], points)]
    return _route(points, inputs, scores, settings)


def concatenate_rule(
    layer: AnyLayer,
    inputs: list[tf.Tensor],
    output: tf.Tensor,
    points: Points,
    settings: FixationSettings,
) -> list[Points]:
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


def position_attention_rule(
    layer: AnyLayer,
    inputs: list[tf.Tensor],
    output: tf.Tensor,
    points: Points,
    settings: FixationSettings,
) -> list[Points]:
    """PositionAttention: the attention weights are constants (as AttnLRP treats them), so a
    point moves along the value path only. A point of the output is element (i, j) of
    M = A V (position i, value channel j; under `channel_major`, the element whose memory
    index it has); it moves to the value map at the position t with the largest
    contribution A[i, t] V[t, j] (top-K or mass over positions, as over a convolution's
    channels), channel j. Queries and keys receive no points. A row's softmax normaliser is
    the same for every t, so exp(S[i, t] - max_t S[i, t]) ranks as A[i, t] does."""
    queries, keys, values = inputs
    height, width = spatial_size(values)
    channels = tf.shape(values)[3]
    positions = height * width
    if layer.channel_major:
        flat = points.ch * positions + points.y * width + points.x
        row, column = flat // channels, flat % channels
    else:
        row, column = points.y * width + points.x, points.ch
    query = gather_pixels(queries, points.b, (row // width)[:, None], (row % width)[:, None])
    key_rows = tf.gather(tf.reshape(keys, [tf.shape(keys)[0], positions, -1]), points.b)
    scores = tf.einsum("nc,ntc->nt", query[:, 0], key_rows)  # [N, HW]
    weights = tf.exp(scores - tf.reduce_max(scores, axis=1, keepdims=True))
    value_rows = tf.gather(tf.reshape(values, [tf.shape(values)[0], positions, -1]), points.b)
    contributions = weights * tf.gather(value_rows, column, axis=2, batch_dims=1)
    parents, chosen = select_channels(contributions, settings)
    moved = points.moved(
        parents, y=chosen // width, x=chosen % width, ch=tf.gather(column, parents)
    )
    nothing = points.take(tf.zeros([0], tf.int32))
    return [nothing, nothing, moved]
