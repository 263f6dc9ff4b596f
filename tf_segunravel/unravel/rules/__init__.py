"""The unravel's one table of layer kinds (docs/unravel.md): for every layer type, how points
move through it, whether it takes several inputs, how it maps positions and whether it hands
on merged points unchanged. The engine, the geometry and the walk all read it, and
`register_rule` extends it.

    from tf_segunravel.unravel import register_rule, window_geometry

    def my_rule(layer, x, output, points, settings):
        return [points]  # one `Points` per input: here, a per-element layer

    with register_rule(MyLayer, my_rule):            # undone on leaving the block
        ...
    register_rule(MyPool, pool_rule, geometry=window_geometry(2, 2))  # for the session

A rule is called as `rule(layer, inputs, output, points, settings)` with `inputs` one
recorded input tensor (a list of them when registered with `multi_input=True`), `output` the
recorded output, `points` the `Points` (fields b, cls, y, x, ch, count: parallel int tensors)
arriving at the output, and `settings` the `FixationSettings`. It returns a list with one
`Points` per input (points may be dropped, duplicated with split counts, or moved), or a
`Moved(points, channel_scores)`. It must be TensorFlow ops (it runs inside `tf.function`).
The rules per family live in `convolution.py`, `spatial.py` and `merge.py`; the step maps in
`positions.py`.
"""

import contextlib
import dataclasses
import typing
from collections.abc import Callable

import keras
import tensorflow as tf

from tf_segunravel.models.framework_layers import ExplicitPooling2D, PositionAttention, Resize2D
from tf_segunravel.models.layers import CaffePooling2D, CaffePreprocess
from tf_segunravel.unravel.rules import segformer
from tf_segunravel.unravel.rules.attention import (
    multi_head_attention_check,
    multi_head_attention_rule,
)
from tf_segunravel.unravel.rules.base import (
    AnyLayer,
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
    position_attention_rule,
    scaled_sum_rule,
    subtract_rule,
)
from tf_segunravel.unravel.rules.positions import (
    KEEPS_MAP,
    collapse_map,
    conv_window_map,
    cropping_map,
    pooling_map,
    resize2d_map,
    resize_map,
    transpose_map,
    window_geometry,
    zero_padding_map,
)
from tf_segunravel.unravel.rules.spatial import (
    cropping_rule,
    flatten_rule,
    global_pooling_rule,
    permute_rule,
    pooling_rule,
    reshape_rule,
    resize2d_rule,
    resize_rule,
    zero_padding_rule,
)
from tf_segunravel.unravel.settings import FixationSettings

__all__ = [
    "KEEPS_MAP",
    "PASS_THROUGH",
    "LayerKind",
    "Moved",
    "Points",
    "Registration",
    "UntraceableLayerError",
    "channels_to_reach",
    "kind_for",
    "register_rule",
    "select_channels",
    "window_geometry",
]

L = keras.layers

StepMap = Callable[[typing.Any, typing.Any, typing.Any, int], tuple]


@dataclasses.dataclass(frozen=True)
class LayerKind:
    """Everything the unravel knows about one kind of layer.

    rule: moves points from the layer's output to its inputs (the module docstring).
    multi_input: the rule takes the list of recorded inputs rather than one tensor.
    geometry: how the layer maps positions: a step map `(layer, in_size, out_size, axis) ->
      (a, b)` (output j over input a j + b; `positions.py`), `KEEPS_MAP`, or None when
      undeclared (a registered layer that keeps the spatial size is then taken to keep the
      map, one that changes it is refused by the geometry).
    keeps_merged: the rule returns the merged points it receives unchanged, or subsets of
      them with coordinates shifted by a constant, so its outputs stay distinct and the walk
      need not merge them again when they are all that reaches a layer (half the layers of a
      ResNet or MobileNet are normalisations and activations, and a merge is a score of graph
      ops).
    kernel: the name of the layer's weight that the rule's `kernel=` argument replaces, or
      None where the rule takes no `kernel=`. The contrastive unravel hands a margin kernel
      there, and a one-channel head its two classes' kernel (`binary_head.py`), so a head
      may end in this layer only where it is declared.
    kernel_axis: the axis of that weight that holds the layer's output channels.
    token_grid: for a layer that makes tokens [B, N, C] from a map (a patch embedding),
      `(layer, in_height, in_width) -> (height, width)` of the grid its tokens lie on, row
      by row (the geometry's; `geometry` then maps positions of that grid).
    check: `(step) -> reason or None`, what in one call of the layer the rule cannot follow
      (an attention mask passed to it); a reason refuses the layer when the graph is built.
    channel_column: for a rule that returns channel scores, `(layer, ch) -> column`: the
      column of its scores that a moved point on input channel `ch` was chosen by, or a
      reason string where no column says it (`path_weight="contribution"` weighs each
      point by that column's share and refuses the layer with the reason). None: the
      rule's scores cannot be read so (an attention rule scores tokens and heads).
    """

    rule: Callable
    multi_input: bool = False
    geometry: StepMap | str | None = KEEPS_MAP
    keeps_merged: bool = False
    kernel: str | None = None
    kernel_axis: int = -1
    token_grid: Callable | None = None
    check: Callable | None = None
    channel_column: Callable | None = None


