"""CaffePreprocess and CaffePooling2D against Caffe's arithmetic; KeyedDropout's masks."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.caffe_reference import pool as caffe_pool
from tests.layer_testing import run_layer_test
from tf_segunravel.models.layers import (
    CaffePooling2D,
    CaffePreprocess,
    KeyedDropout,
    caffe_pool_output_size,
    example_keys,
)


def test_preprocess_is_bgr_minus_mean():
    rgb = np.array([[[[10.0, 20.0, 30.0]]]], np.float32)
    out = CaffePreprocess()(rgb).numpy()
    np.testing.assert_allclose(out[0, 0, 0], [30 - 104.008, 20 - 116.669, 10 - 122.675], rtol=1e-6)


def test_preprocess_accepts_uint8_and_round_trips_config():
    layer = CaffePreprocess(mean_bgr=(1.0, 2.0, 3.0), name="pre")
    clone = CaffePreprocess.from_config(layer.get_config())
    image = np.full((1, 2, 2, 3), 7, np.uint8)
    np.testing.assert_allclose(clone(image).numpy(), layer(image).numpy())
    np.testing.assert_allclose(clone(image).numpy()[0, 0, 0], [6.0, 5.0, 4.0])


@pytest.mark.parametrize("mean_bgr", [(104.008, 116.669, 122.675), (1.0, 2.0, 3.0)])
def test_preprocess_is_a_well_behaved_keras_layer(mean_bgr):
    run_layer_test(CaffePreprocess, {"mean_bgr": mean_bgr})


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mode": "max", "pool_size": 3, "strides": 2, "padding": 1},
        {"mode": "avg", "pool_size": 3, "strides": 1, "padding": 1},
        {"mode": "max", "pool_size": 2, "strides": 2, "padding": 0},
    ],
)
def test_pooling_is_a_well_behaved_keras_layer(kwargs):
    run_layer_test(CaffePooling2D, kwargs, input_channels=4, low=-1.0, high=1.0)


@pytest.mark.parametrize(
    "size, kernel, stride, pad, expected",
    [
        (321, 3, 2, 1, 161),
        (320, 3, 2, 1, 161),
        (161, 3, 2, 1, 81),
        (41, 3, 1, 1, 41),
        (2, 3, 2, 1, 2),
        (1, 3, 2, 1, 1),
        (7, 2, 2, 0, 4),
        (6, 2, 2, 0, 3),
    ],
)
def test_output_size_matches_caffe(size, kernel, stride, pad, expected):
    assert caffe_pool_output_size(size, kernel, stride, pad) == expected
    dynamic = caffe_pool_output_size(tf.constant(size), kernel, stride, pad)
    assert int(dynamic) == expected


@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [(7, 7), (8, 6), (1, 2), (12, 9)])
def test_pooling_matches_caffe_loops(mode, stride, size):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, *size, 3)).astype(np.float32)
    layer = CaffePooling2D(mode, 3, stride, 1)
    got = layer(x).numpy()
    for n in range(2):
        want = caffe_pool(x[n].transpose(2, 0, 1).astype(np.float64), mode, 3, stride, 1)
        np.testing.assert_allclose(got[n], want.transpose(1, 2, 0), rtol=1e-5, atol=1e-6)


def test_pool5a_border_divides_by_nine():
    """Hand computation: 3x3 ones, avg 3x3 stride 1 pad 1. Corners see 4 ones, edges 6."""
    x = np.ones((1, 3, 3, 1), np.float32)
    got = CaffePooling2D("avg", 3, 1, 1)(x).numpy()[0, :, :, 0]
    want = np.array([[4, 6, 4], [6, 9, 6], [4, 6, 4]]) / 9.0
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_max_pool_never_picks_padding():
    x = -np.ones((1, 3, 3, 1), np.float32) * np.arange(1, 10, dtype=np.float32).reshape(1, 3, 3, 1)
    got = CaffePooling2D("max", 3, 2, 1)(x).numpy()[0, :, :, 0]
    # Windows cover rows/cols {0,1} and {1,2}: the max is the top-left in-image value.
    np.testing.assert_allclose(got, [[-1, -2], [-4, -5]])


def test_pooling_dynamic_shapes_inside_tf_function():
    layer = CaffePooling2D("avg", 3, 2, 1)
    fn = tf.function(layer.call, input_signature=[tf.TensorSpec([None, None, None, 2])])
    for size in [(5, 8), (9, 4)]:
        x = np.random.default_rng(1).normal(size=(1, *size, 2)).astype(np.float32)
        np.testing.assert_allclose(fn(x).numpy(), layer(x).numpy(), rtol=1e-6)


def test_pooling_static_shape_and_config():
    layer = CaffePooling2D("max", 3, 2, 1, name="p")
    assert layer.compute_output_shape((None, 320, None, 4)) == (None, 161, None, 4)
    symbolic = layer(keras.Input((320, 321, 4)))
    assert tuple(symbolic.shape) == (None, 161, 161, 4)
    clone = CaffePooling2D.from_config(layer.get_config())
    assert (clone.mode, clone.pool_size, clone.strides, clone.padding) == ("max", 3, 2, 1)


def test_pooling_rejects_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        CaffePooling2D("median")
    with pytest.raises(ValueError, match="padding"):
        CaffePooling2D("max", 3, 1, 3)


def test_keyed_dropout_masks_follow_the_example_not_the_batch():
    layer = KeyedDropout(0.5, name="drop6")
    x = tf.ones([4, 5, 5, 8])
    keys = tf.constant([[3, 10], [3, 11], [3, 12], [3, 13]], tf.int64)
    with example_keys(keys):
        whole = layer(x, training=True).numpy()
        again = layer(x, training=True).numpy()
    halves = []
    for i in (0, 2):  # each replica holds its share of the batch and of the keys
        with example_keys(keys[i : i + 2]):
            halves.append(layer(x[i : i + 2], training=True).numpy())
    # A batch split over two replicas drops what the whole batch drops; a second call (a
    # resumed run) too.
    np.testing.assert_array_equal(np.concatenate(halves), whole)
    np.testing.assert_array_equal(again, whole)
    assert set(np.unique(whole)) == {0.0, 2.0} and 0.3 < (whole == 0).mean() < 0.7
    assert not np.array_equal(whole[0], whole[1])  # each example its own mask
    with example_keys(keys):
        other = KeyedDropout(0.5, name="drop7")(x, training=True).numpy()
    assert not np.array_equal(other, whole)  # each layer its own masks
    np.testing.assert_array_equal(layer(x, training=False), x)  # inference: the identity
    assert isinstance(layer, keras.layers.Dropout)  # traced as Dropout by the unravel
    restored = KeyedDropout.from_config(layer.get_config())
    assert restored.rate == 0.5 and restored.name == "drop6"
