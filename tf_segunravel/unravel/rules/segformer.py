"""keras-hub's SegFormer (Mix Transformer) layers: rules that recompute each composite
layer's insides from its recorded input and move points through them with the table's own
rules (Dense, convolution, depthwise, padding, residual Add, attention), so one table still
says how every layer moves a point (docs/method.md, "Attention").

keras-hub is optional: its classes are matched by their qualified names
(`rules.NAMED_LAYER_KINDS`), so nothing here imports it. Each rule first checks that its
recomputation gives the recorded output (a keras-hub release that changed a layer's insides
is refused, not traced wrongly).
"""

import tensorflow as tf

from tf_segunravel.unravel.rules.attention import (
    attend,
    layer_call,
    square_side,
    token_of,
    token_points,
)
from tf_segunravel.unravel.rules.base import (
    AnyLayer,
    Moved,
    Points,
    Size,
    UntraceableLayerError,
    concat_points,
)
from tf_segunravel.unravel.rules.convolution import conv_rule, dense_rule, depthwise_rule
from tf_segunravel.unravel.rules.merge import add_rule
from tf_segunravel.unravel.rules.positions import StepResult, window_step
from tf_segunravel.unravel.rules.spatial import zero_padding_rule
from tf_segunravel.unravel.settings import FixationSettings


def _points(result: Moved | list[Points]) -> Points:
    """The one input's points of a rule's result."""
    return (result.points if isinstance(result, Moved) else result)[0]


def _checked(layer: AnyLayer, recomputed: tf.Tensor, recorded: tf.Tensor) -> tf.Operation:
    """An assertion that the rule's recomputation of `layer` is what the recorded pass
    gave (float32 round-off allowed)."""
    scale = tf.reduce_max(tf.abs(recorded)) + 1.0
    return tf.debugging.assert_less_equal(
        tf.reduce_max(tf.abs(recomputed - recorded)),
        1e-4 * scale,
        message=(
            f"unravel cannot trace layer {layer.name!r} ({type(layer).__name__}): its rule's "
            f"recomputation differs from the layer's output (a keras-hub version whose layer "
            f"works differently)"
        ),
    )


def _tokens_as_grid(tokens: tf.Tensor, layer: AnyLayer) -> tf.Tensor:
    """[B, N, C] -> [B, side, side, C], as keras-hub's layers reshape them."""
    side = square_side(tokens.shape[1], layer)
    return tf.reshape(tokens, [tf.shape(tokens)[0], side, side, tokens.shape[2]])


def patch_embedding_rule(
    layer: AnyLayer, x: tf.Tensor, output: tf.Tensor, points: Points, settings: FixationSettings
) -> list[Points]:
    """OverlappingPatchingAndEmbedding (ZeroPadding2D, strided Conv2D, tokens,
    LayerNormalization): a token is a position of the convolution's output; the
    normalisation keeps the point, the convolution and the padding rules move it."""
    padded = layer.padding(x)
    conv = layer.proj(padded)
    tokens = tf.reshape(conv, [tf.shape(conv)[0], -1, conv.shape[-1]])
    # The check runs before the points move (a control dependency on what they read).
    with tf.control_dependencies([_checked(layer, layer.norm(tokens), output)]):
        on_grid = token_points(points, tf.identity(points.x), conv)
    at_padded = _points(conv_rule(layer.proj, padded, conv, on_grid, settings))
    return zero_padding_rule(layer.padding, x, padded, at_padded, settings)


def patch_embedding_grid(layer: AnyLayer, height: Size, width: Size) -> tuple[Size, Size]:
    """The grid of the patch embedding's tokens: its convolution's output size."""
    pad = layer.patch_size // 2
    return tuple(
        (size + 2 * pad - layer.patch_size) // layer.stride + 1 for size in (height, width)
    )


