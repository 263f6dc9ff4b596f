"""PositionAttention (attention over a map's positions, MAnet's PAB block) and its unravel
rule, each against a naive numpy implementation, element by element."""

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_segunravel.models.framework_layers import PositionAttention
from tf_segunravel.unravel import FixationSettings, SegUnravel
from tf_segunravel.unravel.rules.base import Points
from tf_segunravel.unravel.rules.merge import position_attention_rule

H, W, CQ, C = 3, 4, 2, 5


def maps(seed=0, batch=2):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((batch, H, W, CQ)).astype("f4")
    k = rng.standard_normal((batch, H, W, CQ)).astype("f4")
    v = rng.standard_normal((batch, H, W, C)).astype("f4")
    return q, k, v


def naive(q, k, v, joint, channel_major):
    """The layer in float64 loops: (output [B, H, W, C], attention [B, HW, HW])."""
    batch = q.shape[0]
    out = np.zeros((batch, H, W, C))
    attention = np.zeros((batch, H * W, H * W))
    for b in range(batch):
        qs, ks, vs = (a[b].reshape(H * W, -1).astype("f8") for a in (q, k, v))
        scores = np.array([[qs[i] @ ks[t] for t in range(H * W)] for i in range(H * W)])
        if joint:
            e = np.exp(scores - scores.max())
            a = e / e.sum()
        else:
            e = np.exp(scores - scores.max(axis=1, keepdims=True))
            a = e / e.sum(axis=1, keepdims=True)
        attention[b] = a
        m = a @ vs  # [HW, C]
        for y, x, c in itertools.product(range(H), range(W), range(C)):
            if channel_major:
                flat = c * H * W + y * W + x
                out[b, y, x, c] = m.reshape(-1)[flat]
            else:
                out[b, y, x, c] = m[y * W + x, c]
    return out, attention


@pytest.mark.parametrize("joint", [True, False])
@pytest.mark.parametrize("channel_major", [True, False])
def test_the_layer_computes_attention_as_the_naive_loops(joint, channel_major):
    q, k, v = maps()
    layer = PositionAttention(joint_softmax=joint, channel_major=channel_major)
    want, _ = naive(q, k, v, joint, channel_major)
    np.testing.assert_allclose(np.asarray(layer([q, k, v])), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("channel_major", [True, False])
def test_the_rule_moves_each_point_to_its_strongest_value_pathway(channel_major):
    """Every element of the output, as a point: it moves to the value position t with the
    largest A[i, t] V[t, j], channel j, where (i, j) is the element of M it reads."""
    q, k, v = maps(seed=1)
    layer = PositionAttention(joint_softmax=True, channel_major=channel_major)
    output = layer([q, k, v])
    _, attention = naive(q, k, v, True, channel_major)
    grid = np.array(list(itertools.product(range(2), range(H), range(W), range(C))), np.int32)
    b, y, x, ch = (tf.constant(grid[:, a]) for a in range(4))
    points = Points(b, tf.zeros_like(b), y, x, ch, tf.ones_like(b, tf.int64))
    to_q, to_k, to_v = position_attention_rule(
        layer, [tf.constant(q), tf.constant(k), tf.constant(v)], output, points,
        FixationSettings(k=1),
    )  # fmt: skip
    assert int(tf.size(to_q.b)) == int(tf.size(to_k.b)) == 0
    got = np.stack([to_v.b, to_v.y, to_v.x, to_v.ch], axis=1)
    want = []
    for pb, py, px, pc in grid:
        if channel_major:
            i, j = divmod(pc * H * W + py * W + px, C)
        else:
            i, j = py * W + px, pc
        values = v[pb].reshape(H * W, C)[:, j]
        t = int(np.argmax(attention[pb, i] * values))
        want.append([pb, t // W, t % W, j])
    np.testing.assert_array_equal(got, np.array(want))


def test_a_model_with_position_attention_unravels_inside_its_image():
    inputs = keras.Input((12, 16, 3))
    features = keras.layers.Conv2D(6, 3, strides=4, padding="same", activation="relu")(inputs)
    q = keras.layers.Conv2D(2, 1)(features)
    k = keras.layers.Conv2D(2, 1)(features)
    v = keras.layers.Conv2D(6, 1)(features)
    attended = PositionAttention()([q, k, v])
    merged = keras.layers.Add()([features, attended])
    scores = keras.layers.UpSampling2D(4, interpolation="bilinear")(
        keras.layers.Conv2D(3, 1)(merged)
    )
    model = keras.Model(inputs, scores)
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    model.set_weights([rng.standard_normal(w.shape).astype("f4") for w in model.weights])
    images = rng.uniform(0, 255, (2, 12, 16, 3)).astype("f4")
    result = SegUnravel(model, FixationSettings(sigma=1.0))(images)
    for b in range(2):
        points, counts = result.for_image(b)
        assert len(points) and (counts > 0).all()
        assert points[:, 1].max() < 12 and points[:, 2].max() < 16 and points.min() >= 0
