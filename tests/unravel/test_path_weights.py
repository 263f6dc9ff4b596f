"""Path weights (`path_weight="contribution"`): the engine against the naive reference, the
shares' conservation, the refusals, and the float weights through heat maps and files."""

import keras
import numpy as np
import pytest

from tests.unravel.test_attention import seeded, token_segmenter
from tests.unravel.test_engine import images, integer_weights
from tests.unravel_reference import naive_unravel
from tf_segunravel.unravel import FixationSettings, SegUnravel, UntraceableLayerError
from tf_segunravel.unravel.maps import heatmaps

L = keras.layers


def chain(*layers, channels=3):
    inp = keras.Input((None, None, channels))
    x = inp
    for layer in layers:
        x = layer(x) if not isinstance(layer, tuple) else layer[0]([x, layer[1](x)])
    return keras.Model(inp, x)


def residual():
    inp = keras.Input((None, None, 3))
    a = L.Conv2D(4, 3, padding="same", activation="relu")(inp)
    b = L.Conv2D(4, 3, padding="same", activation="relu")(a)
    c = L.Conv2D(4, 1)(a)
    merged = L.Concatenate()([L.Add()([b, c]), a])
    return keras.Model(inp, L.Conv2D(3, 1)(merged))


def vector_head():
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(4, 3, strides=2, activation="relu")(inp)
    x = L.Flatten()(x)
    x = L.Dense(6, activation="relu")(x)
    return keras.Model(inp, L.Dense(3)(x))


NETWORKS = {
    "convolutions": lambda: chain(
        L.Conv2D(4, 3, padding="same", activation="relu"),
        L.MaxPooling2D(2),
        L.Conv2D(5, 3, dilation_rate=2, padding="same", activation="relu"),
        L.Conv2D(3, 1),
    ),
    "grouped": lambda: chain(
        L.Conv2D(4, 3, padding="same", activation="relu"),
        L.Conv2D(4, 3, padding="same", groups=2, activation="relu"),
        L.Conv2D(3, 1),
    ),
    "separable_and_transpose": lambda: chain(
        L.SeparableConv2D(4, 3, strides=2, padding="same", activation="relu"),
        L.Conv2DTranspose(4, 3, strides=2, padding="same", activation="relu"),
        L.Conv2D(3, 1),
    ),
    "residual": residual,
}


def weights_of(result):
    pairs = zip(result.points, result.counts, strict=True)
    return {tuple(int(v) for v in p): float(c) for p, c in pairs}


@pytest.mark.parametrize("network", sorted(NETWORKS))
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"k": 3},
        {"mass": 0.5, "shift": "none"},
        # The fast suite's budget: these two run with the slow tests.
        pytest.param({"shift": "full", "k": 2}, marks=pytest.mark.slow),
        pytest.param({"mass": 0.6}, marks=pytest.mark.slow),
    ],
)
def test_the_weights_are_the_references_products_of_shares(network, options):
    """Every point's weight is the naive reference's sum over its paths of the products of
    the chosen channels' shares; the points are the count walk's."""
    model = integer_weights(NETWORKS[network]())
    batch = images((2, 12, 14, 3))
    got = SegUnravel(model, path_weight="contribution", **options)(batch)
    assert got.counts.dtype == np.float64
    want = naive_unravel(model, batch, path_weight="contribution", **options)
    assert weights_of(got).keys() == want.keys()
    for key, value in weights_of(got).items():
        assert value == pytest.approx(want[key], rel=1e-9, abs=1e-300), key
    counted = SegUnravel(model, **options)(batch)
    np.testing.assert_array_equal(got.points, counted.points)
    assert any(0 < v < 1 for v in weights_of(got).values())  # shares below 1 were taken


