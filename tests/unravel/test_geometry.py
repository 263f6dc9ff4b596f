"""Where the score grid sits on the image: derived from the layers, checked against each
score position's receptive field, and used where scores meet pixels."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tests.helpers import run_tool
from tf_segunravel.grids import labels_at_size
from tf_segunravel.models import deeplab_largefov
from tf_segunravel.unravel import SegUnravel
from tf_segunravel.unravel.geometry import ScoreMap

L = keras.layers


@pytest.mark.parametrize("size", [(35, 30), (41, 41), (64, 50)])
def test_largefov_is_deeplabs_score_i_over_pixel_8i(size):
    model = deeplab_largefov(num_classes=3, width=1 / 16)
    _, geometry = ScoreMap(model)(np.zeros((1, *size, 3), np.float32))
    np.testing.assert_array_equal(geometry.numpy(), [[8.0, 0.0], [8.0, 0.0]])


def receptive_centres(model, size):
    """Per axis, the centre of the input pixels that reach each score position: the middle
    of the support of d score / d image, from a gradient (an independent route)."""
    image = tf.Variable(tf.ones((1, *size, 1)))
    with tf.GradientTape() as tape:
        scores = model(image)[0, ..., 0]
    jacobian = np.abs(tape.jacobian(scores, image).numpy()[:, :, 0, ..., 0])  # [h, w, H, W]
    height, width = scores.shape
    centres = np.full((height, width, 2), np.nan)
    extents = np.zeros((height, width, 2))
    for i in range(height):
        for j in range(width):
            ys, xs = np.nonzero(jacobian[i, j] > 0)
            centres[i, j] = ((ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2)
            extents[i, j] = (ys.max() - ys.min(), xs.max() - xs.min())
    # Where the image's border clips a window, its visible centre moves: keep whole ones.
    whole = (extents == extents.max(axis=(0, 1))).all(axis=-1)
    centres[~whole] = np.nan
    return centres


def positive_model(*layers):
    """Linear layers with positive weights, so every input in a window reaches the output."""
    source = keras.Input((None, None, 1))
    x = source
    for layer in layers:
        x = layer(x)
    model = keras.Model(source, x)
    for layer in model.layers:
        if layer.weights:
            layer.set_weights([np.ones_like(w) for w in layer.get_weights()])
    return model


WINDOWS = {
    "valid 3x3, pool 2 valid": [L.Conv2D(1, 3), L.AveragePooling2D(2)],
    "same stride 2": [L.Conv2D(1, 3, strides=2, padding="same")],
    "same stride 2, 4x4": [L.Conv2D(1, 4, strides=2, padding="same")],
    "dilated valid": [L.Conv2D(1, 3, dilation_rate=3)],
    "zero padding, crop": [L.ZeroPadding2D(((2, 0), (1, 3))), L.Conv2D(1, 3), L.Cropping2D(1)],
    "average pool same 3 stride 2": [L.AveragePooling2D(3, strides=2, padding="same")],
    "depthwise stride 2": [L.DepthwiseConv2D(5, strides=2, padding="same")],
    "separable": [L.SeparableConv2D(1, 3, strides=2)],
    "stacked": [L.Conv2D(1, 7, strides=2, padding="same"), L.AveragePooling2D(3, 2, "same")],
}


@pytest.mark.parametrize("name", WINDOWS)
@pytest.mark.parametrize("size", [(23, 20), (24, 21)])
def test_geometry_is_the_receptive_fields_centre(name, size):
    model = positive_model(
        *[layer.__class__.from_config(layer.get_config()) for layer in WINDOWS[name]]
    )
    _, geometry = ScoreMap(model)(np.ones((1, *size, 1), np.float32))
    (scale_y, offset_y), (scale_x, offset_x) = geometry.numpy()
    centres = receptive_centres(model, size)
    checked = 0
    for i, j in zip(*np.nonzero(~np.isnan(centres[..., 0])), strict=True):
        got = (scale_y * i + offset_y, scale_x * j + offset_x)
        assert got == pytest.approx(tuple(centres[i, j])), (i, j)
        checked += 1
    assert checked >= 4


def test_transposed_convolution_and_upsampling_invert_strides():
    source = keras.Input((None, None, 1))
    x = L.Conv2D(1, 3, strides=2, padding="same")(source)
    x = L.Conv2DTranspose(1, 3, strides=2, padding="same")(x)
    _, geometry = ScoreMap(keras.Model(source, x))(np.zeros((1, 16, 16, 1), np.float32))
    np.testing.assert_allclose(geometry.numpy(), [[1.0, 0.0], [1.0, 0.0]])
    source = keras.Input((None, None, 1))
    x = L.AveragePooling2D(2)(source)  # position j over pixel 2j + 0.5
    x = L.UpSampling2D(2)(x)  # back to pixel j
    _, geometry = ScoreMap(keras.Model(source, x))(np.zeros((1, 16, 16, 1), np.float32))
    np.testing.assert_allclose(geometry.numpy(), [[1.0, 0.0], [1.0, 0.0]])


@pytest.mark.parametrize("coarse_first", [True, False])
def test_a_merge_follows_the_branch_that_stayed_finest(coarse_first):
    """A fine branch (stride 2, pixel 2j + 0.5) and a coarse one (a strided 1x1 convolution
    on it, pixel 4j + 0.5, resized back to stride 2: pixel 2j - 0.5), concatenated in
    either order: the map follows the fine branch, whose positions were last located
    exactly; so does the engine's, traced."""
    source = keras.Input((32, 32, 3))
    fine = L.AveragePooling2D(2)(source)
    coarse = L.UpSampling2D(2, interpolation="bilinear")(L.Conv2D(3, 1, strides=2)(fine))
    merged = L.Concatenate()([coarse, fine] if coarse_first else [fine, coarse])
    model = keras.Model(source, L.Conv2D(2, 1)(merged))
    _, geometry = ScoreMap(model)(np.zeros((1, 32, 32, 3), np.float32))
    np.testing.assert_allclose(geometry.numpy(), [[2.0, 0.5], [2.0, 0.5]])
    traced = SegUnravel(model)(np.zeros((1, 32, 32, 3), np.float32)).geometry
    np.testing.assert_allclose(np.asarray(traced), [[2.0, 0.5], [2.0, 0.5]])


