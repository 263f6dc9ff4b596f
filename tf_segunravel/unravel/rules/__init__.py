"""The unravel transitions (docs/method.md section 2): which rule moves points through
which layer, and the public extension point `register_rule`.

    from tf_segunravel.unravel import register_rule

    def my_rule(layer, x, output, points, settings):
        return [points]  # one `Points` per input: here, a per-element layer

    register_rule(MyLayer, my_rule)

A rule is called as `rule(layer, inputs, output, points, settings)` with `inputs` one
recorded input tensor (a list of them when registered with `multi_input=True`), `output` the
recorded output, `points` the `Points` (fields b, cls, y, x, ch, count: parallel int tensors)
arriving at the output, and `settings` the `FixationSettings`. It returns a list with one
`Points` per input (points may be dropped, duplicated with split counts, or moved), or a
`Moved(points, channel_scores)`. It must be TensorFlow ops (it runs inside `tf.function`).
The rules per family live in `convolution.py`, `spatial.py` and `merge.py`.
"""

import keras

from tf_segunravel.models.layers import CaffePooling2D, CaffePreprocess
from tf_segunravel.unravel.rules.base import (
    Moved,
    Points,
    UntraceableLayerError,
    channels_to_reach,
    select_channels,
)
from tf_segunravel.unravel.rules.convolution import (
    conv_rule,
    dense_rule,
    depthwise_rule,
    separable_rule,
    transpose_rule,
)
from tf_segunravel.unravel.rules.merge import (
    add_rule,
    concatenate_rule,
    minimum_rule,
    multiply_rule,
    scaled_sum_rule,
    subtract_rule,
)
from tf_segunravel.unravel.rules.spatial import (
    cropping_rule,
    flatten_rule,
    global_pooling_rule,
    permute_rule,
    pooling_rule,
    reshape_rule,
    resize_rule,
    zero_padding_rule,
)

__all__ = [
    "KEEPS_MERGED",
    "Moved",
    "Points",
    "UntraceableLayerError",
    "channels_to_reach",
    "register_rule",
    "rule_for",
    "select_channels",
]

L = keras.layers

PASS_THROUGH = (
    L.InputLayer,
    L.Activation,
    L.ReLU,
    L.LeakyReLU,
    L.ELU,
    L.PReLU,
    L.Softmax,
    L.Dropout,
    L.SpatialDropout2D,
    L.GaussianNoise,
    L.GaussianDropout,
    L.BatchNormalization,
    L.LayerNormalization,
    L.GroupNormalization,
    L.UnitNormalization,
    L.Rescaling,
    L.Normalization,
    L.Identity,
    L.ActivityRegularization,
    CaffePreprocess,
)


def pass_through(layer, x, output, points, settings):
    """Per-element and per-channel layers: the point stays where it is."""
    return [points]


def _application_layers():
    """keras.applications' own per-channel and scaled-sum layers (private classes)."""
    table = []
    try:
        from keras.src.applications.convnext import LayerScale

        table.append((LayerScale, pass_through, False))  # x * gamma per channel
    except ImportError:  # pragma: no cover - another Keras layout
        pass
    try:
        from keras.src.applications.inception_resnet_v2 import CustomScaleLayer

        table.append((CustomScaleLayer, scaled_sum_rule, True))
    except ImportError:  # pragma: no cover
        pass
    return table


# Most specific first: Conv2DTranspose, DepthwiseConv2D and SeparableConv2D are not Conv2D
# subclasses in Keras 3, but the order keeps that safe if they become ones.
LAYER_RULES = [
    (L.Conv2DTranspose, transpose_rule, False),
    (L.DepthwiseConv2D, depthwise_rule, False),
    (L.SeparableConv2D, separable_rule, False),
    (L.Conv2D, conv_rule, False),
    (L.Dense, dense_rule, False),
    ((L.MaxPooling2D, L.AveragePooling2D, CaffePooling2D), pooling_rule, False),
    ((L.GlobalMaxPooling2D, L.GlobalAveragePooling2D), global_pooling_rule, False),
    (L.Flatten, flatten_rule, False),
    (L.Reshape, reshape_rule, False),
    (L.Permute, permute_rule, False),
    ((L.Resizing, L.UpSampling2D), resize_rule, False),
    (L.ZeroPadding2D, zero_padding_rule, False),
    (L.Cropping2D, cropping_rule, False),
    ((L.Add, L.Average, L.Maximum), add_rule, True),
    (L.Minimum, minimum_rule, True),
    (L.Subtract, subtract_rule, True),
    (L.Multiply, multiply_rule, True),
    (L.Concatenate, concatenate_rule, True),
    *_application_layers(),
]

