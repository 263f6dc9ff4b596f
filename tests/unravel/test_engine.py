"""The vectorised engine against the naive per-point reference, point for point."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.unravel_reference import naive_unravel
from tf_segunravel.models import deeplab_largefov
from tf_segunravel.models.layers import CaffePooling2D
from tf_segunravel.unravel import (
    FixationSettings,
    SegUnravel,
    UntraceableLayerError,
    register_rule,
)

L = keras.layers


def integer_weights(model, seed=0):
    """Small integer weights: float32 arithmetic is then exact and ties are real ties."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if layer.weights and not isinstance(layer, L.BatchNormalization):
            layer.set_weights(
                [
                    rng.integers(-2, 3, w.shape).astype(np.float32)
                    if w.ndim > 1
                    else np.zeros(w.shape, np.float32)
                    for w in layer.get_weights()
                ]
            )
    return model


def images(shape=(2, 19, 23, 3), seed=1):
    return np.random.default_rng(seed).integers(0, 8, shape).astype(np.float32)


def as_counter(result):
    return {
        tuple(int(v) for v in p): int(c) for p, c in zip(result.points, result.counts, strict=True)
    }


def check(model, batch, **options):
    model = integer_weights(model)
    got = as_counter(SegUnravel(model, **options)(batch))
    want = dict(naive_unravel(model, batch, **options))
    assert got == want
    return got


def conv_model(kernel, stride, dilation, padding, classes=3):
    inp = keras.Input((None, None, 3))
    x = L.Conv2D(
        4, kernel, strides=stride, dilation_rate=dilation, padding=padding, activation="relu"
    )(inp)
    x = L.Conv2D(5, 3, padding="same", activation="relu")(x)
    return keras.Model(inp, L.Conv2D(classes, 1)(x))


CONVS = [
    (1, 1, 1, "same"),
    (3, 1, 1, "same"),
    (3, 2, 1, "same"),
    (5, 1, 1, "valid"),
    (5, 2, 1, "same"),
    (3, 1, 2, "same"),
    (3, 1, 2, "valid"),
    (3, 1, 12, "same"),
    (3, 2, 1, "valid"),
]


@pytest.mark.parametrize("kernel, stride, dilation, padding", CONVS)
@pytest.mark.parametrize("shift", ["none", "partial", "full"])
def test_convolutions(kernel, stride, dilation, padding, shift):
    got = check(conv_model(kernel, stride, dilation, padding), images(), shift=shift)
    assert sum(got.values()) > 0


@pytest.mark.parametrize(
    "options",
    [
        {"k": 2},
        {"k": 3, "shift": "full"},
        {"mass": 0.6},
        {"mass": 0.9, "max_k": 3, "shift": "none"},
    ],
)
def test_branching(options):
    check(conv_model(3, 1, 1, "same"), images(shape=(1, 11, 9, 3)), **options)


@pytest.mark.parametrize(
    "pool",
    [
        L.MaxPooling2D(2),
        L.MaxPooling2D(3, 2, padding="same"),
        L.AveragePooling2D(2),
        L.AveragePooling2D(3, 1, padding="same"),
        CaffePooling2D("max", 3, 2, 1),
        CaffePooling2D("avg", 3, 1, 1),
    ],
)
def test_pooling(pool):
    inp = keras.Input((None, None, 3))
    x = L.Conv2D(4, 3, padding="same", activation="relu")(inp)
    x = pool(x)
    check(keras.Model(inp, L.Conv2D(3, 1)(x)), images())


@pytest.mark.slow
def test_add_and_concatenate_with_nested_model_and_pass_through():
    inp = keras.Input((None, None, 3))
    a = L.Conv2D(4, 3, padding="same", activation="relu")(inp)
    b = L.Conv2D(4, 1, activation="relu")(inp)
    s = L.Add()([a, b])
    c = L.Concatenate()([s, L.Conv2D(2, 3, padding="same")(inp)])
    c = L.Dropout(0.3)(L.ReLU()(c))
    x = L.UpSampling2D(2)(L.MaxPooling2D(2)(c))
    model = keras.Model(inp, L.Conv2D(3, 1)(x))
    check(model, images())
    # The same graph inside an outer model: nested models are flattened.
    outer_in = keras.Input((None, None, 3))
    outer = keras.Model(outer_in, L.Rescaling(1.0)(integer_weights(model)(outer_in)))
    got = as_counter(SegUnravel(outer)(images()))
    assert got == dict(naive_unravel(model, images()))


