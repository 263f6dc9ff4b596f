"""Registered rules: one table entry per layer kind, its geometry, refusal, and undoing it."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_segunravel.unravel import (
    KEEPS_MAP,
    Points,
    ScoreMap,
    SegUnravel,
    UntraceableLayerError,
    kind_for,
    register_rule,
    window_geometry,
)

L = keras.layers


class EveryOther(L.Layer):
    """A custom stride-2 layer: keeps every other row and column (x[:, ::2, ::2])."""

    def call(self, x):
        return x[:, ::2, ::2, :]

    def compute_output_shape(self, shape):
        half = [None if s is None else (s + 1) // 2 for s in shape[1:3]]
        return (shape[0], *half, shape[3])


def every_other_rule(layer, x, output, points, settings):
    """Output (y, x) reads input (2y, 2x), the same channel."""
    return [points.replace(y=2 * points.y, x=2 * points.x)]


def build(middle, seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((None, None, 3))
    x = L.Conv2D(6, 3, padding="same", activation="relu", name="conv1")(inp)
    x = middle(x)
    x = L.Conv2D(6, 3, padding="same", activation="relu", name="conv2")(x)
    return keras.Model(inp, L.Conv2D(3, 1, name="score")(x))


def pair():
    """The custom-layer model and the same network with a built-in stride-2 equivalent
    (MaxPooling2D with a 1x1 window keeps exactly every other position)."""
    custom = build(EveryOther(name="every_other"))
    builtin = build(L.MaxPooling2D(1, strides=2, name="pool"))
    builtin.set_weights(custom.get_weights())
    return custom, builtin


def images(shape=(2, 21, 18, 3)):
    return np.random.default_rng(3).uniform(0, 255, shape).astype(np.float32)


def test_registered_stride_2_layer_gets_its_geometry_and_places_labels_by_it():
    custom, builtin = pair()
    batch = images()
    with register_rule(EveryOther, every_other_rule, geometry=window_geometry(1, strides=2)):
        got = SegUnravel(custom)(batch)
        want = SegUnravel(builtin)(batch)
        np.testing.assert_array_equal(got.geometry, [[2.0, 0.0], [2.0, 0.0]])
        np.testing.assert_array_equal(got.geometry, want.geometry)
        np.testing.assert_array_equal(got.points, want.points)
        np.testing.assert_array_equal(got.counts, want.counts)
        # Labels at image size follow the score grid: score position i over pixel 2i.
        full = ScoreMap(custom).at_image_size(batch).numpy()
        np.testing.assert_array_equal(full, ScoreMap(builtin).at_image_size(batch).numpy())
        scores, _ = ScoreMap(custom)(batch)
        np.testing.assert_array_equal(full[:, ::2, ::2], scores.numpy())
        # Seeds from a label map at image size take the label under each score centre.
        labels = np.full(batch.shape[:3], 255, np.int32)
        labels[:, 4, 6] = 1  # pixel (4, 6) is score position (2, 3)'s centre
        labels[:, 5, 7] = 2  # odd pixels sit under no score centre
        seeded = SegUnravel(custom)(batch, seed_labels=labels)
        np.testing.assert_array_equal(seeded.seeds, [[0, 1, 0], [0, 1, 0]])


def test_registered_stride_2_layer_without_geometry_is_refused():
    custom, _ = pair()
    with register_rule(EveryOther, every_other_rule):
        with pytest.raises(UntraceableLayerError, match=r"'every_other'.*declares no geometry"):
            SegUnravel(custom)(images())
        # With sizes known only when it runs (a SavedModel signature), it fails at run time.
        engine = SegUnravel(custom)
        traced = tf.function(
            lambda x: engine.trace(x).geometry,
            input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)],
        )
        with pytest.raises(tf.errors.InvalidArgumentError, match="declares no geometry"):
            traced(tf.constant(images()))


def test_an_unknown_layer_that_changes_the_size_is_refused_by_score_map():
    custom, _ = pair()
    with pytest.raises(UntraceableLayerError, match="changes the spatial size"):
        ScoreMap(custom)(images())


def test_a_layer_without_geometry_that_keeps_the_size_keeps_the_map():
    class Doubler(L.Layer):
        def call(self, x):
            return 2.0 * x

    model = build(Doubler(name="double"))
    with register_rule(Doubler, lambda layer, x, output, points, settings: [points]):
        result = SegUnravel(model)(images())
    np.testing.assert_array_equal(result.geometry, [[1.0, 0.0], [1.0, 0.0]])


def test_registration_is_undone_by_the_context_manager_and_by_remove():
    layer = EveryOther()
    with pytest.raises(UntraceableLayerError):
        kind_for(layer)
    with register_rule(EveryOther, every_other_rule, geometry=KEEPS_MAP) as registration:
        assert kind_for(layer).rule is every_other_rule
        assert kind_for(layer).geometry == KEEPS_MAP
    with pytest.raises(UntraceableLayerError):
        kind_for(layer)
    registration.remove()  # undoing twice is harmless
    outer = register_rule(EveryOther, every_other_rule)
    inner = register_rule(EveryOther, every_other_rule, multi_input=True)
    assert kind_for(layer).multi_input  # the newest wins
    inner.remove()
    assert not kind_for(layer).multi_input
    outer.remove()
    with pytest.raises(UntraceableLayerError):
        kind_for(layer)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"geometry": "stride2"}, "geometry must be"), ({"rule": "not a rule"}, "callable")],
)
def test_register_rule_checks_its_arguments(kwargs, message):
    arguments = {"rule": every_other_rule, **kwargs}
    with pytest.raises(TypeError, match=message):
        register_rule(EveryOther, **arguments)


def test_points_are_exported_for_rule_authors():
    points = Points(*(tf.constant([1]) for _ in range(5)), tf.constant([1], tf.int64))
    assert points.replace(y=tf.constant([4])).y.numpy().tolist() == [4]
