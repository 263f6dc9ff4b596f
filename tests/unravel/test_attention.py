"""Attention through the unravel: Keras' MultiHeadAttention and keras-hub's SegFormer
attention, each rule against a naive numpy implementation point for point; tokens, their
geometry, and what is refused."""

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_segunravel.unravel import FixationSettings, SegUnravel
from tf_segunravel.unravel.geometry import ScoreMap
from tf_segunravel.unravel.rules.attention import multi_head_attention_rule
from tf_segunravel.unravel.rules.base import Points, UntraceableLayerError

HEADS, KEY_DIM, VALUE_DIM, C = 2, 3, 2, 4
T, S = 5, 6  # query and value tokens


def integer_attention(seed=0):
    """A MultiHeadAttention with small integer weights, and integer query and value tokens."""
    rng = np.random.default_rng(seed)
    layer = keras.layers.MultiHeadAttention(HEADS, KEY_DIM, value_dim=VALUE_DIM)
    query = rng.integers(-2, 3, (2, T, C)).astype("f4")
    value = rng.integers(-2, 3, (2, S, C)).astype("f4")
    layer(query, value)
    layer.set_weights([rng.integers(-2, 3, w.shape).astype("f4") for w in layer.get_weights()])
    return layer, query, value


def naive_attention(layer, query, value):
    """(output [B, T, C], weights [B, heads, T, S], values [B, heads, S, Dv]) in float64
    loops, from the layer's kernels as Keras lays them out."""
    (wq, bq), (wk, bk), (wv, bv), (wo, bo) = (
        (d.kernel.numpy().astype("f8"), d.bias.numpy().astype("f8"))
        for d in (layer._query_dense, layer._key_dense, layer._value_dense, layer._output_dense)
    )
    batch = query.shape[0]
    out = np.zeros((batch, T, wo.shape[-1]))
    weights = np.zeros((batch, HEADS, T, S))
    values = np.zeros((batch, HEADS, S, VALUE_DIM))
    for b, h in itertools.product(range(batch), range(HEADS)):
        q = query[b] @ wq[:, h] + bq[h]
        k = value[b] @ wk[:, h] + bk[h]
        v = value[b] @ wv[:, h] + bv[h]
        logits = q @ k.T / np.sqrt(KEY_DIM)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        weights[b, h] = e / e.sum(axis=1, keepdims=True)
        values[b, h] = v
        out[b] += (weights[b, h] @ v) @ wo[h]
    return out + bo, weights, values


def every_output_element(batch, tokens, channels):
    grid = np.array(list(itertools.product(range(batch), range(tokens), range(channels))), np.int32)
    b, x, ch = (tf.constant(grid[:, a]) for a in range(3))
    points = Points(b, tf.zeros_like(b), tf.zeros_like(b), x, ch, tf.ones_like(b, tf.int64))
    return grid, points