# Keras ops in a functional graph (`x + 3.0`, `ops.multiply(x, gate)`), by class name.
# With one tensor argument the other operand is a constant: a per-element map.
ELEMENTWISE_OPS = {
    "Abs", "Cast", "Clip", "Elu", "Exp", "Gelu", "HardSigmoid", "HardSilu", "HardSwish",
    "LeakyRelu", "Log", "Negative", "Relu", "Relu6", "Selu", "Sigmoid", "Silu", "Softplus",
    "Softsign", "Sqrt", "Square", "Swish", "Tanh",
}  # fmt: skip
CONSTANT_OPERAND_OPS = {
    "Add", "Subtract", "Multiply", "Divide", "TrueDivide", "Maximum", "Minimum", "Power",
}  # fmt: skip
BINARY_OPS = {
    "Add": add_rule,
    "Maximum": add_rule,
    "Minimum": minimum_rule,
    "Subtract": subtract_rule,
    "Multiply": multiply_rule,
}

# Rules that return their merged points unchanged, or subsets of them with coordinates
# shifted by a constant: their outputs stay distinct and sorted, so the walk need not merge
# them again when they are all that reaches a layer (half the layers of a ResNet or
# MobileNet are normalisations and activations, and a merge is a score of graph ops).
KEEPS_MERGED = frozenset(
    {
        pass_through,
        add_rule,
        minimum_rule,
        subtract_rule,
        multiply_rule,
        scaled_sum_rule,
        concatenate_rule,
        cropping_rule,
    }
)

_registered = []


def register_rule(layer_class, rule, multi_input=False):
    """Traces `layer_class` (and its subclasses) with `rule` from now on; a registered rule
    wins over the built-in ones. See the module docstring for the rule's signature."""
    if not callable(rule):
        raise TypeError(f"rule must be callable, got {rule!r}")
    _registered.insert(0, (layer_class, rule, multi_input))


def _unsupported_layout(layer):
    """Why the rules cannot follow this layer's layout, or None.

    Every spatial rule reads tensors as [B, H, W, C] and maps positions by plain resizing; a
    channels-first layer or an aspect-ratio crop or pad would be traced, wrongly, as if it
    were one of those, so it is refused instead.
    """
    if getattr(layer, "data_format", None) == "channels_first":
        return "data_format='channels_first' (the rules read [B, H, W, C])"
    if isinstance(layer, L.Resizing):
        for option in ("crop_to_aspect_ratio", "pad_to_aspect_ratio"):
            if getattr(layer, option, False):
                return f"{option}=True (the resize rule maps plain resizing only)"
    return None


def _refuse(layer, reason):
    name = getattr(layer, "name", "?")
    kind = type(layer).__name__
    return UntraceableLayerError(f"unravel cannot trace layer {name!r} ({kind}): {reason}")


def _op_rule(op, num_inputs):
    name = type(op).__name__
    if num_inputs == 1 and (name in ELEMENTWISE_OPS or name in CONSTANT_OPERAND_OPS):
        return pass_through, False
    if num_inputs == 2 and name in BINARY_OPS:
        return BINARY_OPS[name], True
    return None


def rule_for(layer, num_inputs=1):
    """(rule, takes a list of inputs) for a layer or Keras op with `num_inputs` tensor
    inputs, or UntraceableLayerError naming it."""
    for types, rule, multi in _registered:
        if isinstance(layer, types):
            return rule, multi
    if isinstance(layer, PASS_THROUGH):
        return pass_through, False
    unsupported = _unsupported_layout(layer)
    if unsupported:
        raise _refuse(layer, unsupported)
    for types, rule, multi in LAYER_RULES:
        if isinstance(layer, types):
            return rule, multi
    if not isinstance(layer, L.Layer) and type(layer).__module__.startswith("keras.src.ops"):
        found = _op_rule(layer, num_inputs)
        if found:
            return found
    raise _refuse(
        layer,
        "no rule for it; trace it with tf_segunravel.unravel.register_rule("
        f"{type(layer).__name__}, rule)",
    )
