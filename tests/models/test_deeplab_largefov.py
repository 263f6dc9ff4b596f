"""DeepLab-LargeFOV: architecture, sizes, initialisation and serialisation."""

import keras
import numpy as np
import pytest

from tf_segunravel.models import deeplab_largefov, with_features
from tf_segunravel.models.layers import CaffePooling2D

EXPECTED_LAYERS = [
    "image",
    "preprocess",
    "conv1_1",
    "conv1_2",
    "pool1",
    "conv2_1",
    "conv2_2",
    "pool2",
    "conv3_1",
    "conv3_2",
    "conv3_3",
    "pool3",
    "conv4_1",
    "conv4_2",
    "conv4_3",
    "pool4",
    "conv5_1",
    "conv5_2",
    "conv5_3",
    "pool5",
    "pool5a",
    "fc6",
    "drop6",
    "fc7",
    "drop7",
    "fc8",
]


def caffe_output_size(size):
    """Independent: three stride-2 Caffe pools, ceil((s + 2 - 3) / 2) + 1, then stride 1."""
    for _ in range(3):
        size = -(-(size - 1) // 2) + 1
    return size


def test_full_size_parameter_count():
    assert deeplab_largefov().count_params() == 20_505_429


def test_layer_names_and_architecture():
    model = deeplab_largefov()
    assert [layer.name for layer in model.layers] == EXPECTED_LAYERS
    dilations = {layer.name: layer.dilation_rate for layer in model.layers if "conv" in layer.name}
    assert all(d == (2, 2) for name, d in dilations.items() if name.startswith("conv5"))
    assert all(d == (1, 1) for name, d in dilations.items() if not name.startswith("conv5"))
    assert model.get_layer("fc6").dilation_rate == (12, 12)
    assert model.get_layer("fc6").kernel_size == (3, 3)
    assert model.get_layer("fc7").kernel_size == (1, 1)
    strides = [model.get_layer(f"pool{i}").strides for i in range(1, 6)]
    assert strides == [2, 2, 2, 1, 1]
    pool5a = model.get_layer("pool5a")
    assert isinstance(pool5a, CaffePooling2D) and pool5a.mode == "avg" and pool5a.strides == 1
    assert model.get_layer("drop6").rate == 0.5 and model.get_layer("drop7").rate == 0.5
    assert model.get_layer("fc8").activation.__name__ == "linear"
    assert model.get_layer("fc7").activation.__name__ == "relu"


@pytest.mark.parametrize("size, expected", [(321, 41), (513, 65), (320, 41), (512, 65)])
def test_full_size_static_output_shape(size, expected):
    model = deeplab_largefov(input_shape=(size, size, 3))
    assert tuple(model.output.shape) == (None, expected, expected, 21)
    assert caffe_output_size(size) == expected


@pytest.mark.parametrize("height, width", [(321, 513), (64, 65), (33, 1), (100, 37)])
def test_tiny_model_runs_on_any_size(height, width):
    model = deeplab_largefov(num_classes=4, width=1 / 16)
    scores = model(np.zeros((2, height, width, 3), np.float32))
    assert tuple(scores.shape) == (2, caffe_output_size(height), caffe_output_size(width), 4)


def test_fc8_initialisation():
    kernel, bias = deeplab_largefov().get_layer("fc8").get_weights()
    assert abs(kernel.std() - 0.01) < 0.0005 and abs(kernel.mean()) < 0.0005
    assert not bias.any()


def test_width_scales_channels():
    model = deeplab_largefov(num_classes=3, width=0.25)
    assert model.get_layer("conv1_1").filters == 16
    assert model.get_layer("conv5_3").filters == 128
    assert model.get_layer("fc7").filters == 256


def test_with_features_shares_weights_and_matches_scores():
    model = deeplab_largefov(num_classes=3, width=1 / 16)
    both = with_features(model)
    image = np.random.default_rng(0).uniform(0, 255, (1, 40, 40, 3)).astype(np.float32)
    out = both(image, training=False)
    np.testing.assert_allclose(out["scores"], model(image, training=False), rtol=1e-5)
    side = caffe_output_size(40)
    assert tuple(out["features"].shape) == (1, side, side, 64)
    assert len(both.trainable_weights) == len(model.trainable_weights)


def test_keras_round_trip(tmp_path):
    model = deeplab_largefov(num_classes=3, width=1 / 16)
    path = str(tmp_path / "largefov.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    image = np.random.default_rng(0).uniform(0, 255, (1, 33, 47, 3)).astype(np.float32)
    np.testing.assert_allclose(loaded(image), model(image), rtol=1e-5, atol=1e-6)
    assert [layer.name for layer in loaded.layers] == EXPECTED_LAYERS


@pytest.mark.parametrize("kwargs", [{"num_classes": 0}, {"width": 0}, {"dropout": 1.0}])
def test_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        deeplab_largefov(**kwargs)
