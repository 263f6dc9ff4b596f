"""A one-channel head as two classes: where its logit is split, and with which sign.

A score map with one channel (a sigmoid person, text or lesion head) is two classes,
background and foreground, split at logit 0: the scores z become (-z / 2, z / 2), whose
softmax is (1 - sigmoid(z), sigmoid(z)). The walk needs each class's own kernel, so the split
is made at the last layer that mixes channels, whose kernel w becomes the two classes'
(-s w / 2, s w / 2). Between that layer and the scores may stand per-element affine layers
(a bias or scale kept as its own layer, a BatchNormalization, a linear Activation, `x * c`):
each maps z to a z + b, which moves the threshold but not which inputs raise the logit,
except that a negative a swaps them; s is the product of their signs. Any other layer there
(a ReLU, a LayerNormalization, a product of two tensors) is refused, naming it, as is a head
whose channel-mixing layer declares no `kernel` in the layer table (docs/unravel.md,
"Binary heads").
"""

import dataclasses
import typing
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from tf_segunravel.unravel.rules import PASS_THROUGH, LayerKind, UntraceableLayerError, kind_for

if typing.TYPE_CHECKING:
    from tf_segunravel.unravel.graph import Step

L = keras.layers

# Identities at inference: they pass the logit on unchanged.
IDENTITY_LAYERS = (
    L.Identity,
    L.Dropout,
    L.SpatialDropout2D,
    L.GaussianNoise,
    L.GaussianDropout,
    L.ActivityRegularization,
)
# Keras ops (a functional graph's `x * c`) that are affine in their one tensor argument.
AFFINE_OPS = ("Add", "Subtract", "Multiply", "Divide", "TrueDivide", "Negative")
SEE_THROUGH = (
    "Rescaling, BatchNormalization, Normalization, a linear Activation, Dropout or Identity, "
    "or x + c, x - c, c - x, x * c, x / c, -x with a constant c"
)

Sign = Callable[[], tf.Tensor]


class HeadSplitError(UntraceableLayerError):
    """A one-channel head the unravel cannot split into two classes (one line, naming the
    layer and what is unsupported)."""


def _refuse(layer, reason: str) -> HeadSplitError:
    name, kind = getattr(layer, "name", "?"), type(layer).__name__
    return HeadSplitError(
        f"unravel cannot split the one-channel head into two classes: {name!r} ({kind}) {reason}"
    )


def _constant_sign(layer, value) -> float:
    """The one sign (+1 or -1) of every element of a constant scale, or a refusal."""
    array = np.asarray(keras.ops.convert_to_numpy(value), np.float64)
    signs = np.unique(np.sign(array))
    if len(signs) != 1 or signs[0] == 0:
        raise _refuse(
            layer,
            "scales the logit by a constant that is zero or changes sign "
            f"(signs {sorted(int(s) for s in signs)}): no class is the one that grows with it",
        )
    return float(signs[0])


def _fixed(sign: float) -> Sign:
    return lambda: tf.constant(sign, tf.float32)


def _batch_norm_sign(layer) -> Sign:
    axis = layer.axis if isinstance(layer.axis, int) else tuple(layer.axis)
    if axis not in (-1, 3, (-1,), (3,)):
        raise _refuse(layer, f"normalises over axis {axis}, not the channel axis")
    if not layer.scale:
        return _fixed(1.0)
    _constant_sign(layer, layer.gamma)  # refuses a zero scale now; the sign is read per walk
    return lambda: tf.sign(tf.reshape(tf.cast(layer.gamma, tf.float32), []))


def _op_sign(step: "Step") -> Sign:
    op, name = step.layer, type(step.layer).__name__
    if name == "Negative":
        return _fixed(-1.0)
    arguments: typing.Any = step.arguments  # Keras' record of the call
    args = list(arguments.args) + list(arguments.kwargs.values())
    tensor_at = [i for i, arg in enumerate(args) if isinstance(arg, keras.KerasTensor)]
    if len(args) != 2 or len(tensor_at) != 1:
        raise _refuse(op, "is not an operation between the logit and one constant")
    constant, first = args[1 - tensor_at[0]], tensor_at[0] == 0
    if name == "Add":
        return _fixed(1.0)
    if name == "Subtract":
        return _fixed(1.0 if first else -1.0)
    if name == "Multiply" or first:  # x * c, x / c
        return _fixed(_constant_sign(op, constant))
    raise _refuse(op, "divides a constant by the logit, which is not affine")


