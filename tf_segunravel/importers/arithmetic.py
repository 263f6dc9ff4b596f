"""What both importers make of an element-wise op between a tensor and a constant."""

import keras
import numpy as np


def constant_rescaling(
    kind: str, constant: np.ndarray | float, tensor_first: bool, name: str
) -> keras.layers.Rescaling | None:
    """`tensor <kind> constant` (or `constant <kind> tensor` unless `tensor_first`) for kind
    add, sub, mul or div, with a scalar or per-channel constant, as one Rescaling layer; None
    for a constant divided by a tensor, which no such layer computes."""
    c = np.asarray(constant, np.float32)
    one, zero = np.ones((), np.float32), np.zeros((), np.float32)
    scale: np.ndarray
    offset: np.ndarray
    if kind == "add":
        scale, offset = one, c
    elif kind == "sub":
        scale, offset = (one, -c) if tensor_first else (-one, c)
    elif kind == "mul":
        scale, offset = c, zero
    elif tensor_first:  # x / c
        scale, offset = one / c, zero
    else:
        return None

    def plain(value):  # a Python float for a scalar, so that the layer's config stays simple
        return value if np.ndim(value) else float(value)

    return keras.layers.Rescaling(scale=plain(scale), offset=plain(offset), name=name)
