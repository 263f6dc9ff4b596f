"""The engine's shortcuts give what the general code gives, point for point: the K = 1 path
of the convolution rules (one argmax instead of a top-K selection and its parent gathers),
and merges that do not sort between layers (only the image's merge sorts)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.unravel.test_engine import images, integer_weights
from tf_segunravel.unravel import SegUnravel
from tf_segunravel.unravel.rules import Points, convolution
from tf_segunravel.unravel.tracer import merge

L = keras.layers


def mixed_model():
    """Plain, strided, grouped, depthwise and separable convolutions, pooling and a skip."""
    inp = keras.Input((19, 23, 3))  # the size of `images()`
    x = L.Conv2D(8, 3, padding="same", activation="relu")(inp)
    skip = x
    x = L.Conv2D(8, 3, strides=2, padding="same", groups=2, activation="relu")(x)
    x = L.DepthwiseConv2D(3, padding="same", depth_multiplier=2, activation="relu")(x)
    x = L.SeparableConv2D(8, 3, padding="same", activation="relu")(x)
    x = L.UpSampling2D(2)(x)
    x = L.Add()([L.Resizing(19, 23)(x), skip])
    x = L.MaxPooling2D(2, padding="same")(x)
    return keras.Model(inp, L.Conv2D(3, 1)(x))


SETTINGS = [
    {},
    {"shift": "full"},
    {"shift": "none"},
    {"shift": "full", "ties": "last"},
    {"shift": "full", "padded_taps": True},
    {"shift": "full", "padded_taps": True, "ties": "last"},
]


def _result(model, batch, **settings):
    r = SegUnravel(model, **settings)(batch)
    return r.points, r.counts


@pytest.mark.parametrize(
    "settings", SETTINGS, ids=lambda s: ",".join(map(str, s.values())) or "default"
)
def test_the_one_channel_path_equals_the_general_rule(settings, monkeypatch):
    model = integer_weights(mixed_model())
    batch = images()
    fast = _result(model, batch, **settings)
    monkeypatch.setattr(convolution, "one_channel", lambda _: False)
    general = _result(model, batch, **settings)
    assert len(fast[0]) > 10
    np.testing.assert_array_equal(fast[0], general[0])
    np.testing.assert_array_equal(fast[1], general[1])


@pytest.mark.parametrize("settings", [{}, {"k": 3, "shift": "full"}, {"mass": 0.5}])
def test_unsorted_merges_give_the_sorted_walks_points(settings):
    """An engine keeping channel scores sorts every merge (its rows follow arrival order);
    a plain one sorts only at the image. The points and counts are the same."""
    model = integer_weights(mixed_model())
    batch = images()
    plain = SegUnravel(model, **settings)(batch)
    sorted_walk = SegUnravel(model, keep_channel_scores=True, **settings)(batch)
    np.testing.assert_array_equal(plain.points, sorted_walk.points)
    np.testing.assert_array_equal(plain.counts, sorted_walk.counts)
    keys = [tuple(p) for p in plain.points]
    assert keys == sorted(keys)


def test_merge_without_sorting_keeps_first_occurrence_order():
    rng = np.random.default_rng(0)
    fields = [tf.constant(rng.integers(0, 3, 40), tf.int32) for _ in range(5)]
    points = Points(*fields, tf.constant(rng.integers(1, 5, 40), tf.int64))
    sizes = (3, 3, 3, 3, 3)
    ordered, unordered = merge(points, sizes), merge(points, sizes, sort=False)
    rows = lambda p: np.stack([f.numpy() for f in p[:5]], axis=1)  # noqa: E731
    keys = [tuple(r) for r in rows(points)]
    first_seen = list(dict.fromkeys(keys))
    assert [tuple(r) for r in rows(unordered)] == first_seen
    assert [tuple(r) for r in rows(ordered)] == sorted(first_seen)
    totals = {}
    for key, count in zip(keys, points.count.numpy(), strict=True):
        totals[key] = totals.get(key, 0) + count
    assert unordered.count.numpy().tolist() == [totals[k] for k in first_seen]
    assert ordered.count.numpy().tolist() == [totals[k] for k in sorted(first_seen)]