PASS_THROUGH_LAYERS = (
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


def pass_through(
    layer: AnyLayer, x: tf.Tensor, output: tf.Tensor, points: Points, settings: FixationSettings
) -> list[Points]:
    """Per-element and per-channel layers: the point stays where it is."""
    return [points]


PASS_THROUGH = LayerKind(pass_through, keeps_merged=True)


def _application_layers():
    """keras.applications' own per-channel and scaled-sum layers (private classes)."""
    table = []
    try:
        from keras.src.applications.convnext import LayerScale

        table.append((LayerScale, PASS_THROUGH))  # x * gamma per channel
    except ImportError:  # pragma: no cover - another Keras layout
        pass
    try:
        from keras.src.applications.inception_resnet_v2 import CustomScaleLayer

        table.append(
            (CustomScaleLayer, LayerKind(scaled_sum_rule, multi_input=True, keeps_merged=True))
        )
    except ImportError:  # pragma: no cover
        pass
    return table


POOLING_LAYERS = (L.MaxPooling2D, L.AveragePooling2D, CaffePooling2D, ExplicitPooling2D)
GLOBAL_POOLING_LAYERS = (L.GlobalMaxPooling2D, L.GlobalAveragePooling2D)

_KERNEL_AXIS_2: dict[str, typing.Any] = {"kernel": "kernel", "kernel_axis": 2}


def _same_channel(layer, ch):
    """The scores' columns are the input's channels (Dense, Conv2DTranspose)."""
    return ch


def _channel_in_group(layer, ch):
    """Conv2D scores the channels of the point's group: column = channel within it."""
    groups = getattr(layer, "groups", 1)
    return ch if groups == 1 else ch % (layer.kernel.shape[2])


def _separable_channel(layer, ch):
    """SeparableConv2D scores the depthwise output's channels; with a depth multiplier of
    1 each is its input channel's, past 1 the input channel does not say which it was."""
    if layer.depth_multiplier == 1:
        return ch
    return f"depth_multiplier={layer.depth_multiplier} (which depthwise channel was chosen)"


# Most specific first: Conv2DTranspose, DepthwiseConv2D and SeparableConv2D are not Conv2D
# subclasses in Keras 3, but the order keeps that safe if they become ones.
LAYER_KINDS = [
    (PASS_THROUGH_LAYERS, PASS_THROUGH),
    # Conv2DTranspose's kernel is [kh, kw, filters, C_in]: its output channels are axis 2.
    (
        L.Conv2DTranspose,
        LayerKind(
            transpose_rule, geometry=transpose_map, channel_column=_same_channel, **_KERNEL_AXIS_2
        ),
    ),
    (L.DepthwiseConv2D, LayerKind(depthwise_rule, geometry=conv_window_map, kernel="kernel")),
    (
        L.SeparableConv2D,
        LayerKind(
            separable_rule,
            geometry=conv_window_map,
            kernel="pointwise_kernel",
            channel_column=_separable_channel,
        ),
    ),
    (
        L.Conv2D,
        LayerKind(
            conv_rule, geometry=conv_window_map, kernel="kernel", channel_column=_channel_in_group
        ),
    ),
    (
        L.Dense,
        LayerKind(dense_rule, geometry=collapse_map, kernel="kernel", channel_column=_same_channel),
    ),
    (POOLING_LAYERS, LayerKind(pooling_rule, geometry=pooling_map)),
    (GLOBAL_POOLING_LAYERS, LayerKind(global_pooling_rule, geometry=collapse_map)),
    (L.Flatten, LayerKind(flatten_rule, geometry=collapse_map)),
    # Reshape and Permute are traced on vectors and channels only (their rules refuse to
    # move a position), so they keep the map.
    (L.Reshape, LayerKind(reshape_rule)),
    (L.Permute, LayerKind(permute_rule)),
    ((L.Resizing, L.UpSampling2D), LayerKind(resize_rule, geometry=resize_map)),
    (Resize2D, LayerKind(resize2d_rule, geometry=resize2d_map)),
    (PositionAttention, LayerKind(position_attention_rule, multi_input=True)),
    (L.ZeroPadding2D, LayerKind(zero_padding_rule, geometry=zero_padding_map)),
    (L.Cropping2D, LayerKind(cropping_rule, geometry=cropping_map, keeps_merged=True)),
    ((L.Add, L.Average, L.Maximum), LayerKind(add_rule, multi_input=True, keeps_merged=True)),
    (L.Minimum, LayerKind(minimum_rule, multi_input=True, keeps_merged=True)),
    (L.Subtract, LayerKind(subtract_rule, multi_input=True, keeps_merged=True)),
    (L.Multiply, LayerKind(multiply_rule, multi_input=True, keeps_merged=True)),
    (L.Concatenate, LayerKind(concatenate_rule, multi_input=True, keeps_merged=True)),
    (
        L.MultiHeadAttention,
        LayerKind(multi_head_attention_rule, multi_input=True, check=multi_head_attention_check),
    ),
    *_application_layers(),
]

# Layers of optional libraries, by their qualified class names, so that the table needs no
# import of them (keras-hub's SegFormer: `segformer.py`).
_MIT = "keras_hub.src.models.mit.mit_layers."
NAMED_LAYER_KINDS = {
    _MIT + "OverlappingPatchingAndEmbedding": LayerKind(
        segformer.patch_embedding_rule,
        geometry=segformer.patch_embedding_map,
        token_grid=segformer.patch_embedding_grid,
    ),
    _MIT + "HierarchicalTransformerEncoder": LayerKind(segformer.encoder_rule),
    _MIT + "SegFormerMultiheadAttention": LayerKind(segformer.attention_rule),
    _MIT + "MixFFN": LayerKind(segformer.mix_ffn_rule),
    _MIT + "DropPath": PASS_THROUGH,  # the identity at inference
}


def _named_kind(layer):
    for cls in type(layer).__mro__:
        kind = NAMED_LAYER_KINDS.get(f"{cls.__module__}.{cls.__qualname__}")
        if kind is not None:
            return kind
    return None


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
    "Add": LayerKind(add_rule, multi_input=True, keeps_merged=True),
    "Maximum": LayerKind(add_rule, multi_input=True, keeps_merged=True),
    "Minimum": LayerKind(minimum_rule, multi_input=True, keeps_merged=True),
    "Subtract": LayerKind(subtract_rule, multi_input=True, keeps_merged=True),
    "Multiply": LayerKind(multiply_rule, multi_input=True, keeps_merged=True),
}

