"""Explanation baselines: each method's map has the image's size, lies in [0, 1], and for a
3 x 3 network reads only the region's pixels and their 1-pixel border; bad input is an
InputError naming what to fix."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_segunravel import baselines
from tf_segunravel.errors import InputError
from tf_segunravel.unravel.graph import ModelGraph

pytestmark = pytest.mark.skipif(not baselines.available(), reason=baselines.INSTALL_HINT)


@pytest.fixture(scope="module")
def graph():
    keras.utils.set_random_seed(4)
    images = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="features")(images)
    scores = keras.layers.Conv2D(3, 1, name="scores")(x)
    return ModelGraph(keras.Model(images, keras.layers.Softmax()(scores)))


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(1).integers(0, 256, (20, 24, 3)).astype(np.uint8)


def predicted(graph, image):
    from tf_segunravel.unravel import ScoreMap

    return np.argmax(ScoreMap(graph).at_image_size(image[None].astype(np.float32))[0], -1)


@pytest.mark.parametrize("method", baselines.GRADIENT_METHODS)
def test_gradient_maps_read_only_the_region_and_its_border(graph, image, method):
    labels = predicted(graph, image)
    classes = [int(c) for c in np.unique(labels)]
    maps = baselines.explain(method, graph, image, classes)
    assert maps.shape == (len(classes), 20, 24) and maps.min() >= 0
    for cls, heat in zip(classes, maps, strict=True):
        assert heat.max() == pytest.approx(1.0)
        if method in ("gradcam", "gradcam_plus_plus", "scorecam"):
            continue  # CAMs weigh whole feature maps: their support is not local
        region = labels == cls
        border = np.zeros_like(region)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                border |= np.roll(np.roll(region, dy, 0), dx, 1)
        assert not heat[~border].any(), method


def test_references(graph, image):
    labels = predicted(graph, image)
    cls = int(np.bincount(labels.ravel()).argmax())
    random_map = baselines.explain("random", graph, image, [cls])
    np.testing.assert_array_equal(random_map, baselines.explain("random", graph, image, [cls]))
    segment = baselines.explain("segment_prior", graph, image, [cls])[0]
    assert segment[labels == cls].mean() > segment[labels != cls].mean()
    distance = baselines.explain("distance_prior", graph, image, [cls])[0]
    assert (distance[labels == cls] == 1).all() and (distance[labels != cls] <= 0.5).all()


def test_gradcam_layer_defaults_to_a_spatial_convolution_and_bad_input_is_named(graph, image):
    assert baselines.default_layer(graph) == "features"
    with pytest.raises(InputError, match="gradcam_layer=nope: no such layer"):
        baselines.explain("gradcam", graph, image, [0], layer="nope")
    with pytest.raises(InputError, match=r"methods: unknown \['lime'\]"):
        baselines.check_methods(["lime"])


def test_without_the_extra_the_gradient_methods_say_how_to_install(monkeypatch):
    monkeypatch.setattr(baselines, "available", lambda: False)
    with pytest.raises(InputError, match=r"gradcam_plus_plus, saliency needs the baselines"):
        baselines.check_methods(["gradcam_plus_plus", "saliency", "gradient_x_input"])
    kept = ["gradcam", "gradient_x_input", "random"]
    assert baselines.check_methods(kept) == kept


def test_smoothgrad_leaves_the_callers_random_state_alone(graph, image):
    """SmoothGrad's noise is seeded without resetting TensorFlow's global seed (a reset makes
    every compiled unravel rebuild its function on its next call: 1.5-3 s per image on a
    width-1/16 LargeFOV, which the faithfulness cost then counted) or the caller's numpy
    stream."""
    import tensorflow as tf

    classes = [int(c) for c in np.unique(predicted(graph, image))]
    tf.random.set_seed(21)
    np.random.seed(11)  # noqa: NPY002 (the legacy stream tf-keras-vis draws from)
    expected = (tf.random.uniform([]).numpy(), np.random.random())  # noqa: NPY002
    tf.random.set_seed(21)
    np.random.seed(11)  # noqa: NPY002
    first = baselines.explain("smoothgrad", graph, image, classes, seed=3)
    assert (tf.random.uniform([]).numpy(), np.random.random()) == expected  # noqa: NPY002
    again = baselines.explain("smoothgrad", graph, image, classes, seed=3)
    np.testing.assert_array_equal(first, again)


@pytest.mark.parametrize("layer", ["features", "scores"])
def test_compiled_gradcam_is_tf_keras_vis_gradcam_for_every_class_at_once(graph, image, layer):
    """The compiled, class-batched Grad-CAM against tf-keras-vis' Gradcam (the reference),
    class by class, on the predicted regions; and on a LargeFOV at width 1/16 at fc6."""
    classes = [0, 1, 2]
    compiled = baselines.explain("gradcam", graph, image, classes, layer=layer)
    reference = baselines.explain("gradcam", graph, image, classes, layer=layer, reference=True)
    np.testing.assert_allclose(compiled, reference, atol=1e-4)


@pytest.fixture(scope="module")
def largefov_quadrants():
    """A width-1/16 LargeFOV with random weights, an image (33 x 41) and four classes over
    its quadrants, on the score grid (stride 8) and the image, so that a batch holds several
    classes whatever this random network predicts: (graph, image, classes, regions)."""
    from tf_segunravel.models.deeplab_largefov import deeplab_largefov

    keras.utils.set_random_seed(2)
    model = deeplab_largefov(num_classes=4, width=1 / 16)
    rng = np.random.default_rng(3)
    model.set_weights([rng.standard_normal(w.shape).astype("f4") * 0.05 for w in model.weights])
    large = ModelGraph(model)
    image = rng.integers(0, 256, (33, 41, 3)).astype(np.uint8)
    h, w = baselines.predicted_regions(large, image)[0].shape
    grid = np.add.outer(np.arange(h) >= h // 2, 2 * (np.arange(w) >= w // 2)).astype(int)
    full = np.add.outer(np.arange(33) >= 16, 2 * (np.arange(41) >= 20)).astype(int)
    return large, image, [0, 1, 2, 3], (grid, full)


@pytest.mark.parametrize("method", ["gradcam", "scorecam"])
def test_a_compiled_cam_is_its_reference_on_largefov(largefov_quadrants, method):
    """Grad-CAM compiled against tf-keras-vis' Gradcam; Score-CAM compiled (masked images in
    batches, every class from the same passes) against `scorecam_reference`'s loops; at
    fc6, four classes at once."""
    large, image, classes, regions = largefov_quadrants
    compiled = baselines.explain(method, large, image, classes, regions=regions)
    reference = baselines.explain(method, large, image, classes, regions=regions, reference=True)
    assert (compiled.reshape(4, -1).max(axis=1) == 1).sum() >= 2  # several classes have maps
    np.testing.assert_allclose(compiled, reference, atol=1e-4)


def test_scorecam_refuses_a_layer_whose_masks_would_not_fit(largefov_quadrants, monkeypatch):
    """One mask per channel at the input's size: over SCORECAM_MAX_BYTES, a one-line error
    names the layer, its channels and layers that fit, before any masked pass runs."""
    from tf_segunravel.errors import InputError

    large, image, classes, regions = largefov_quadrants
    channels = int(large.model.get_layer("fc6").output.shape[-1])
    fed = large.feed(tf.constant(image[None], tf.float32))
    one_mask = int(fed.shape[1]) * int(fed.shape[2]) * 4
    monkeypatch.setattr(baselines, "SCORECAM_MAX_BYTES", one_mask * (channels - 1))
    message = (
        rf"gradcam_layer=fc6: Score-CAM holds one mask per channel, {channels} of "
        rf"{fed.shape[1]} x {fed.shape[2]} \(.* GiB\); pass a layer with at most "
        rf"{channels - 1} channels \(here: fc8"
    )
    with pytest.raises(InputError, match=message):
        baselines.explain("scorecam", large, image, classes, layer="fc6", regions=regions)
    monkeypatch.setattr(baselines, "SCORECAM_MAX_BYTES", one_mask * channels)
    baselines.explain("scorecam", large, image, classes, layer="fc6", regions=regions)
