"""One-channel heads split into two classes at the last layer that mixes channels, through
the per-element layers after it (`unravel/binary_head.py`). Small random networks with small
integer weights (float32 arithmetic is then exact): every combination of last weighted
layer, per-element layers after it and final activation either traces, as its two-channel
twin does, or is refused with a one-line error naming the layer. The trained networks'
end-to-end runs are in test_trained_binary_heads.py."""

import itertools
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.unravel_reference import naive_unravel
from tf_segunravel.unravel import SegUnravel, UntraceableLayerError, register_rule
from tf_segunravel.unravel.graph import flatten_graph
from tf_segunravel.unravel.rules.convolution import conv_rule

L = keras.layers


def head_layer(head, channels=1, activation=None):
    """The last weighted layer, with `channels` outputs (2: the twin's two classes)."""
    if head == "conv":
        return L.Conv2D(channels, 3, padding="same", activation=activation, name="head")
    if head == "transpose":
        return L.Conv2DTranspose(
            channels, 3, strides=2, padding="same", activation=activation, name="head"
        )
    if head == "depthwise":
        return L.DepthwiseConv2D(
            3, padding="same", depth_multiplier=channels, activation=activation, name="head"
        )
    if head == "separable":
        return L.SeparableConv2D(channels, 3, padding="same", activation=activation, name="head")
    return L.Dense(channels, activation=activation, name="head")  # dense_map, dense_pooled


def negated(t):
    return -t


# The layers after the head: each chain is a list of layer factories (fresh per model).
CHAINS = {
    "none": [],
    "rescaling": [lambda: L.Rescaling(2.0, offset=-0.25)],
    "negative_rescaling": [lambda: L.Rescaling(-1.5, offset=0.25)],
    "batch_norm": [lambda: L.BatchNormalization(name="norm")],
    "negative_batch_norm": [lambda: L.BatchNormalization(name="norm")],  # gamma set to -2
    "linear_activation_and_dropout": [lambda: L.Activation("linear"), lambda: L.Dropout(0.5)],
    "negation": [lambda: negated],
    "constant_ops": [lambda: lambda t: 1.0 - t * 2.0],  # two signs: -1 overall
    "divide_by_negative": [lambda: lambda t: t / -4.0],
    "normalization_identity_plus_constant": [
        lambda: L.Normalization(mean=0.5, variance=4.0),
        lambda: L.Identity(),
        lambda: lambda t: t + 0.75,
    ],
    # Refused: not per-element and affine.
    "relu": [lambda: L.ReLU(name="clip")],
    "tanh": [lambda: L.Activation("tanh", name="squash")],
    "layer_norm": [lambda: L.LayerNormalization(name="layer_norm")],
    "product_of_two": [lambda: lambda t: t * t],
    "constant_over_logit": [lambda: lambda t: 2.0 / t],
    "zero_scale": [lambda: L.Rescaling(0.0, name="flat")],
    "max_pool": [lambda: L.MaxPooling2D(1, name="pool")],
}
REFUSED = {
    "relu",
    "tanh",
    "layer_norm",
    "product_of_two",
    "constant_over_logit",
    "zero_scale",
    "max_pool",
}
SIGNS = {"negative_rescaling": -1, "negative_batch_norm": -1, "negation": -1}
SIGNS.update(constant_ops=-1, divide_by_negative=-1)
HEADS = ("conv", "transpose", "depthwise", "separable", "dense_map", "dense_pooled")
FINALS = ("sigmoid_layer", "own_sigmoid", "logits")


def build(head, chain=(), final="logits", channels=1):
    """Trunk -> head -> chain -> final activation, with small integer weights (the head's
    bias 0.5 keeps its logit off 0, so thresholds are never rounding ties)."""
    images = keras.Input((None, None, 3))
    x = L.Conv2D(4, 3, padding="same", activation="relu", name="trunk")(images)
    if head == "depthwise":
        x = L.Conv2D(1, 1, name="squeeze")(x)
    if head == "dense_pooled":
        x = L.GlobalAveragePooling2D(name="pool_all")(x)
    x = head_layer(head, channels, "sigmoid" if final == "own_sigmoid" else None)(x)
    for make in CHAINS[chain] if chain else ():
        x = make()(x)
    if final == "sigmoid_layer":
        x = L.Activation("sigmoid", name="mask")(x)
    model = keras.Model(images, x)
    rng = np.random.default_rng(5)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            gamma = -2.0 if chain == "negative_batch_norm" else 2.0
            layer.set_weights([np.float32([gamma]), np.float32([0.5]), *layer.get_weights()[2:]])
        elif layer.weights:
            layer.set_weights(
                [
                    rng.integers(-2, 3, w.shape).astype(np.float32)
                    if w.ndim > 1
                    else np.full(w.shape, 0.5, np.float32)
                    for w in layer.get_weights()
                ]
            )
    return model


