"""CaffePreprocess and CaffePooling2D against Caffe's arithmetic; KeyedDropout's masks;
AtrousConv2D against Keras' own dilated convolution."""

import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.caffe_reference import pool as caffe_pool
from tests.helpers import run_command
from tests.layer_testing import run_layer_test
from tf_segunravel.models.layers import (
    AtrousConv2D,
    CaffePooling2D,
    CaffePreprocess,
    KeyedDropout,
    _direct_dilation_works,
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


def _value_and_gradients(layer, x):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
        loss = tf.reduce_sum(y * tf.cos(y))  # an uneven weighting of the outputs
    return [y, *tape.gradient(loss, [x, layer.kernel, layer.bias])]


@pytest.mark.parametrize(
    "dilation, size, padding",
    [
        (2, (13, 13), "same"),
        (12, (13, 13), "same"),
        (4, (9, 7), "same"),
        ((2, 3), (10, 11), "valid"),
    ],
)
def test_atrous_conv_is_keras_conv_in_value_and_gradients(dilation, size, padding):
    x = tf.constant(np.random.default_rng(0).normal(size=(2, *size, 5)), tf.float32)
    atrous = AtrousConv2D(6, 3, padding=padding, dilation_rate=dilation)
    keras_conv = keras.layers.Conv2D(6, 3, padding=padding, dilation_rate=dilation)
    keras_conv.build(x.shape)
    atrous.build(x.shape)
    keras_conv.set_weights(atrous.get_weights())
    for got, want in zip(
        _value_and_gradients(atrous, x), _value_and_gradients(keras_conv, x), strict=True
    ):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5)


def _op_types(layer, shape):
    graph = tf.function(layer).get_concrete_function(tf.TensorSpec(shape, tf.float32)).graph
    return {op.type for op in graph.get_operations()}


def test_atrous_conv_runs_as_one_op_where_tensorflow_can():
    # oneDNN (TensorFlow's default on x86 CPUs, as here) runs dilated gradients: one Conv2D,
    # where Keras' own layer takes three ops (space-to-batch, convolve, batch-to-space).
    assert _direct_dilation_works("float32")
    atrous = AtrousConv2D(4, 3, padding="same", dilation_rate=12)
    assert "SpaceToBatchND" not in _op_types(atrous, (1, 13, 13, 3))
    keras_conv = keras.layers.Conv2D(4, 3, padding="same", dilation_rate=12)
    assert "SpaceToBatchND" in _op_types(keras_conv, (1, 13, 13, 3))
    # Undilated, it is Keras' convolution unchanged.
    assert _op_types(AtrousConv2D(4, 3, padding="same"), (1, 13, 13, 3)) == _op_types(
        keras.layers.Conv2D(4, 3, padding="same"), (1, 13, 13, 3)
    )


def test_atrous_conv_falls_back_where_tensorflow_refuses_dilated_gradients():
    # TensorFlow's own CPU kernels (oneDNN off) refuse a dilated input gradient; the probe
    # says so and the layer keeps Keras' form, so a LargeFOV still trains there.
    script = (
        "import keras, tensorflow as tf\n"
        "from tf_segunravel.models import deeplab_largefov\n"
        "from tf_segunravel.models.layers import _direct_dilation_works\n"
        "assert not _direct_dilation_works('float32')\n"
        "model = deeplab_largefov(num_classes=3, width=1 / 16, direct_dilation=True)\n"
        "x = tf.random.uniform([2, 33, 33, 3], 0, 255)\n"
        "with tf.GradientTape() as tape:\n"
        "    loss = tf.reduce_sum(model(x, training=True))\n"
        "grads = tape.gradient(loss, model.trainable_variables)\n"
        "assert all(bool(tf.reduce_all(tf.math.is_finite(g))) for g in grads)\n"
        "print('fell back and trained')\n"
    )
    proc = run_command([sys.executable, "-c", script], env={"TF_ENABLE_ONEDNN_OPTS": "0"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fell back and trained" in proc.stdout


def test_atrous_conv_is_a_well_behaved_keras_layer():
    kwargs = {
        "filters": 4,
        "kernel_size": 3,
        "padding": "same",
        "dilation_rate": 2,
        "kernel_initializer": keras.initializers.GlorotUniform(seed=1),
    }
    run_layer_test(AtrousConv2D, kwargs, input_channels=3, low=-1.0, high=1.0)


def test_largefov_dilates_through_atrous_convs_when_asked():
    from tf_segunravel.models import deeplab_largefov

    model = deeplab_largefov(num_classes=3, width=1 / 16, direct_dilation=True)
    dilated = {layer.name for layer in model.layers if isinstance(layer, AtrousConv2D)}
    assert dilated == {"conv5_1", "conv5_2", "conv5_3", "fc6"}
    assert all(max(model.get_layer(name).dilation_rate) > 1 for name in dilated)
    # By default every layer is Keras' own (the documented numbers were trained so).
    default = deeplab_largefov(num_classes=3, width=1 / 16)
    assert not any(isinstance(layer, AtrousConv2D) for layer in default.layers)