def test_a_dense_head_on_a_vector_is_weighed_as_the_reference():
    model = integer_weights(vector_head())
    batch = images((2, 8, 8, 3))
    for options in ({}, {"k": 2}, {"dense_rule": "positive"}):
        got = weights_of(SegUnravel(model, path_weight="contribution", **options)(batch))
        want = naive_unravel(model, batch, path_weight="contribution", **options)
        assert got.keys() == want.keys()
        assert all(got[key] == pytest.approx(want[key], rel=1e-9) for key in got)


def test_keeping_every_channel_conserves_each_seeds_unit_of_weight():
    """With every contribution positive and every channel kept, each unit hands on shares
    summing to 1, so a class's weights at the image sum to its number of seeds."""
    rng = np.random.default_rng(4)
    model = chain(
        L.Conv2D(5, 1, activation="relu"), L.Conv2D(4, 1, activation="relu"), L.Conv2D(3, 1)
    )
    model.set_weights([rng.uniform(0.1, 1.0, w.shape).astype("f4") for w in model.weights])
    batch = rng.uniform(1, 255, (1, 6, 7, 3)).astype("f4")
    result = SegUnravel(model, path_weight="contribution", k=5, shift="none")(batch)
    totals = np.bincount(result.points[:, 1], weights=result.counts, minlength=3)
    np.testing.assert_allclose(totals, result.seeds[0], rtol=1e-12)


def test_a_unit_without_positive_contribution_shares_equally():
    """All of the head's contributions are negative: each of the K children takes 1 / K."""
    model = chain(L.Conv2D(2, 1, activation="relu"), L.Conv2D(1, 1))
    model.set_weights(
        [
            np.ones((1, 1, 3, 2), "f4"),
            np.zeros(2, "f4"),
            -np.ones((1, 1, 2, 1), "f4"),
            np.zeros(1, "f4"),
        ]
    )
    batch = np.full((1, 2, 2, 3), 10.0, "f4")
    # One class: every position seeds it; the head's two channels each take half, and the
    # first layer's (all positive, equal) three input channels a third of that.
    result = SegUnravel(model, path_weight="contribution", k=2, shift="none")(batch)
    np.testing.assert_allclose(result.counts, np.full(4, 2 * 0.5 * (2 / 3)))


@pytest.mark.parametrize(
    "model, layer",
    [
        (lambda: seeded(token_segmenter()), "multi_head_attention"),
        (
            lambda: chain(L.SeparableConv2D(4, 3, depth_multiplier=2, name="sep"), L.Conv2D(3, 1)),
            "sep",
        ),
    ],
)
def test_layers_whose_choice_it_cannot_weigh_are_refused_by_name(model, layer):
    engine = SegUnravel(model(), path_weight="contribution")
    with pytest.raises(UntraceableLayerError, match=rf"'{layer}.*path_weight=contribution"):
        engine(np.random.default_rng(0).uniform(0, 255, (1, 16, 16, 3)).astype("f4"))


def test_heat_maps_of_weights_below_float32s_range_are_drawn():
    """Weights of 1e-70 (a deep network's products of shares) are drawn as their ratios."""
    points = np.array([[0, 0, 2, 3], [0, 0, 9, 9], [0, 1, 5, 5]], np.int32)
    tiny = np.array([3e-70, 1e-70, 2e-200], np.float64)
    plain = np.array([3, 1, 2], np.int64)
    args = {"batch": 1, "num_classes": 2, "height": 12, "width": 12, "sigma": 1.5}
    drawn = heatmaps(points, tiny, outlier_radius=0, **args).numpy()
    np.testing.assert_allclose(drawn, heatmaps(points, plain, outlier_radius=0, **args), atol=1e-6)
    assert drawn[0, 1].max() == 1.0 and drawn[0, 0, 2, 3] == 1.0