def patch_embedding_map(layer: AnyLayer, in_size: Size, out_size: Size, axis: int) -> StepResult:
    """Padding by patch_size // 2, then a valid window of patch_size with the stride."""
    return window_step(layer.patch_size, layer.stride, 1, layer.patch_size // 2, in_size, out_size)


def mix_ffn_points(
    layer: AnyLayer, x: tf.Tensor, output: tf.Tensor, points: Points, settings: FixationSettings
) -> Points:
    """MixFFN (Dense, 3x3 DepthwiseConv2D on the token grid, GELU, Dense): Dense, the
    per-element GELU, the depthwise convolution on the grid, Dense."""
    hidden = layer.fc1(x)
    grid = _tokens_as_grid(hidden, layer)
    conv = layer.dwconv(grid)
    activated = tf.nn.gelu(tf.reshape(conv, tf.shape(hidden)), approximate=False)
    at_activated = _points(dense_rule(layer.fc2, activated, output, points, settings))
    on_grid = token_points(at_activated, at_activated.x, conv)
    at_grid = _points(depthwise_rule(layer.dwconv, grid, conv, on_grid, settings))
    at_hidden = token_points(at_grid, token_of(at_grid, grid), hidden)
    return _points(dense_rule(layer.fc1, x, hidden, at_hidden, settings))


def mix_ffn_rule(
    layer: AnyLayer, x: tf.Tensor, output: tf.Tensor, points: Points, settings: FixationSettings
) -> list[Points]:
    """MixFFN as a layer of its own (`mix_ffn_points`)."""
    return [mix_ffn_points(layer, x, output, points, settings)]


def attention_points(
    layer: AnyLayer, x: tf.Tensor, output: tf.Tensor, points: Points, settings: FixationSettings
) -> tuple[Points, tf.Tensor]:
    """SegFormerMultiheadAttention: `attend` through the heads and the output projection to
    a value token and channel; the value projection (Dense) to the channel of the tokens
    the values are made from; where the sequence is reduced (sr_ratio > 1), through the
    normalisation and the strided reduction convolution to a token of the input's grid."""
    heads = layer.num_heads
    batch, tokens, channels = tf.shape(x)[0], x.shape[1], x.shape[2]
    depth = channels // heads

    def split_heads(t):  # [B, S, C] -> [B, heads, S, D]
        return tf.transpose(tf.reshape(t, [batch, -1, heads, depth]), [0, 2, 1, 3])

    if layer.sr_ratio > 1:
        grid = _tokens_as_grid(x, layer)
        reduced = layer.sr(grid)
        sources = layer.norm(tf.reshape(reduced, [batch, -1, channels]))
    else:
        sources = x
    values = layer.v(sources)
    logits = tf.matmul(split_heads(layer.q(x)), split_heads(layer.k(sources)), transpose_b=True)
    weights = tf.nn.softmax(logits * layer.scale, axis=-1)
    attended = tf.reshape(tf.transpose(tf.matmul(weights, split_heads(values)), [0, 2, 1, 3]),
                          [batch, tokens, channels])  # fmt: skip
    check = _checked(layer, layer.proj(attended), output)
    projection = tf.reshape(layer.proj.kernel, [heads, depth, -1])
    with tf.control_dependencies([check]):
        chosen = attend(points, points.x, weights, split_heads(values), projection, settings)
    at_values = points.moved(
        chosen.parents,
        y=tf.zeros_like(chosen.token),
        x=chosen.token,
        ch=chosen.head * depth + chosen.channel,
    )
    at_sources = _points(dense_rule(layer.v, sources, values, at_values, settings))
    if layer.sr_ratio == 1:
        return at_sources, chosen.scores
    on_reduced = token_points(at_sources, at_sources.x, reduced)
    at_grid = _points(conv_rule(layer.sr, grid, reduced, on_reduced, settings))
    return token_points(at_grid, token_of(at_grid, grid), x), chosen.scores


def attention_rule(
    layer: AnyLayer, x: tf.Tensor, output: tf.Tensor, points: Points, settings: FixationSettings
) -> Moved:
    """SegFormerMultiheadAttention as a layer of its own (`attention_points`)."""
    moved, scores = attention_points(layer, x, output, points, settings)
    return Moved([moved], scores)


def encoder_rule(
    layer: AnyLayer, x: tf.Tensor, output: tf.Tensor, points: Points, settings: FixationSettings
) -> list[Points]:
    """HierarchicalTransformerEncoder: x1 = x + attention(norm1(x)), then
    x1 + MixFFN(norm2(x1)). Each residual Add routes a point as the Add rule does; the
    normalisations keep it; DropPath is the identity at inference."""
    if not hasattr(layer, "attn") or not hasattr(layer, "mlp"):
        raise UntraceableLayerError(
            f"unravel cannot trace layer {layer.name!r} ({type(layer).__name__}): not the "
            f"attention-then-MixFFN block its rule recomputes"
        )
    normed = layer.norm1(x)
    attended = layer_call(layer.attn, normed)
    middle = x + attended
    normed_middle = layer.norm2(middle)
    mixed = layer_call(layer.mlp, normed_middle)
    # The check runs before the points move (a control dependency on what they read).
    with tf.control_dependencies([_checked(layer, middle + mixed, output)]):
        points = points.replace(b=tf.identity(points.b))
    to_middle, to_mixed = add_rule(layer, [middle, mixed], output, points, settings)
    through_ffn = mix_ffn_points(layer.mlp, normed_middle, mixed, to_mixed, settings)
    at_middle = concat_points([to_middle, through_ffn])
    to_x, to_attended = add_rule(layer, [x, attended], middle, at_middle, settings)
    through_attention, _ = attention_points(layer.attn, normed, attended, to_attended, settings)
    return [concat_points([to_x, through_attention])]