def test_resizing():
    inp = keras.Input((12, 10, 3))
    x = L.Conv2D(4, 3, strides=2, padding="same", activation="relu")(inp)
    x = L.Resizing(9, 7)(x)
    check(keras.Model(inp, L.Conv2D(3, 1)(x)), images(shape=(2, 12, 10, 3)))


def test_grouped_convolution():
    inp = keras.Input((None, None, 3))
    x = L.Conv2D(6, 3, padding="same", activation="relu")(inp)
    x = L.Conv2D(4, 3, padding="same", groups=2, activation="relu")(x)
    check(keras.Model(inp, L.Conv2D(3, 1)(x)), images())


@pytest.mark.parametrize("dense_rule", ["topk", "positive"])
@pytest.mark.parametrize("head", ["flatten", "global"])
def test_dense_classifier(dense_rule, head):
    inp = keras.Input((9, 8, 3))
    x = L.Conv2D(4, 3, padding="same", activation="relu")(inp)
    x = L.Flatten()(x) if head == "flatten" else L.GlobalAveragePooling2D()(x)
    x = L.Dense(6, activation="relu")(x)
    model = keras.Model(inp, L.Dense(4)(x))
    check(model, images(shape=(3, 9, 8, 3)), dense_rule=dense_rule)


def test_dense_per_position():
    inp = keras.Input((None, None, 3))
    x = L.Conv2D(4, 3, padding="same", activation="relu")(inp)
    check(keras.Model(inp, L.Dense(3)(x)), images())


@pytest.mark.parametrize("shift", ["none", "partial", "full"])
@pytest.mark.slow
def test_largefov(shift):
    model = deeplab_largefov(num_classes=4, width=1 / 16)
    batch = np.random.default_rng(2).uniform(0, 255, (1, 35, 30, 3)).astype(np.float32)
    got = as_counter(SegUnravel(model, shift=shift)(batch))
    assert got == dict(naive_unravel(model, batch, shift=shift))
    assert sum(got.values()) == 5 * 6  # every seed reaches the image: 35x30 -> 5x6 scores


def chain(*layers, shape=(None, None, 3), classes=3):
    """A model of `layers` in sequence ending in a 1x1 score convolution."""
    inp = keras.Input(shape)
    x = inp
    for layer in layers:
        x = layer(x)
    return keras.Model(inp, L.Conv2D(classes, 1, name="score")(x))


def relu_conv(filters=4, kernel=3, **kwargs):
    return L.Conv2D(filters, kernel, padding="same", activation="relu", **kwargs)


NEW_KINDS = {
    "depthwise x2": lambda: chain(
        relu_conv(), L.DepthwiseConv2D(3, depth_multiplier=2, padding="same"), L.ReLU()
    ),
    "depthwise stride 2": lambda: chain(relu_conv(), L.DepthwiseConv2D(3, strides=2)),
    "depthwise dilated": lambda: chain(
        relu_conv(), L.DepthwiseConv2D(3, dilation_rate=2, padding="same")
    ),
    "separable": lambda: chain(
        relu_conv(), L.SeparableConv2D(5, 3, padding="same", depth_multiplier=2)
    ),
    "separable stride 2": lambda: chain(relu_conv(), L.SeparableConv2D(5, 3, strides=2)),
    "transpose stride 2": lambda: chain(
        relu_conv(), L.Conv2DTranspose(4, 3, strides=2, padding="same")
    ),
    "transpose 4x4 valid": lambda: chain(relu_conv(), L.Conv2DTranspose(4, 4, strides=2)),
    # (A dilated Conv2DTranspose does not run on TensorFlow's CPU kernels; its rule is the
    # same code path with d > 1 in the tap offsets.)
    "transpose with holes": lambda: chain(relu_conv(), L.Conv2DTranspose(4, 2, strides=3)),
    "zero padding": lambda: chain(L.ZeroPadding2D(((1, 2), (3, 0))), L.Conv2D(4, 3)),
    "cropping": lambda: chain(relu_conv(), L.Cropping2D(((1, 0), (2, 1)))),
    "permute spatial": lambda: chain(relu_conv(), L.Permute((2, 1, 3))),
    "permute all": lambda: chain(relu_conv(), L.Permute((3, 2, 1)), shape=(9, 7, 3)),
    "global pool keepdims": lambda: chain(relu_conv(), L.GlobalAveragePooling2D(keepdims=True)),
    "activation": lambda: chain(relu_conv(), L.Activation("relu6"), relu_conv()),
}


