"""Rules for attention over tokens: Keras' `MultiHeadAttention`, and the step both it and
keras-hub's SegFormer attention share (`attend`); docs/method.md, "Attention".

The attention weights are constants, as AttnLRP (Achtibat et al., ICML 2024) treats them:
a point moves along the value path only, and queries and keys receive none. Tokens are
points with y = 0 and x = the token (`base.as_map`); a map's positions are its tokens,
row by row.
"""

import math
import typing

import keras
import tensorflow as tf

from tf_segunravel.unravel.rules.base import (
    AnyLayer,
    Moved,
    Points,
    as_map,
    select_channels,
)
from tf_segunravel.unravel.settings import FixationSettings


class Attended(typing.NamedTuple):
    """What `attend` chose: per new point, its parent (the arriving point it came from), the
    head, the value token and the value channel (int32 [M]); and the scores it chose from
    ([N, heads * S * D], for the K analysis)."""

    parents: tf.Tensor
    head: tf.Tensor
    token: tf.Tensor
    channel: tf.Tensor
    scores: tf.Tensor


def attend(
    points: Points,
    query: tf.Tensor,
    weights: tf.Tensor,
    values: tf.Tensor,
    projection: tf.Tensor,
    settings: FixationSettings,
) -> Attended:
    """One step through attention and its output projection, over every head at once.

    A point at query token i, output channel c, moves to the value token j and the value
    channel (h, d) with the largest contribution A[h, i, j] V[h, j, d] W_o[h, d, c] (top-K or
    mass, as a convolution chooses over its taps and channels; ties by the settings).

    Args:
      points: the points arriving at the attention's output (their `ch` is c).
      query: int32 [N], each point's query token i.
      weights: float [B, heads, T, S], the attention weights (softmax over S).
      values: float [B, heads, S, D], the values after the value projection.
      projection: float [heads, D, C], the output projection's kernel.
    """
    _, tokens, depth = tf.unstack(tf.shape(values)[1:], num=3)
    # Each point's row of weights [N, heads, S]: the (image, query) pairs read at once.
    by_query = tf.transpose(weights, [0, 2, 1, 3])
    rows = tf.gather_nd(by_query, tf.stack([points.b, query], axis=1))
    per_point_values = tf.gather(values, points.b)  # [N, heads, S, D]
    column = tf.transpose(tf.gather(projection, points.ch, axis=2), [2, 0, 1])  # [N, heads, D]
    contributions = rows[:, :, :, None] * per_point_values * column[:, :, None, :]
    flat = tf.reshape(contributions, [tf.shape(contributions)[0], -1])
    parents, chosen = select_channels(flat, settings)
    head = chosen // (tokens * depth)
    token = (chosen // depth) % tokens
    return Attended(parents, head, token, chosen % depth, flat)


def token_points(points: Points, tokens: tf.Tensor, like: tf.Tensor) -> Points:
    """`points` moved to the tokens `tokens` of `like`: [B, N, C] tokens are (0, token), a
    [B, H, W, C] map's positions its tokens row by row."""
    if len(like.shape) == 3:
        return points.replace(y=tf.zeros_like(tokens), x=tokens)
    width = tf.shape(like)[2]
    return points.replace(y=tokens // width, x=tokens % width)


def token_of(points: Points, like: tf.Tensor) -> tf.Tensor:
    """Each point's token in `like` (`token_points` inverted)."""
    return points.y * tf.shape(as_map(like))[2] + points.x


_MASKS = ("attention_mask", "query_mask", "value_mask", "key_mask")


def multi_head_attention_check(step: typing.Any) -> str | None:
    """What the attention rule cannot follow in one call of a Keras `MultiHeadAttention`."""
    layer = step.layer
    arguments = step.arguments
    args, kwargs = tuple(arguments.args), dict(arguments.kwargs)
    for name in _MASKS:
        if kwargs.get(name) is not None:
            return f"{name} (the rule traces unmasked attention only)"
    if kwargs.get("use_causal_mask"):
        return "use_causal_mask=True (the rule traces unmasked attention only)"
    if kwargs.get("return_attention_scores"):
        return "return_attention_scores=True (the rule traces the attended output only)"
    if len(args) < 2 or any(role in kwargs for role in ("query", "value", "key")):
        return "query, value (and key) passed by keyword: pass them positionally"
    if getattr(layer, "_use_gate", False):
        return "use_gate=True (the gate mixes the query into the output)"
    if getattr(layer, "_sliding_window", None) is not None:
        return "a sliding window (a mask)"
    query = args[0]
    rank = len(query.shape)
    every_axis = tuple(range(1, rank - 1))
    if tuple(layer._attention_axes) != every_axis or rank not in (3, 4):
        return (
            f"attention_axes={tuple(layer._attention_axes)} on rank-{rank} inputs (the rule "
            f"traces attention over every token of [B, N, C] or every position of "
            f"[B, H, W, C])"
        )
    if len(layer._output_dense.kernel.shape) != 3:
        return "an output_shape of several axes"
    return None


def _flat_tokens(tensor: tf.Tensor) -> tf.Tensor:
    """[B, ..., C] -> [B, tokens, C]."""
    return tf.reshape(tensor, [tf.shape(tensor)[0], -1, tf.shape(tensor)[-1]])


def multi_head_attention_rule(
    layer: AnyLayer,
    inputs: list[tf.Tensor],
    output: tf.Tensor,
    points: Points,
    settings: FixationSettings,
) -> Moved:
    """Keras' `MultiHeadAttention(query, value[, key])`: `attend` through the attention and
    the output projection, then the value projection picks the value input's channel e with
    the largest x_v[j, e] W_v[e, h, d] (top-K or mass). The weights are recomputed from the
    recorded inputs by the layer itself; query and key receive no points."""
    query, value = inputs[0], inputs[1]
    key = inputs[2] if len(inputs) > 2 else value
    _, scores = layer(query, value, key, return_attention_scores=True)
    batch = tf.shape(scores)[0]
    heads = layer._num_heads
    weights = tf.reshape(scores, [batch, heads, tf.shape(_flat_tokens(query))[1], -1])
    projected = _flat_tokens(layer._value_dense(value))  # [B, S, heads * D] (EinsumDense)
    depth = layer._value_dense.kernel.shape[-1]
    projected = tf.reshape(projected, [batch, -1, heads, depth])
    chosen = attend(
        points,
        token_of(points, query),
        weights,
        tf.transpose(projected, [0, 2, 1, 3]),
        tf.cast(layer._output_dense.kernel, weights.dtype),
        settings,
    )
    parents = chosen.parents
    value_tokens = _flat_tokens(value)
    rows = tf.gather_nd(value_tokens, tf.stack([tf.gather(points.b, parents), chosen.token], 1))
    kernel = tf.cast(layer._value_dense.kernel, rows.dtype)  # [C_v, heads, D]
    by_unit = tf.transpose(kernel, [1, 2, 0])  # [heads, D, C_v]
    columns = tf.gather_nd(by_unit, tf.stack([chosen.head, chosen.channel], axis=1))
    inner_parents, channels = select_channels(rows * columns, settings)
    origin = tf.gather(parents, inner_parents)
    moved = token_points(
        points.moved(origin, ch=channels), tf.gather(chosen.token, inner_parents), value
    )
    nothing = points.take(tf.zeros([0], tf.int32))
    at_inputs = [nothing, moved, nothing][: len(inputs)]
    return Moved(at_inputs, chosen.scores)


def square_side(tokens: int, layer: AnyLayer) -> int:
    """The side of the square grid `tokens` tokens lie on, as keras-hub's SegFormer layers
    take it (int(sqrt(N))); refuses a token count that is not a square."""
    side = math.isqrt(tokens)
    if side * side != tokens:
        from tf_segunravel.unravel.rules import refuse

        raise refuse(layer, f"{tokens} tokens are not a square grid")
    return side


def layer_call(layer: keras.layers.Layer, x: tf.Tensor) -> tf.Tensor:
    """A sublayer applied in inference mode, as the recorded pass ran it."""
    if "training" in getattr(layer, "_call_context_args", ()):
        return layer(x, training=False)
    return layer(x)
