"""The `seg_unravel_code` preset and each of its fields, point for point against the naive
reference (tests/unravel_reference.py), on integer weights so that ties are real ties."""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tests.helpers import last_line, run_tool, save_tiny_largefov
from tests.unravel.test_engine import CONVS, as_counter, conv_model, images, integer_weights
from tests.unravel_reference import naive_unravel
from tf_segunravel.models import deeplab_largefov
from tf_segunravel.models.layers import CaffePooling2D
from tf_segunravel.unravel import FixationSettings, SegUnravel
from tf_segunravel.unravel.settings import PRESETS

L = keras.layers
PRESET = FixationSettings.from_preset("seg_unravel_code")
UNRAVEL = {name: getattr(PRESET, name) for name in PRESET.UNRAVEL_FIELDS if name != "contrast"}


def both(model, batch, **options):
    """(engine, reference) point counters for `options` (weights already set)."""
    got = as_counter(SegUnravel(model, **options)(batch))
    return got, dict(naive_unravel(model, batch, **options))


def pooled_model(pool_mode="max"):
    """Stride-4 scores over Caffe pooling: a 4 (h - 1) + 1 canvas is what Caffe's Interp
    zooms back, so upsampled seeds are defined as the authors' code takes them. (Weight
    seed 5 predicts two classes on `images()`, so seeds meet at class borders.)"""
    inp = keras.Input((None, None, 3))
    x = L.Conv2D(4, 3, padding="same", activation="relu")(inp)
    x = CaffePooling2D(pool_mode, 3, 2, 1)(x)
    x = L.Conv2D(5, 3, padding="same", activation="relu")(x)
    x = CaffePooling2D(pool_mode, 3, 2, 1)(x)
    return integer_weights(keras.Model(inp, L.Conv2D(4, 1)(x)), seed=5)


def test_preset_fields_and_overrides():
    assert PRESETS["seg_unravel_code"]["shift"] == "full"
    assert (PRESET.seeding, PRESET.ties, PRESET.padded_taps) == ("upsampled", "last", True)
    assert PRESET.resize_mapping == "corners" and not PRESET.weighted
    mixed = FixationSettings.from_preset("seg_unravel_code", k=3, ties="first")
    assert (mixed.k, mixed.ties, mixed.seeding) == (3, "first", "upsampled")
    with pytest.raises(ValueError, match="unknown preset 'nope'; presets: seg_unravel_code"):
        FixationSettings.from_preset("nope")
    with pytest.raises(ValueError, match="ties must be one of"):
        FixationSettings(ties="middle")


@pytest.mark.parametrize("kernel, stride, dilation, padding", CONVS)
def test_ties_last(kernel, stride, dilation, padding):
    model = integer_weights(conv_model(kernel, stride, dilation, padding))
    got, want = both(model, images(), shift="full", ties="last")
    assert got == want


@pytest.mark.parametrize("kernel, stride, dilation, padding", CONVS)
def test_padded_taps(kernel, stride, dilation, padding):
    model = integer_weights(conv_model(kernel, stride, dilation, padding))
    for ties in ("first", "last"):
        got, want = both(model, images(), shift="full", padded_taps=True, ties=ties)
        assert got == want


def test_each_option_moves_points():
    """The options are not no-ops: on these integer-weight models each one changes points."""
    model = integer_weights(conv_model(3, 1, 1, "same"))
    batch = images()
    plain = as_counter(SegUnravel(model, shift="full")(batch))
    assert as_counter(SegUnravel(model, shift="full", ties="last")(batch)) != plain
    inp = keras.Input((None, None, 3))
    signed = L.Conv2D(4, 3, padding="same")(inp)
    pooled = integer_weights(keras.Model(inp, L.Conv2D(3, 1)(L.MaxPooling2D(3, 2, "same")(signed))))
    kernel, bias = pooled.layers[1].get_weights()
    pooled.layers[1].set_weights([-np.abs(kernel) - 1, bias])  # all negative: zeros win
    assert as_counter(SegUnravel(pooled, padded_taps=True)(batch)) != (
        as_counter(SegUnravel(pooled)(batch))
    )
    pooled, canvas = pooled_model(), images(shape=(2, 17, 21, 3))
    grid = SegUnravel(pooled)(canvas)
    upsampled = SegUnravel(pooled, seeding="upsampled")(canvas)
    assert (upsampled.seeds >= grid.seeds).all() and upsampled.seeds.sum() > grid.seeds.sum()


POOLS = {
    "max2": lambda: L.MaxPooling2D(2),
    "max3s2same": lambda: L.MaxPooling2D(3, 2, padding="same"),
    "avg3same": lambda: L.AveragePooling2D(3, 1, padding="same"),
    "caffe_max3s2p1": lambda: CaffePooling2D("max", 3, 2, 1),
    "caffe_avg3s1p1": lambda: CaffePooling2D("avg", 3, 1, 1),
    "caffe_max3s2p2": lambda: CaffePooling2D("max", 3, 2, 2),
}


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("ties", ["first", "last"])
def test_pooling_with_padded_taps(pool, ties):
    inp = keras.Input((None, None, 3))
    # No ReLU: signed inputs, so a padded zero can beat every inside value.
    x = L.Conv2D(4, 3, padding="same")(inp)
    model = integer_weights(keras.Model(inp, L.Conv2D(3, 1)(POOLS[pool]()(x))))
    got, want = both(model, images(), padded_taps=True, ties=ties)
    assert got == want