@pytest.mark.parametrize("kind", NEW_KINDS)
# mass 0.6 is not exact in binary: the engine compares the running sums with it in float64,
# as the reference does, so a sum of exactly 60% of the total reaches it in both.
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"shift": "full", "k": 2},
        {"shift": "none", "mass": 0.5},
        pytest.param({"mass": 0.6}, marks=pytest.mark.slow),  # the fast suite's budget
    ],
)
def test_new_layer_kinds(kind, options):
    model = NEW_KINDS[kind]()
    shape = (2, 9, 7, 3) if kind == "permute all" else (2, 11, 13, 3)
    check(model, images(shape=shape), **options)


def merge_model(kind):
    inp = keras.Input((None, None, 3))
    a = relu_conv(name="a")(inp)
    b = L.Conv2D(4, 3, padding="same", name="b")(inp)
    if kind == "squeeze-excite":
        gate = L.GlobalAveragePooling2D()(a)
        gate = L.Dense(4, activation="sigmoid")(gate)
        gate = L.Reshape((1, 1, 4))(gate)
        x = L.Multiply()([a, gate])
    elif kind == "gate with keepdims":
        gate = L.GlobalMaxPooling2D(keepdims=True)(a)
        x = L.Multiply()([gate, b])
    else:
        layer = {
            "multiply": L.Multiply,
            "subtract": L.Subtract,
            "average": L.Average,
            "maximum": L.Maximum,
            "minimum": L.Minimum,
        }[kind]
        x = layer()([a, b])
    return keras.Model(inp, L.Conv2D(3, 1)(x))


@pytest.mark.parametrize(
    "kind",
    [
        "multiply",
        "subtract",
        "average",
        "maximum",
        "minimum",
        "squeeze-excite",
        "gate with keepdims",
    ],
)
def test_merges(kind):
    got = check(merge_model(kind), images())
    assert sum(got.values()) == 2 * 19 * 23  # every seed reaches the image


def test_broadcast_gates_keep_points_on_the_map():
    model = integer_weights(merge_model("squeeze-excite"))
    result = SegUnravel(model, keep_flow=True)(images())
    arrivals = {step.layer: step for step in result.flow}
    assert result.counts.sum() == result.seeds.sum()  # nothing went into the gate
    assert all(step.layer not in ("global_average_pooling2d",) for step in result.flow)
    assert arrivals["a"].counts.sum() == result.seeds.sum()


def test_counts_sum_to_seeds_and_points_are_sorted():
    model = integer_weights(conv_model(3, 2, 1, "same"))
    result = SegUnravel(model)(images())
    assert result.counts.sum() == result.seeds.sum() == 2 * 10 * 12
    keys = [tuple(p) for p in result.points]
    assert keys == sorted(keys)
    for b in range(2):
        seeds = np.bincount(result.labels[b].ravel(), minlength=3)
        np.testing.assert_array_equal(result.seeds[b], seeds)


