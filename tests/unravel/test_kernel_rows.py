"""The held kernel tables (rules/kernel_rows.py): the same points as transposing on every
walk, fresh after every change of the weights (also inside a compiled function), made
before any trace, and kept out of SavedModels."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.unravel.test_engine import images, integer_weights
from tests.unravel.test_fast_paths import SETTINGS, mixed_model
from tf_segunravel.export import export_saved_model
from tf_segunravel.unravel import SegUnravel
from tf_segunravel.unravel.rules import kernel_rows

L = keras.layers
NAMES = ("kernel", "pointwise_kernel", "depthwise_kernel")


def _points(result):
    return result.points, result.counts


def _assert_same(a, b):
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize(
    "settings", SETTINGS, ids=lambda s: ",".join(map(str, s.values())) or "default"
)
def test_held_tables_give_the_points_of_a_fresh_transpose(settings):
    model = integer_weights(mixed_model())
    batch = images()
    held = SegUnravel(model, **settings)
    assert held.cache_kernels  # a score map: on by default
    plain = SegUnravel(model, cache_kernels=False, **settings)
    fast, slow = _points(held(batch)), _points(plain(batch))
    assert len(fast[0]) > 10
    _assert_same(fast, slow)


def test_the_rows_path_reads_the_held_table(monkeypatch):
    """Every convolution of the mixed model reads its table (enough points for the rows
    path), so a table that were never refreshed would be read: see the next test."""
    reads = []
    original = kernel_rows.KernelRows.rows

    def counting(self):
        reads.append(self)
        return original(self)

    monkeypatch.setattr(kernel_rows.KernelRows, "rows", counting)
    model = integer_weights(mixed_model())
    SegUnravel(model)(images())
    tables = [kernel_rows.for_layer(layer, name) for layer in model.layers for name in NAMES]
    held = {id(table) for table in tables if table is not None}
    # Conv2D x3 (the grouped one too) and the separable's pointwise kernel.
    assert len(held) == 4
    assert {id(r) for r in reads} == held


def test_tables_follow_new_weights_inside_one_compiled_function():
    model = integer_weights(mixed_model())
    batch = tf.constant(images())
    engine = SegUnravel(model)
    compiled = tf.function(engine.trace)
    before = _points(compiled(batch).numpy())
    rng = np.random.default_rng(7)
    for layer in model.layers:
        if isinstance(layer, L.Conv2D):  # new integer kernels: other choices
            layer.kernel.assign(rng.integers(-4, 5, layer.kernel.shape).astype("float32"))
    after = _points(compiled(batch).numpy())
    fresh = _points(SegUnravel(model, cache_kernels=False)(batch))
    _assert_same(after, fresh)
    assert len(before[0]) != len(after[0]) or np.any(before[0] != after[0])
    # A change of one bit of one weight is seen too: -0.0 for 0.0.
    layer = next(layer for layer in model.layers if isinstance(layer, L.Conv2D))
    table = kernel_rows.for_layer(layer)
    kernel = layer.kernel.numpy()
    zero = np.argwhere(kernel == 0)[0]
    kernel[tuple(zero)] = -0.0
    layer.kernel.assign(kernel)
    rows = table.rows().numpy()
    filters = kernel.shape[-1]
    taps = kernel.shape[0] * kernel.shape[1]
    row = zero[3] * taps + zero[0] * kernel.shape[1] + zero[1]
    assert np.signbit(rows[row, zero[2]])
    assert rows.shape == (filters * taps + 1, kernel.shape[2])
    assert not np.any(rows[-1])  # the zero row of taps outside the input


def test_tables_follow_a_restored_checkpoint(tmp_path):
    """A checkpoint's restore writes the variables without Keras's `assign`: the bit check
    sees it too."""
    model = integer_weights(mixed_model())
    batch = tf.constant(images())
    engine = SegUnravel(model)
    want = _points(engine(batch))
    path = tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt"))
    rng = np.random.default_rng(3)
    for layer in model.layers:
        if isinstance(layer, L.Conv2D):
            layer.kernel.assign(rng.integers(-4, 5, layer.kernel.shape).astype("float32"))
    changed = _points(engine(batch))  # the tables now hold the new weights
    _assert_same(changed, _points(SegUnravel(model, cache_kernels=False)(batch)))
    tf.train.Checkpoint(model=model).read(path).assert_consumed()
    restored = _points(engine(batch))
    _assert_same(restored, want)
    _assert_same(restored, _points(SegUnravel(model, cache_kernels=False)(batch)))
    assert len(changed[0]) != len(want[0]) or np.any(changed[0] != want[0])


def test_tables_are_made_once_before_any_trace_and_shared():
    model = integer_weights(mixed_model())
    traces = []

    @tf.function
    def run(batch):
        traces.append(1)
        return engine.trace(batch).counts

    engine = SegUnravel(model)
    conv = next(layer for layer in model.layers if isinstance(layer, L.Conv2D))
    table = kernel_rows.for_layer(conv)
    assert table is not None and table.nbytes == 2 * conv.kernel.numpy().nbytes
    run(tf.constant(images()))
    assert len(traces) == 1  # a variable made inside the trace would trace it twice
    assert kernel_rows.for_layer(conv) is table
    assert SegUnravel(model, k=3) and kernel_rows.for_layer(conv) is table  # shared
    with kernel_rows.disabled():
        assert kernel_rows.for_layer(conv) is None
        with kernel_rows.enabled(True):  # the enclosing block wins
            assert kernel_rows.for_layer(conv) is None


def test_classifiers_hold_no_tables():
    inp = keras.Input((16, 16, 3))
    x = L.Conv2D(4, 3, activation="relu")(inp)
    x = L.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, L.Dense(3)(x))
    assert not SegUnravel(model).cache_kernels
    assert kernel_rows.for_layer(model.layers[1]) is None
    assert SegUnravel(model, cache_kernels=True).cache_kernels
    assert kernel_rows.for_layer(model.layers[1]) is not None


def test_saved_models_carry_no_tables(tmp_path):
    model = integer_weights(mixed_model())
    SegUnravel(model)(images())  # tables held for the model's layers
    export_saved_model(model, str(tmp_path / "saved"))
    for written in tmp_path.glob("saved/**/*"):
        if written.is_file():
            assert b"kernel_rows" not in written.read_bytes(), written
    loaded = tf.saved_model.load(str(tmp_path / "saved"))
    names = [v.name for v in loaded.variables]
    assert names and not any("kernel_rows" in name for name in names)
    weights = sum(w.numpy().size for w in model.weights)
    assert sum(int(np.prod(v.shape)) for v in loaded.variables) == weights
    exported = loaded.signatures["fixations"](images=tf.cast(images(), tf.uint8))
    assert exported["points"].shape[0] > 0