def test_the_fixation_writer_keeps_the_weights(tmp_path):
    from PIL import Image

    from tf_segunravel.fixation_files import FixationWriter
    from tf_segunravel.unravel import fixation_maps

    model = integer_weights(NETWORKS["convolutions"]())
    image = np.random.default_rng(2).integers(0, 8, (30, 26, 3)).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "photo.png")
    settings = FixationSettings(sigma=2.0, path_weight="contribution", k=2)
    writer = FixationWriter(model, str(tmp_path / "out"), settings)
    fixations = writer.compute(str(tmp_path / "photo.png"))
    writer.write(fixations)
    saved = np.load(tmp_path / "out" / "photo.npz")
    assert saved["counts"].dtype == np.float64
    result = SegUnravel(model, settings)(image[None])
    np.testing.assert_array_equal(saved["counts"], result.counts)
    want = fixation_maps(result, 30, 26, settings).numpy()[0][fixations.classes]
    np.testing.assert_allclose(saved["maps"], want, atol=1e-6)


@pytest.mark.slow  # exports and loads a SavedModel
def test_the_saved_models_fixations_carry_the_weights(tmp_path):
    import tensorflow as tf

    from tf_segunravel.export import export_saved_model

    model = integer_weights(NETWORKS["residual"]())
    settings = FixationSettings(sigma=2.0, path_weight="contribution", k=2)
    export_saved_model(model, str(tmp_path / "saved"), settings)
    image = np.random.default_rng(3).integers(0, 8, (1, 13, 11, 3)).astype(np.uint8)
    out = tf.saved_model.load(str(tmp_path / "saved")).signatures["fixations"](
        images=tf.constant(image)
    )
    want = SegUnravel(model, settings)(image.astype(np.float32))
    np.testing.assert_array_equal(out["points"].numpy(), want.points)
    np.testing.assert_array_equal(out["counts"].numpy(), want.counts)


@pytest.mark.slow  # a subprocess: the tool's own start
def test_the_fixation_tool_refuses_weights_through_attention_in_one_line(tmp_path):
    from PIL import Image

    from tests.helpers import run_tool

    seeded(token_segmenter()).save(tmp_path / "tokens.keras")
    image = np.random.default_rng(0).integers(0, 255, (16, 16, 3)).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "photo.png")
    proc = run_tool(
        "fixations",
        f"--model={tmp_path / 'tokens.keras'}",
        f"--images={tmp_path / 'photo.png'}",
        f"--output_dir={tmp_path / 'out'}",
        "--path_weight=contribution",
        "--sigma=2",
        timeout=300,
    )
    assert proc.returncode == 1
    line = proc.stderr.strip().splitlines()[-1]
    assert "tokens.keras" in line and "multi_head_attention" in line, proc.stderr[-2000:]
    assert "path_weight=contribution" in line
    assert not (tmp_path / "out").exists()


def test_the_tools_method_lists_name_the_flag_of_a_refused_method(tmp_path):
    """A weighted method asked of a network with attention: the experiments' `--methods`
    and the fixation tool's `--compare` name the flag and the method, one line."""
    from PIL import Image

    from tf_segunravel.baselines import predicted_regions
    from tf_segunravel.errors import InputError
    from tf_segunravel.experiments.faithfulness import _maps
    from tf_segunravel.fixation_files import FixationWriter
    from tf_segunravel.methods import MethodOptions
    from tf_segunravel.unravel.graph import ModelGraph

    model = seeded(token_segmenter())
    image = np.random.default_rng(0).integers(0, 255, (16, 16, 3)).astype(np.uint8)
    graph = ModelGraph(model)
    regions = predicted_regions(graph, image.astype(np.float32))
    with pytest.raises(InputError, match=r"^--methods=fixations_weighted: .*path_weight"):
        _maps("fixations_weighted", graph, image, [0], MethodOptions(), 0, regions)
    Image.fromarray(image).save(tmp_path / "photo.png")
    writer = FixationWriter(
        model, str(tmp_path / "out"), FixationSettings(sigma=2.0), compare=["fixations_k3_weighted"]
    )
    with pytest.raises(InputError, match=r"^--compare=fixations_k3_weighted: .*path_weight"):
        writer.compute(str(tmp_path / "photo.png"))
    assert not (tmp_path / "out").exists()