@pytest.mark.slow
def test_counts_saturate_instead_of_wrapping():
    """K = 3 through 45 layers makes 3^45 > 2^63 paths per seed: counts stop at int64's
    largest value, never wrap to negative; a shallower chain still counts exactly."""
    from tf_segunravel.unravel.tracer import MAX_COUNT

    def chain(depth):
        inputs = keras.Input((None, None, 3))
        x = L.Conv2D(4, 1, kernel_initializer="ones")(inputs)
        for _ in range(depth - 2):
            x = L.Conv2D(4, 1, kernel_initializer="ones")(x)
        return keras.Model(inputs, L.Conv2D(2, 1, kernel_initializer="ones")(x))

    image = np.ones((1, 2, 2, 3), np.float32)
    shallow = SegUnravel(chain(10), k=3)(image)
    assert shallow.counts.sum() == shallow.seeds.sum() * 3**10
    deep = SegUnravel(chain(45), k=3)(image)
    assert (deep.counts == MAX_COUNT).all(), deep.counts


def test_seeds_from_masks_and_classes():
    model = integer_weights(conv_model(3, 1, 1, "same"))
    batch = images(shape=(1, 8, 8, 3))
    mask = np.full((1, 8, 8), 255, np.int32)
    mask[0, 2:5, 3:6] = 1
    result = SegUnravel(model)(batch, seed_labels=mask)
    assert set(result.points[:, 1]) == {1} and result.counts.sum() == 9
    only = SegUnravel(model)(batch, classes=[2])
    assert set(only.points[:, 1]) <= {2}
    assert only.counts.sum() == (only.labels == 2).sum()


def test_works_inside_tf_function_with_dynamic_sizes():
    model = integer_weights(conv_model(3, 2, 1, "same"))
    engine = SegUnravel(model)
    traced = tf.function(engine.trace, input_signature=[tf.TensorSpec([None, None, None, 3])])
    for shape in [(1, 9, 13, 3), (2, 16, 7, 3)]:
        batch = images(shape=shape)
        out = traced(batch)
        want = engine(batch)
        np.testing.assert_array_equal(out.points.numpy(), want.points)
        np.testing.assert_array_equal(out.counts.numpy(), want.counts)


@pytest.mark.slow
def test_flow_keeps_points_per_layer():
    model = deeplab_largefov(num_classes=3, width=1 / 16)
    result = SegUnravel(model, keep_flow=True)(images(shape=(1, 33, 33, 3)))
    names = [step.layer for step in result.flow]
    assert names[0] == "fc8" and names[-1] == "preprocess"
    assert all(step.counts.sum() == result.counts.sum() for step in result.flow)
    sizes = {step.layer: tuple(step.size) for step in result.flow}
    assert sizes["fc8"] == (5, 5) and sizes["conv1_1"] == (33, 33)
    for step in result.flow:
        height, width = step.size
        assert (step.points[:, 2] < height).all() and (step.points[:, 3] < width).all()


def test_structured_outputs_in_graph_mode():
    model = integer_weights(conv_model(3, 2, 1, "same"))
    engine = SegUnravel(model, keep_flow=True, keep_channel_scores=True)
    traced = tf.function(engine.trace, input_signature=[tf.TensorSpec([None, None, None, 3])])
    batch = images(shape=(2, 9, 11, 3))
    graph = traced(batch).numpy()
    eager = engine(batch)
    assert [step.layer for step in graph.flow] == [step.layer for step in eager.flow]
    assert [c.layer for c in graph.channel_scores] == [
        layer.name for layer in reversed(model.layers) if isinstance(layer, L.Conv2D)
    ]
    # The score layer scores each seed's inputs: one row per seed, one column per channel.
    first = graph.channel_scores[0]
    assert first.scores.shape == (eager.seeds.sum(), 5)
    for a, b in zip(graph.channel_scores, eager.channel_scores, strict=True):
        np.testing.assert_array_equal(a.scores, b.scores)


def test_channel_scores_are_the_contributions_the_rule_ranks():
    inp = keras.Input((None, None, 3))
    model = keras.Model(inp, L.Conv2D(2, 1, use_bias=False, name="score")(inp))
    model.get_layer("score").set_weights([np.array([[[[1, 0], [2, 0], [-1, 1]]]], np.float32)])
    batch = np.array([[[[3.0, 1.0, 4.0]]]], np.float32)  # scores: 1, 4 -> class 1 wins
    result = SegUnravel(model, keep_channel_scores=True)(batch)
    (only,) = result.channel_scores
    np.testing.assert_array_equal(only.scores, [[0.0, 0.0, 4.0]])  # x * W[:, class 1]