def twin(model, head, sign):
    """The same trunk with a two-channel head whose kernel is the split's (-s w / 2, s w / 2)
    and whose logits are (-s z / 2, s z / 2): the multi-class path the split must match."""
    two = build(head, channels=2)
    for layer in model.layers:
        if layer.weights and layer.name != "head" and not isinstance(layer, L.BatchNormalization):
            two.get_layer(layer.name).set_weights(layer.get_weights())
    weights = model.get_layer("head").get_weights()
    axis = 2 if head == "transpose" else -1
    kernel_at = 1 if head == "separable" else 0  # the pointwise kernel
    split = []
    for i, w in enumerate(weights):
        if i == kernel_at or i == len(weights) - 1:  # the kernel and the bias split
            along = axis if i == kernel_at else -1
            split.append(np.concatenate([-0.5 * sign * w, 0.5 * sign * w], axis=along))
        else:
            split.append(w)
    two.get_layer("head").set_weights(split)
    return two


def images(batch=2, height=9, width=7, seed=1):
    return np.random.default_rng(seed).integers(0, 4, (batch, height, width, 3)).astype(np.float32)


def layer_names(model):
    """The names of the model's layers and of the Keras ops in its graph (`x * c`)."""
    steps, _, _ = flatten_graph(model)
    return {getattr(step.layer, "name", None) for step in steps}


def as_counter(result):
    return {
        tuple(int(v) for v in p): int(c) for p, c in zip(result.points, result.counts, strict=True)
    }


def walk(engine, batch, seed_labels=None):
    """The engine's walk run eagerly (the same ops as its compiled call, without a trace per
    model: the property test builds some 300 models), as numpy."""
    labels = None if seed_labels is None else tf.constant(seed_labels, tf.int32)
    return engine.trace(tf.constant(batch), labels).numpy()


@pytest.mark.parametrize("head", HEADS)
def test_every_chain_and_final_activation_traces_or_is_refused_in_one_line(head):
    """The property test, over every per-element chain after `head` and every final
    activation: no combination raises anything but the one-line refusal naming a layer of
    the model, and each traced one labels as the model thresholds and walks as its
    two-channel twin."""
    batch = images()
    seed_labels = np.random.default_rng(3).integers(0, 2, batch.shape[:3])
    traced = refused = 0
    for chain, final in itertools.product(CHAINS, FINALS):
        if head == "dense_pooled" and chain == "max_pool":
            continue  # a [B, 1] vector has no map to pool: Keras refuses to build it
        model = build(head, chain, final)
        expect_refusal = chain in REFUSED or (final == "own_sigmoid" and chain != "none")
        try:
            engine = SegUnravel(model)
        except ValueError as error:
            message = str(error)
            assert expect_refusal, (chain, final, message)
            assert "\n" not in message
            named = re.search(r"'([^']+)' \((\w+)\)", message)  # 'name' (Kind)
            assert named and named.group(1) in layer_names(model), message
            refused += 1
            continue
        assert not expect_refusal, (chain, final)
        result = walk(engine, batch)
        # Labels: the model's own threshold (sigmoid > 0.5, or logit > 0), on the score grid.
        output = np.asarray(model(batch))
        output = output[:, None, None, :] if output.ndim == 2 else output
        threshold = 0.0 if final == "logits" else 0.5
        np.testing.assert_array_equal(result.labels, (output[..., 0] > threshold).astype(int))
        # The walk: the two-channel twin's, seeded alike.
        sign = SIGNS.get(chain, 1)
        assert engine.graph.split.describe()["sign"] == sign
        got = walk(engine, batch, seed_labels)
        want = walk(SegUnravel(twin(model, head, sign)), batch, seed_labels)
        assert as_counter(got) == as_counter(want), (chain, final)
        assert got.counts.sum() > 0
        traced += 1
    splittable = len(CHAINS) - len(REFUSED)  # 10, "none" among them
    # Every splittable chain under a sigmoid layer and bare logits, and "none" under the
    # head's own sigmoid; the refused chains under all three, and the own sigmoid under
    # every other splittable chain.
    assert traced == splittable * 2 + 1
    assert refused == len(REFUSED) * 3 + splittable - 1 - (head == "dense_pooled") * 3