def test_the_naive_attention_is_keras_own():
    """The reference reads Keras' kernels as the layer uses them."""
    layer, query, value = integer_attention()
    out, scores = layer(query, value, return_attention_scores=True)
    want, weights, _ = naive_attention(layer, query, value)
    np.testing.assert_allclose(np.asarray(out), want, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.asarray(scores), weights, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("k", [1, 2])
def test_the_multi_head_rule_follows_the_strongest_value_pathway(k):
    """Every output element as a point: it moves to the (head, value token, value channel)
    with the largest A V W_o (the top k, ties to the lowest index), then through the value
    projection to the value input's channels with the largest x_v W_v. Products in float32
    in the rule's own order, so integer ties break alike."""
    layer, query, value = integer_attention(seed=1)
    output = layer(query, value)
    _, scores = layer(query, value, return_attention_scores=True)
    weights = np.asarray(scores)  # the constants both read: A is not what is traced
    wv = layer._value_dense.kernel.numpy()
    bv = layer._value_dense.bias.numpy()
    wo = layer._output_dense.kernel.numpy()
    grid, points = every_output_element(2, T, wo.shape[-1])
    moved = multi_head_attention_rule(
        layer, [tf.constant(query), tf.constant(value)], output, points, FixationSettings(k=k)
    )
    to_query, to_value = moved.points
    assert int(tf.size(to_query.b)) == 0
    want = []
    for b, i, c in grid:
        values = np.einsum("sc,chd->hsd", value[b], wv) + bv[:, None, :]  # exact: integers
        contributions = (weights[b, :, i, :, None] * values) * wo[:, None, :, c]
        for flat in np.argsort(-contributions.reshape(-1), kind="stable")[:k]:
            h, j, d = np.unravel_index(flat, contributions.shape)
            inner = value[b, j] * wv[:, h, d]
            for e in np.argsort(-inner, kind="stable")[:k]:
                want.append([b, 0, j, e])
    got = np.stack([to_value.b, to_value.y, to_value.x, to_value.ch], axis=1)
    np.testing.assert_array_equal(got, np.array(want))


def token_segmenter(attention_call=None, grid_back=(4, 4)):
    """Patches of 4 pixels as tokens, self-attention with a residual, Dense on tokens, the
    tokens back on their grid, a 1x1 head and a bilinear upsampling."""
    inputs = keras.Input((16, 16, 3))
    patches = keras.layers.Conv2D(8, 4, strides=4)(inputs)
    tokens = keras.layers.Reshape((16, 8))(patches)
    normed = keras.layers.LayerNormalization()(tokens)
    attention = keras.layers.MultiHeadAttention(2, 4)
    attended = (attention_call or (lambda q: attention(q, q)))(normed)
    mixed = keras.layers.Dense(8, activation="gelu")(keras.layers.Add()([tokens, attended]))
    grid = keras.layers.Reshape((*grid_back, 8))(mixed)
    scores = keras.layers.UpSampling2D(4, interpolation="bilinear")(keras.layers.Conv2D(3, 1)(grid))
    return keras.Model(inputs, scores)


def seeded(model, seed=0):
    rng = np.random.default_rng(seed)
    model.set_weights([rng.standard_normal(w.shape).astype("f4") * 0.5 for w in model.weights])
    return model


def images(seed=0, size=16):
    return np.random.default_rng(seed).uniform(0, 255, (2, size, size, 3)).astype("f4")


def test_a_segmenter_built_with_multi_head_attention_unravels_inside_its_image():
    model = seeded(token_segmenter())
    for settings in (FixationSettings(), FixationSettings(k=2), FixationSettings(mass=0.5)):
        result = SegUnravel(model, settings)(images())
        for b in range(2):
            points, counts = result.for_image(b)
            assert len(points) and (counts > 0).all()
            assert points[:, 1:].min() >= 0 and points[:, 1:].max() < 16


def test_tokens_keep_the_geometry_of_the_grid_they_come_from():
    """The same convolution and upsampling without the tokens between them: one map."""
    inputs = keras.Input((16, 16, 3))
    patches = keras.layers.Conv2D(8, 4, strides=4)(inputs)
    plain = keras.Model(
        inputs,
        keras.layers.UpSampling2D(4, interpolation="bilinear")(keras.layers.Conv2D(3, 1)(patches)),
    )
    _, with_tokens = ScoreMap(seeded(token_segmenter()))(images())
    _, without = ScoreMap(seeded(plain))(images())
    np.testing.assert_allclose(np.asarray(with_tokens), np.asarray(without))


def test_tokens_reshaped_to_another_grid_are_refused():
    model = seeded(token_segmenter(grid_back=(2, 8)))
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="another grid"):
        SegUnravel(model)(images())


@pytest.mark.parametrize(
    "call, reason",
    [
        (lambda a: lambda q: a(q, q, use_causal_mask=True), "use_causal_mask=True"),
        (lambda a: lambda q: a(query=q, value=q), "by keyword"),
    ],
)
def test_attention_the_rule_does_not_follow_is_refused_by_name(call, reason):
    layer = keras.layers.MultiHeadAttention(2, 4, name="attention_under_test")
    model = token_segmenter(attention_call=call(layer))
    with pytest.raises(UntraceableLayerError, match=f"'attention_under_test'.*{reason}"):
        SegUnravel(model)


def test_an_attention_mask_is_refused_by_name():
    """A mask is a second model input, which the engine refuses first; the layer's own check
    names the mask for a graph that reaches it."""
    from tf_segunravel.unravel.graph import _check_call, _flatten_into
    from tf_segunravel.unravel.rules import kind_for

    inputs = keras.Input((4, 8))
    mask = keras.Input((4, 4), dtype="bool")
    attended = keras.layers.MultiHeadAttention(2, 4, name="masked")(
        inputs, inputs, attention_mask=mask
    )
    steps: list = []
    _flatten_into(keras.Model([inputs, mask], attended), {}, steps)
    (step,) = [s for s in steps if s.layer.name == "masked"]
    with pytest.raises(UntraceableLayerError, match=r"'masked'.*attention_mask"):
        _check_call(step, kind_for(step.layer, len(step.inputs)))