def test_settings_object_and_keywords_agree():
    model = integer_weights(conv_model(3, 1, 2, "same"))
    batch = images()
    by_object = SegUnravel(model, FixationSettings(k=2, shift="full"))(batch)
    by_keywords = SegUnravel(model, k=2, shift="full")(batch)
    np.testing.assert_array_equal(by_object.points, by_keywords.points)
    np.testing.assert_array_equal(by_object.counts, by_keywords.counts)
    assert SegUnravel(model, FixationSettings(k=2), shift="none").settings == FixationSettings(
        k=2, shift="none"
    )


@pytest.mark.parametrize(
    "layer, reason",
    [
        (L.Conv2D(4, 3, data_format="channels_first", name="odd"), "channels_first"),
        (L.MaxPooling2D(data_format="channels_first", name="odd"), "channels_first"),
        (L.UpSampling2D(data_format="channels_first", name="odd"), "channels_first"),
        (L.Resizing(8, 8, crop_to_aspect_ratio=True, name="odd"), "crop_to_aspect_ratio"),
        (L.Resizing(8, 8, pad_to_aspect_ratio=True, name="odd"), "pad_to_aspect_ratio"),
    ],
)
def test_layouts_the_rules_do_not_follow_are_refused(layer, reason):
    inp = keras.Input((16, 16, 3))
    x = layer(inp)
    with pytest.raises(
        UntraceableLayerError, match=f"'odd' \\({type(layer).__name__}\\).*{reason}"
    ):
        SegUnravel(keras.Model(inp, L.Conv2D(3, 1)(x)))


class Doubler(L.Layer):
    """A custom layer no built-in rule knows."""

    def call(self, x):
        return 2.0 * x


def doubler_model():
    inp = keras.Input((None, None, 3))
    x = L.Conv2D(4, 3, padding="same", name="conv")(inp)
    x = Doubler(name="double")(x)
    return keras.Model(inp, L.Conv2D(3, 1, name="score")(x))


def test_untraceable_layer_is_named_and_points_to_register_rule():
    with pytest.raises(UntraceableLayerError, match=r"'double' \(Doubler\).*register_rule"):
        SegUnravel(doubler_model())


def test_register_rule_traces_a_custom_layer():
    calls = []

    def per_element(layer, x, output, points, settings):
        calls.append(layer.name)
        return [points]

    model = integer_weights(doubler_model())
    with register_rule(Doubler, per_element):
        result = SegUnravel(model)(images())
    assert calls == ["double"]
    # Doubling changes no choice, so the trace equals the model without the layer.
    inp = keras.Input((None, None, 3))
    plain = keras.Model(inp, L.Conv2D(3, 1)(L.Conv2D(4, 3, padding="same")(inp)))
    plain.set_weights(model.get_weights())
    want = SegUnravel(plain)(images())
    np.testing.assert_array_equal(result.points, want.points)
    np.testing.assert_array_equal(result.counts, want.counts)
    with pytest.raises(TypeError, match="callable"):
        register_rule(Doubler, "not a rule")


@pytest.mark.parametrize(
    "kwargs", [{"shift": "diagonal"}, {"k": 0}, {"mass": 1.5}, {"dense_rule": "all"}]
)
def test_rejects_bad_options(kwargs):
    with pytest.raises(ValueError):
        SegUnravel(conv_model(3, 1, 1, "same"), **kwargs)


# ------------------------------------------------------------------------- contrastive


def contrast_check(model, batch, contrast, **options):
    """Engine and reference agree on a contrastive unravel; returns the engine's points."""
    reference = int(contrast) if contrast.isdigit() else contrast
    got = as_counter(SegUnravel(model, contrast=contrast, **options)(batch))
    assert got == dict(naive_unravel(model, batch, contrast=reference, **options))
    return got


