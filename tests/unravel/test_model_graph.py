"""How ModelGraph reads a model: the score output, final activations, binary heads, fixed
input sizes and input settings (mechanics on small random networks; the trained networks'
end-to-end runs are in test_trained_models.py)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_segunravel.unravel import ScoreMap, SegUnravel
from tf_segunravel.unravel.graph import ModelGraph
from tf_segunravel.unravel.settings import InputSettings


def conv_net(input_shape=(None, None, 3), classes=3, activation=None, strides=1):
    images = keras.Input(input_shape)
    x = keras.layers.Conv2D(4, 3, strides=strides, padding="same", activation="relu")(images)
    return keras.Model(images, keras.layers.Conv2D(classes, 1, activation=activation)(x))


def images(height=12, width=10, batch=2):
    return np.random.default_rng(0).integers(0, 256, (batch, height, width, 3)).astype(np.float32)


def test_a_convs_own_softmax_is_stepped_over():
    model = conv_net(activation="softmax")
    graph = ModelGraph(model)
    assert graph.activation_inside and graph.stepped_over == [f"{model.layers[-1].name}.activation"]
    result = SegUnravel(model)(images())
    logits = keras.Model(model.inputs, model.layers[-1].output)
    model.layers[-1].activation = keras.activations.linear  # the same network without it
    np.testing.assert_allclose(result.scores, logits(images()).numpy(), atol=1e-4)
    np.testing.assert_array_equal(result.labels, np.argmax(result.scores, -1))


def test_the_same_points_with_and_without_a_final_activation_layer():
    plain = conv_net()
    ending = keras.Model(plain.inputs, keras.layers.Softmax()(plain.outputs[0]))
    a, b = SegUnravel(plain)(images()), SegUnravel(ending)(images())
    np.testing.assert_array_equal(a.points, b.points)
    np.testing.assert_allclose(a.scores, b.scores)


def test_outputs_are_picked_by_name_and_other_heads_are_left_out():
    base = conv_net()
    base.layers[-1].name = "scores"
    head = keras.layers.Flatten(name="flat")(base.layers[1].output)  # untraceable, unused
    model = keras.Model(base.inputs, [base.outputs[0], head])
    with pytest.raises(ValueError, match=r"2 outputs .* output=NAME"):
        ModelGraph(model)
    graph = ModelGraph(model, output="scores")
    assert all(step.layer.name != "flat" for step in graph.steps)
    inside = ModelGraph(model, output=base.layers[1].name)  # a layer's output inside
    assert inside.num_classes == 4 and len(inside.steps) == 1
    with pytest.raises(ValueError, match="no output or layer"):
        ModelGraph(model, output="missing")
    result = SegUnravel(model, output="scores")(images())
    np.testing.assert_array_equal(result.points, SegUnravel(base)(images()).points)


def test_binary_geometry_and_labels_on_a_strided_head():
    model = conv_net(classes=1, activation="sigmoid", strides=2)
    engine = SegUnravel(model)
    result = engine(images(16, 16))
    assert result.scores.shape == (2, 8, 8, 2) and engine.graph.class_names[1] == "foreground"
    np.testing.assert_allclose(result.scores[..., 0], -result.scores[..., 1])
    assert set(np.unique(result.points[:, 1])) <= {0, 1}
    # Contrast over the runner-up of two classes: each seed's margin over the other class.
    contrast = SegUnravel(model, contrast="runner_up")(images(16, 16))
    np.testing.assert_array_equal(contrast.seeds, result.seeds)


def test_a_fixed_size_model_maps_back_to_the_images_pixels():
    model = conv_net((8, 8, 3), strides=2)
    result = SegUnravel(model)(images(24, 16))
    assert (result.points[:, 2] < 24).all() and (result.points[:, 3] < 16).all()
    assert result.points[:, 2].max() > 16  # spread over the whole image, not its corner
    # Score i of 4 sits over pixel 2i + 1 of the 8-pixel input (its 3 x 3 window's centre);
    # pixel centres matched: 3(2i + 1 + 0.5) - 0.5 = 6i + 4 of 24, 4i + 2.5 of 16.
    np.testing.assert_allclose(result.geometry, [[6, 4], [4, 2.5]])
    scores, geometry = ScoreMap(model)(images(24, 16))
    np.testing.assert_allclose(geometry, result.geometry)
    np.testing.assert_allclose(scores, result.scores)
    resized = tf.image.resize(images(24, 16), (8, 8))
    np.testing.assert_allclose(scores, model(resized).numpy(), atol=1e-4)


def test_input_settings_are_applied_before_the_model():
    model = conv_net()
    settings = InputSettings(scale=2 / 255, mean=(1,), channels="bgr")
    x = images()
    want = model(x[..., ::-1] * 2 / 255 - 1).numpy()
    scores, _ = ScoreMap(model, input=settings)(x)
    np.testing.assert_allclose(scores, want, atol=1e-5)
    with pytest.raises(ValueError, match="mean must be one number or three"):
        InputSettings(mean=(1, 2))
    caffe = InputSettings(channels="bgr", mean=(104.008, 116.669, 122.675))
    np.testing.assert_allclose(
        caffe.apply(np.full((1, 1, 1, 3), [10, 20, 30], np.float32)).numpy().ravel(),
        [30 - 104.008, 20 - 116.669, 10 - 122.675],
        rtol=1e-6,
    )