@pytest.mark.parametrize("head", HEADS)
def test_a_plain_split_head_matches_the_naive_reference_on_its_twin(head):
    """Independent of the engine: the naive reference on the two-channel twin (bias split
    too, so its logits are exactly (-z / 2, z / 2)) gives the binary head's points."""
    model = build(head, final="sigmoid_layer")
    batch = images()
    got = as_counter(SegUnravel(model)(batch))
    want = dict(naive_unravel(twin(model, head, 1), batch))
    assert got == want and got


@pytest.mark.parametrize("head", ["conv", "transpose", "dense_pooled"])
def test_a_negative_scale_swaps_the_classes(head):
    """z -> -1.5 z + 0.25 after the head computes what a head with the scale and offset
    folded into its kernel and bias does: the two networks' fixations are the same, point
    for point."""
    batch = images()
    model = build(head, "negative_rescaling", "sigmoid_layer")  # z -> -1.5 z + 0.25
    folded = build(head, final="sigmoid_layer")
    folded.set_weights(model.get_weights())
    kernel, bias = model.get_layer("head").get_weights()
    folded.get_layer("head").set_weights([-1.5 * kernel, -1.5 * bias + 0.25])
    np.testing.assert_allclose(model(batch), folded(batch), rtol=1e-6)  # the same function
    a, b = SegUnravel(model)(batch), SegUnravel(folded)(batch)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert as_counter(a) == as_counter(b)
    if head != "dense_pooled":  # one class per image there
        assert len(np.unique(a.points[:, 1])) == 2  # both classes seeded and walked


def test_a_batch_norms_sign_is_read_on_every_walk():
    """The split's sign follows the BatchNormalization's scale as it is now (training,
    set_weights), not as it was when the engine was built."""
    model = build("conv", "batch_norm", "sigmoid_layer")
    batch = images()
    seed_labels = np.random.default_rng(3).integers(0, 2, batch.shape[:3])
    engine = SegUnravel(model)
    before = as_counter(engine(batch, seed_labels=seed_labels))
    norm = model.get_layer("norm")
    norm.gamma.assign(-norm.gamma)
    after = as_counter(engine(batch, seed_labels=seed_labels))
    flipped = SegUnravel(twin(model, "conv", -1))(batch, seed_labels=seed_labels)
    assert after == as_counter(flipped) and after != before


def test_contrast_on_a_split_head():
    """runner_up on two classes is each seed's margin over the other: the split kernels'
    difference, s w, through a Conv2DTranspose and a negative scale."""
    model = build("transpose", "negative_rescaling", "sigmoid_layer")
    batch = images()
    plain = SegUnravel(model)(batch)
    contrast = SegUnravel(model, contrast="runner_up")(batch)
    np.testing.assert_array_equal(contrast.seeds, plain.seeds)
    np.testing.assert_array_equal(contrast.labels, plain.labels)
    # The margin kernel s w is each class's split kernel (s w / 2) doubled: the same ranks.
    assert as_counter(contrast) == as_counter(plain) and len(contrast.points) > 0


class MyConv(L.Conv2D):
    """A user's convolution, traced by a registered rule."""


def test_a_registered_rule_splits_only_where_it_declares_a_kernel():
    images_in = keras.Input((None, None, 3))
    x = L.Conv2D(4, 3, padding="same", activation="relu", name="trunk")(images_in)
    mine = keras.Model(images_in, L.Activation("sigmoid")(MyConv(1, 3, name="mine")(x)))
    plain = keras.Model(images_in, L.Activation("sigmoid")(L.Conv2D(1, 3, name="head")(x)))
    plain.get_layer("head").set_weights(mine.get_layer("mine").get_weights())
    with register_rule(MyConv, conv_rule, geometry="keeps_map"):
        with pytest.raises(UntraceableLayerError, match=r"'mine' \(MyConv\).*kernel=NAME"):
            SegUnravel(mine)
    with register_rule(MyConv, conv_rule, geometry="keeps_map", kernel="kernel"):
        got = SegUnravel(mine)(images())
    assert as_counter(got) == as_counter(SegUnravel(plain)(images()))