def test_depthwise_and_global_pooling_with_preset_ties():
    inp = keras.Input((None, None, 3))
    x = L.DepthwiseConv2D(3, padding="same", depth_multiplier=2)(inp)
    a = L.Conv2D(6, 1, activation="relu")(x)
    x = L.Add()([a, L.ReLU()(x)])
    x = L.GlobalMaxPooling2D()(x)
    model = integer_weights(keras.Model(inp, L.Dense(4)(x)))
    for options in ({"shift": "full", "padded_taps": True, "ties": "last"}, {"ties": "last"}):
        got, want = both(model, images(shape=(3, 9, 8, 3)), **options)
        assert got == want


@pytest.mark.parametrize("layer", [L.Resizing(9, 7), L.UpSampling2D(2)])
def test_resize_corners(layer):
    inp = keras.Input((12, 10, 3))
    x = L.Conv2D(4, 3, strides=2, padding="same", activation="relu")(inp)
    model = integer_weights(keras.Model(inp, L.Conv2D(3, 1)(layer(x))))
    batch = images(shape=(2, 12, 10, 3))
    got, want = both(model, batch, resize_mapping="corners")
    assert got == want
    assert got != as_counter(SegUnravel(model)(batch))


@pytest.mark.parametrize("pool_mode", ["max", "avg"])
def test_upsampled_seeds(pool_mode):
    model = pooled_model(pool_mode)
    got, want = both(model, images(shape=(2, 17, 21, 3)), seeding="upsampled")
    assert got == want


def test_preset_as_a_whole():
    model, canvas = pooled_model(), images(shape=(2, 17, 21, 3))
    for options in ({**UNRAVEL, "k": 2}, UNRAVEL):
        got, want = both(model, canvas, **options)
        assert got == want
    assert as_counter(SegUnravel(model, PRESET)(canvas)) == want
    assert want != as_counter(SegUnravel(model)(canvas))


@pytest.mark.slow
def test_preset_on_largefov():
    model = integer_weights(deeplab_largefov(num_classes=4, width=1 / 16), seed=3)
    # 33 x 41 is a canvas of Caffe's Interp: scores 5 x 6, zoomed x8 back to 33 x 41.
    batch = np.random.default_rng(2).integers(0, 8, (1, 33, 41, 3)).astype(np.float32)
    got, want = both(model, batch, **UNRAVEL)
    assert got == want
    assert got != as_counter(SegUnravel(model)(batch))


@pytest.fixture(scope="module")
def tool_models(tmp_path_factory):
    """A tiny LargeFOV and a keras.applications network (MobileNetV2, weights=None, a fixed
    64 x 64 input), saved as .keras, and one test image."""
    root = tmp_path_factory.mktemp("preset")
    largefov = save_tiny_largefov(root / "largefov.keras", num_classes=3)
    keras.utils.set_random_seed(0)
    zoo = keras.applications.MobileNetV2(
        weights=None, input_shape=(64, 64, 3), alpha=0.35, classes=5
    )
    zoo.save(root / "mobilenet.keras")
    image = np.random.default_rng(3).integers(0, 256, (33, 41, 3), dtype=np.uint8)
    Image.fromarray(image).save(root / "a.png")
    return root, largefov, zoo, image


@pytest.mark.slow
def test_fixation_tool_preset_on_largefov_and_a_zoo_model(tool_models):
    root, largefov, zoo, image = tool_models
    batch = image[None].astype(np.float32)
    runs = [
        ("largefov", largefov, [], PRESET),
        (
            "largefov",
            largefov,
            ["--ties=first", "--k=2"],
            dataclasses.replace(PRESET, ties="first", k=2),
        ),
        ("mobilenet", zoo, [], PRESET),
    ]
    for number, (name, model, extra, settings) in enumerate(runs):
        out = root / f"out{number}"
        proc = run_tool(
            "fixations",
            f"--model={root / name}.keras",
            f"--images={root / 'a.png'}",
            f"--output_dir={out}",
            "--preset=seg_unravel_code",
            *extra,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        data = np.load(out / "a.npz")
        engine = SegUnravel(model, settings)(batch)
        np.testing.assert_array_equal(data["points"], engine.for_image(0)[0])
        np.testing.assert_array_equal(data["counts"], engine.for_image(0)[1])


@pytest.mark.slow
def test_export_records_the_preset_and_the_tool_holds_to_it(tool_models):
    root, largefov, _, image = tool_models
    common = [f"--model={root / 'largefov.keras'}"]
    for name, extra in (("preset_sm", ["--preset=seg_unravel_code"]), ("plain_sm", [])):
        proc = run_tool("export", *common, f"--export_dir={root / name}", *extra)
        assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = tf.saved_model.load(str(root / "preset_sm"))
    metadata = {k: v.numpy().decode() for k, v in loaded.signatures["metadata"]().items()}
    for field, value in PRESETS["seg_unravel_code"].items():
        assert metadata[field] == str(value), field
    fixations = loaded.signatures["fixations"](images=tf.constant(image[None]))
    engine = SegUnravel(largefov, PRESET)(image[None].astype(np.float32))
    np.testing.assert_array_equal(fixations["points"].numpy(), engine.points)
    images = [f"--images={root / 'a.png'}"]
    proc = run_tool(
        "fixations",
        f"--model={root / 'preset_sm'}",
        *images,
        f"--output_dir={root / 'from_preset_sm'}",
        "--preset=seg_unravel_code",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_tool(
        "fixations",
        f"--model={root / 'plain_sm'}",
        *images,
        f"--output_dir={root / 'refused'}",
        "--preset=seg_unravel_code",
    )
    assert proc.returncode == 1
    assert "--preset=seg_unravel_code: " in last_line(proc.stderr)
    assert "was exported with --shift=partial" in last_line(proc.stderr)
    assert not (root / "refused").exists()
