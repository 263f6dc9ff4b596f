"""Each convolution kernel as a table of filter-tap rows, made once and kept between walks.

A convolution rule reads each point's filter over its window. Keras keeps a kernel as
[kh, kw, C_in, F], so a filter is a strided column; past a few points the rule reads rows of
the transposed kernel instead (`convolution.window_weights`), and transposing every kernel
on every walk was a large share of DeepLab-LargeFOV's unravel (docs/benchmarks.md).
`KernelRows` keeps the transposed kernel in a variable, one row per (filter, tap) and a row
of zeros that taps outside the input read (so the products need no mask), with a copy of
the kernel it was made from. Every walk that reads the table first compares the kernel
with that copy bit for bit and makes the table again if anything changed (training,
`set_weights`, `assign`, a checkpoint restored), so the table is always the current
weights'. The comparison reads the kernel and the copy, about a third of a transpose's
time (docs/benchmarks.md).

An engine holds the tables of the convolutions it walks when it is built (`SegUnravel`'s
`cache_kernels`: on by default where the scores are a map), two extra copies of each kernel
in memory, shared by every engine on the same layers and freed with them. An engine built
with `cache_kernels=False` reads none (the SavedModel export's, whose files would otherwise
carry both copies), and `disabled()` keeps them out of whatever is traced inside it.

No TensorFlow or Keras facility keeps a value derived from a variable and notices when the
variable is assigned, hence this module.
"""

import contextlib
import contextvars
import weakref
from collections.abc import Iterator
from contextlib import AbstractContextManager

import numpy as np
import tensorflow as tf

from tf_segunravel.unravel.rules.base import AnyLayer

_enabled = contextvars.ContextVar("kernel_rows_enabled", default=True)

# layer -> {kernel attribute name: KernelRows}; freed with the layer, shared by every engine
# on it. (Keras variables are not hashable, so the layer and the attribute name are the key.)
_held: "weakref.WeakKeyDictionary[object, dict[str, KernelRows]]" = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def enabled(flag: bool = True) -> Iterator[None]:
    """Whether walks traced inside this block read the held tables (`for_layer`); with
    False they transpose their kernels on every call, as without a cache. An enclosing
    `disabled()` wins (an engine's own setting cannot turn the tables back on inside it)."""
    token = _enabled.set(_enabled.get() and bool(flag))
    try:
        yield
    finally:
        _enabled.reset(token)


def disabled() -> AbstractContextManager[None]:
    """`enabled(False)`: for what must not capture the tables, whichever engine traces it."""
    return enabled(False)


def hold(layer: AnyLayer, name: str = "kernel") -> "KernelRows":
    """Makes (once per layer and kernel) and returns the `KernelRows` of `layer`'s kernel
    attribute `name`. Called eagerly when an engine is built: a variable first made inside
    a trace would make `tf.function` trace the caller's function twice."""
    per_layer = _held.setdefault(layer, {})
    if name not in per_layer:
        per_layer[name] = KernelRows(getattr(layer, name))
    return per_layer[name]


def for_layer(layer: AnyLayer, name: str = "kernel") -> "KernelRows | None":
    """The held `KernelRows` of `layer`'s kernel `name`, or None (none held, or disabled)."""
    if not _enabled.get():
        return None
    return _held.get(layer, {}).get(name)


def _bits(tensor):
    """The tensor's bits as unsigned integers (so -0.0 differs from 0.0 and NaN equals
    itself: the comparison is on bits, not values)."""
    unsigned = {2: tf.uint16, 4: tf.uint32, 8: tf.uint64}[tensor.dtype.size]
    return tf.bitcast(tensor, unsigned)


class KernelRows:
    """The taps of one convolution kernel variable [kh, kw, C_in, F] as rows: row
    f * kh * kw + t is filter f's tap t over the C_in input channels, and a last row of
    zeros (the weight of a tap outside the input), in the variable's dtype."""

    def __init__(self, kernel: tf.Variable) -> None:
        self._kernel = kernel
        kh, kw, _, filters = kernel.shape
        self.taps, self.filters = kh * kw, filters
        with tf.init_scope():  # eager variables even if an engine is built inside a trace
            flat = self._flat()
            self._source = tf.Variable(flat, trainable=False, name="kernel_rows_source")
            self._rows = tf.Variable(self._table(flat), trainable=False, name="kernel_rows")

    def _flat(self):
        kernel = tf.convert_to_tensor(self._kernel)
        return tf.reshape(kernel, [-1, self.filters])  # [T * C_in, F]

    def _table(self, flat):
        rows = tf.reshape(tf.transpose(flat), [self.filters * self.taps, -1])
        return tf.concat([rows, tf.zeros_like(rows[:1])], axis=0)

    def rows(self) -> tf.Tensor:
        """The table of the current weights: the held one when the kernel's bits are those
        it was made from, else a fresh one (which is then held)."""
        flat = self._flat()
        unchanged = tf.reduce_all(tf.equal(_bits(self._source.read_value()), _bits(flat)))

        def make_again():
            fresh = self._table(flat)
            with tf.control_dependencies([self._source.assign(flat), self._rows.assign(fresh)]):
                return tf.identity(fresh)

        return tf.cond(unchanged, self._rows.read_value, make_again)

    @property
    def nbytes(self) -> int:
        """Bytes held (both copies)."""
        return 2 * int(np.prod(self._source.shape)) * self._source.dtype.size