@pytest.mark.parametrize("contrast", ["runner_up", "0", "2"])
@pytest.mark.parametrize("options", [{}, {"shift": "full", "k": 2}, {"shift": "none", "mass": 0.5}])
def test_contrast_matches_the_reference(contrast, options):
    model = integer_weights(conv_model(3, 1, 2, "same"))
    got = contrast_check(model, images(), contrast, **options)
    if contrast != "runner_up":  # the contrast class's own seeds have no margin
        assert int(contrast) not in {key[1] for key in got}


@pytest.mark.parametrize("shift", ["none", "partial", "full"])
@pytest.mark.slow
def test_contrast_on_largefov(shift):
    model = deeplab_largefov(num_classes=4, width=1 / 16)
    batch = np.random.default_rng(2).uniform(0, 255, (2, 35, 30, 3)).astype(np.float32)
    got = contrast_check(model, batch, "runner_up", shift=shift)
    assert sum(got.values()) == 2 * 5 * 6


@pytest.mark.parametrize("dense_rule", ["topk", "positive"])
def test_contrast_on_a_dense_classifier(dense_rule):
    inp = keras.Input((9, 8, 3))
    x = L.Conv2D(4, 3, padding="same", activation="relu")(inp)
    x = L.Dense(6, activation="relu")(L.Flatten()(x))
    model = integer_weights(keras.Model(inp, L.Dense(4)(x)))
    contrast_check(model, images(shape=(3, 9, 8, 3)), "runner_up", dense_rule=dense_rule)


def test_contrast_changes_the_choice_at_the_score_layer_only():
    """Two classes that share the evidence of input channel 0 and differ on channel 1: the
    plain unravel of class 0 follows the shared channel, the margin over class 1 the other."""
    inp = keras.Input((None, None, 3))
    model = keras.Model(inp, L.Conv2D(2, 1, use_bias=False)(inp))
    model.layers[-1].set_weights([np.array([[[[5.0, 4.0], [1.0, 0.0], [0, 0]]]], np.float32)])
    batch = np.ones((1, 1, 1, 3), np.float32)
    engine = SegUnravel(model, keep_channel_scores=True)
    contrastive = SegUnravel(model, contrast="runner_up", keep_channel_scores=True)
    plain_scores = engine(batch).channel_scores[0].scores
    margin_scores = contrastive(batch).channel_scores[0].scores
    np.testing.assert_allclose(plain_scores, [[5.0, 1.0, 0.0]])
    np.testing.assert_allclose(margin_scores, [[1.0, 1.0, 0.0]])  # (5-4, 1-0): a tie
    assert contrastive(batch).points.tolist() == [[0, 0, 0, 0]]
    model.layers[-1].set_weights([np.array([[[[5.0, 4.5], [1.0, 0.0], [0, 0]]]], np.float32)])
    result = contrastive(batch)
    np.testing.assert_allclose(result.channel_scores[0].scores, [[0.5, 1.0, 0.0]])
    assert SegUnravel(model)(batch).points.tolist() == [[0, 0, 0, 0]]


def test_contrast_names_and_refusals():
    model = integer_weights(conv_model(3, 1, 1, "same"))
    by_name = SegUnravel(model, contrast="car", class_names=["bg", "boat", "car"])
    by_id = SegUnravel(model, contrast="2")
    batch = images()
    assert as_counter(by_name(batch)) == as_counter(by_id(batch))
    with pytest.raises(ValueError, match="neither 'runner_up', a class id, nor a known"):
        SegUnravel(model, contrast="plane", class_names=["bg", "boat", "car"])
    with pytest.raises(ValueError, match="not a class of this 3-class model"):
        SegUnravel(model, contrast="7")
    inp = keras.Input((None, None, 3))
    upsampled = keras.Model(inp, L.UpSampling2D()(L.Conv2D(3, 1)(inp)))
    with pytest.raises(ValueError, match=r"'up_sampling2d.*' is a UpSampling2D"):
        SegUnravel(upsampled, contrast="runner_up")
    with pytest.raises(ValueError, match="contrast"):
        FixationSettings(contrast="not a class!")