_registered: list[tuple[tuple[type, ...], LayerKind]] = []


class Registration(contextlib.AbstractContextManager):
    """A rule added by `register_rule`: `remove()` undoes it, and so does leaving a `with`
    block (tests and notebooks then leave no rule behind for the next one)."""

    def __init__(self, entry: tuple[tuple[type, ...], LayerKind]) -> None:
        self._entry = entry

    def remove(self) -> None:
        """Undoes the registration (a no-op when already undone)."""
        _registered[:] = [entry for entry in _registered if entry is not self._entry]

    def __exit__(self, *exc_info):
        self.remove()
        return False


def register_rule(
    layer_class: type | tuple[type, ...],
    rule: Callable,
    multi_input: bool = False,
    *,
    geometry: StepMap | str | None = None,
    keeps_merged: bool = False,
    kernel: str | None = None,
    kernel_axis: int = -1,
    channel_column: Callable | None = None,
) -> Registration:
    """Traces `layer_class` (and its subclasses) with `rule` from now on; a registered rule
    wins over the built-in ones. See the module docstring for the rule's signature.

    Args:
      layer_class: a Keras layer class, or a tuple of them.
      rule: `rule(layer, inputs, output, points, settings)`.
      multi_input: the rule takes the list of the layer's inputs.
      geometry: how the layer maps positions: `KEEPS_MAP` ("keeps_map"), a step map
        `(layer, in_size, out_size, axis) -> (a, b)` such as `window_geometry(2, strides=2)`,
        or None. With None, a layer whose output's spatial size differs from its input's is
        refused when traced (never assumed to keep the map).
      keeps_merged: the rule hands on the points it receives unchanged or as ordered subsets
        (`LayerKind`); False is always safe.
      kernel: the rule takes `kernel=`, a replacement for the layer's weight of this name
        (whose output channels lie on `kernel_axis`). Declaring it lets a one-channel head
        end in this layer (it is split there into two classes) and the contrastive unravel
        start from it.
      kernel_axis: the output-channel axis of that weight.
      channel_column: for a rule that returns `Moved(points, channel_scores)`, `(layer, ch)
        -> column` of the scores that chose a point now on input channel `ch`, so that
        `path_weight="contribution"` can weigh it (`LayerKind`); None refuses that setting
        on the layer.

    Returns a `Registration`: `remove()` it, or use it as a context manager, to undo.
    """
    if not callable(rule):
        raise TypeError(f"rule must be callable, got {rule!r}")
    if not (geometry is None or geometry == KEEPS_MAP or callable(geometry)):
        raise TypeError(
            f"geometry must be None, {KEEPS_MAP!r} or a step map function, got {geometry!r}"
        )
    if kernel is not None and not isinstance(kernel, str):
        raise TypeError(f"kernel must be the name of the layer's weight, got {kernel!r}")
    types = layer_class if isinstance(layer_class, tuple) else (layer_class,)
    if not types or not all(isinstance(t, type) for t in types):
        raise TypeError(f"layer_class must be a class or a tuple of classes, got {layer_class!r}")
    entry = (
        types,
        LayerKind(
            rule,
            bool(multi_input),
            geometry,
            bool(keeps_merged),
            kernel,
            int(kernel_axis),
            channel_column=channel_column,
        ),
    )
    _registered.insert(0, entry)
    return Registration(entry)


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