def red_detector(path=None):
    """Stride 2, valid padding: class 1 where a 3x3 window's red mean exceeds 128, so score
    position i sits over pixel 2i + 1.5, not DeepLab's 8i."""
    source = keras.Input((None, None, 3))
    x = L.Conv2D(1, 3, name="red")(source)
    x = L.MaxPooling2D(2)(x)
    scores = L.Conv2D(2, 1, name="score")(x)
    model = keras.Model(source, scores)
    red = np.zeros((3, 3, 3, 1), np.float32)
    red[:, :, 0, 0] = 1 / 9
    model.get_layer("red").set_weights([red, np.zeros(1, np.float32)])
    model.get_layer("score").set_weights(
        [np.array([[[[0.0, 1.0]]]], np.float32), np.array([128.0, 0.0], np.float32)]
    )
    if path is not None:
        model.save(path)
    return model


def red_square(size=40, top=20, side=8):
    image = np.zeros((size, size, 3), np.uint8)
    image[top : top + side, top : top + side, 0] = 255
    return image


def test_labels_land_where_the_score_grid_says():
    model = red_detector()
    image = red_square()
    result = SegUnravel(model)(image[None].astype(np.float32))
    np.testing.assert_allclose(result.geometry, [[2.0, 1.5], [2.0, 1.5]])
    labels = labels_at_size(result.scores, 40, 40, result.geometry)[0].numpy()
    square = np.zeros((40, 40), bool)
    square[20:28, 20:28] = True
    assert labels[square].mean() > 0.6 and labels[~square].mean() < 0.05
    # DeepLab's x8 rule would have put the whole map on score positions 0..4: no class 1.
    assert not labels_at_size(result.scores, 40, 40)[0].numpy().any()


@pytest.mark.slow
def test_fixation_tool_places_a_stride_2_models_labels(tmp_path):
    red_detector(tmp_path / "red.keras")
    (tmp_path / "images").mkdir()
    Image.fromarray(red_square()).save(tmp_path / "images" / "square.png")
    proc = run_tool(
        "fixations",
        f"--model={tmp_path / 'red.keras'}",
        f"--images={tmp_path / 'images'}",
        f"--output_dir={tmp_path / 'out'}",
        "--sigma=2",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    arrays = np.load(tmp_path / "out" / "square.npz")
    assert arrays["labels"][20:28, 20:28].mean() > 0.6
    stats = json.loads((tmp_path / "out" / "square.json").read_text())["classes"]
    assert stats["1"]["inside_predicted"] > 0.9