def link_sign(step: "Step", kind: LayerKind | None) -> Sign:
    """The sign of a per-element affine step's scale, as a function read on every walk
    (a BatchNormalization's scale is a variable), or a `HeadSplitError`."""
    layer = step.layer
    if kind is not PASS_THROUGH:
        raise _refuse(
            layer,
            "stands between the scores and the last layer that mixes channels, and is not a "
            f"per-element layer; only {SEE_THROUGH} can stand there",
        )
    if isinstance(layer, IDENTITY_LAYERS):
        return _fixed(1.0)
    if isinstance(layer, L.Rescaling):
        return _fixed(_constant_sign(layer, layer.scale))
    if isinstance(layer, L.BatchNormalization):
        return _batch_norm_sign(layer)
    if isinstance(layer, L.Normalization):  # (x - mean) / std, or its inverse: std > 0
        return _fixed(1.0)
    if isinstance(layer, L.Activation) and layer.activation is keras.activations.linear:
        return _fixed(1.0)
    if not isinstance(layer, L.Layer) and type(layer).__name__ in AFFINE_OPS:
        return _op_sign(step)
    raise _refuse(
        layer,
        "stands between the scores and the last layer that mixes channels, and is not affine "
        f"in the logit; only {SEE_THROUGH} can stand there",
    )


@dataclasses.dataclass(frozen=True)
class BinarySplit:
    """Where a one-channel head is split: `step`, the last layer that mixes channels (its
    kind declares a `kernel`), and `through`, the per-element steps from its output to the
    scores, each with the sign of its scale."""

    step: "Step"
    kind: LayerKind
    through: tuple = ()
    signs: tuple = ()

    def sign(self) -> tf.Tensor:
        """float32 scalar, +1 or -1: whether the scores grow (+1) or fall with the split
        layer's output."""
        sign = tf.constant(1.0, tf.float32)
        for link in self.signs:
            sign = sign * link()
        return sign

    def kernel(self) -> tf.Tensor:
        """The split layer's kernel as the walk reads it: the background's filters
        -s w / 2 and the foreground's s w / 2, on the kernel's output-channel axis."""
        assert self.kind.kernel is not None  # checked by find_split
        weight = tf.convert_to_tensor(getattr(self.step.layer, self.kind.kernel))
        half = 0.5 * tf.cast(self.sign(), weight.dtype)  # exactly +-0.5
        return tf.concat([-half * weight, half * weight], axis=self.kind.kernel_axis)

    def describe(self) -> dict:
        """For the export's metadata: the split layer, the layers seen through, the sign."""
        layer: typing.Any = self.step.layer
        return {
            "split_at": layer.name,
            "through": [getattr(s.layer, "name", type(s.layer).__name__) for s in self.through],
            "sign": int(self.sign().numpy()),
        }


def find_split(
    producers: dict, score_id: int, kind_of: Callable, activation_inside: bool
) -> BinarySplit:
    """The `BinarySplit` of the one-channel score tensor `score_id` (`producers`: tensor id
    -> the step that makes it; `kind_of(step)`: its kind, None where unknown), or a
    `HeadSplitError` (an `UntraceableLayerError` for a layer without a kind).
    `activation_inside`: the score layer's own final activation is stepped over."""
    through: list = []
    signs: list = []
    tensor = score_id
    while True:
        step = producers.get(tensor)
        if step is None:
            raise HeadSplitError(
                "the one-channel head has no layer that mixes channels to split it at"
            )
        kind = kind_of(step)
        if kind is None:
            kind = kind_for(step.layer, len(step.inputs))  # raises, naming the layer
        if kind.kernel is not None:
            break
        if kind is not PASS_THROUGH and any(
            hasattr(step.layer, name) for name in ("kernel", "pointwise_kernel")
        ):
            raise HeadSplitError(
                f"the one-channel head would be split into two classes at "
                f"{step.layer.name!r} ({type(step.layer).__name__}), whose rule takes no "
                "kernel= (register_rule(..., kernel=NAME) declares one)"
            )
        signs.append(link_sign(step, kind))
        through.append(step)
        tensor = step.inputs[0]
    layer = step.layer
    own = getattr(layer, "activation", None)
    if own not in (None, keras.activations.linear) and not activation_inside:
        raise _refuse(
            layer,
            f"applies its own activation {getattr(own, '__name__', own)!r} to the logit; "
            "the layer a head is split at must be linear there (or end in the final sigmoid)",
        )
    if getattr(layer, "groups", 1) != 1:
        raise _refuse(layer, "is a grouped convolution, whose groups cannot be split")
    return BinarySplit(step, kind, tuple(reversed(through)), tuple(reversed(signs)))