def refuse(layer: AnyLayer, reason: str) -> UntraceableLayerError:
    """The error for a layer the unravel cannot follow, naming it."""
    name = getattr(layer, "name", "?")
    kind = type(layer).__name__
    return UntraceableLayerError(f"unravel cannot trace layer {name!r} ({kind}): {reason}")


def _op_kind(op, num_inputs):
    name = type(op).__name__
    if num_inputs == 1 and (name in ELEMENTWISE_OPS or name in CONSTANT_OPERAND_OPS):
        return PASS_THROUGH
    if num_inputs == 2 and name in BINARY_OPS:
        return BINARY_OPS[name]
    return None


def kind_for(layer: AnyLayer, num_inputs: int = 1) -> LayerKind:
    """The `LayerKind` of a layer or Keras op with `num_inputs` tensor inputs, or
    UntraceableLayerError naming it."""
    for types, kind in _registered:
        if isinstance(layer, types):
            return kind
    for types, kind in LAYER_KINDS:
        if isinstance(layer, types):
            # A per-element layer cares for no layout; every other kind reads [B, H, W, C].
            unsupported = None if kind is PASS_THROUGH else _unsupported_layout(layer)
            if unsupported:
                raise refuse(layer, unsupported)
            return kind
    named = _named_kind(layer)
    if named is not None:
        return named
    if not isinstance(layer, L.Layer) and type(layer).__module__.startswith("keras.src.ops"):
        found = _op_kind(layer, num_inputs)
        if found:
            return found
    raise refuse(
        layer,
        "no rule for it; trace it with tf_segunravel.unravel.register_rule("
        f"{type(layer).__name__}, rule, geometry=...)",
    )
