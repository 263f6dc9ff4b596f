"""A layer test in the manner of keras-hub's `run_layer_test`: what every custom layer of
the package must survive, beyond its arithmetic.

- its config round-trips (`from_config(get_config())` gives the same config and outputs);
- inside a functional model it saves to `.keras` and loads without `custom_objects`, with
  the same outputs;
- under the `mixed_float16` policy it computes in float16 and stays close to float32;
- with unknown spatial sizes it serves several input sizes from one model, each matching
  `compute_output_shape` and the layer called eagerly.
"""

import os
import tempfile

import keras
import numpy as np


def run_layer_test(
    layer_cls, init_kwargs, input_channels=3, sizes=((9, 7), (16, 16)), low=0.0, high=255.0
):
    """Runs every check on `layer_cls(**init_kwargs)` for [2, H, W, input_channels] inputs."""
    rng = np.random.default_rng(0)
    inputs = {size: rng.uniform(low, high, (2, *size, input_channels)) for size in sizes}
    inputs = {size: x.astype(np.float32) for size, x in inputs.items()}
    layer = layer_cls(**init_kwargs)

    # Config round trip.
    config = layer.get_config()
    clone = layer_cls.from_config(config)
    assert clone.get_config() == config, (clone.get_config(), config)
    first = inputs[sizes[0]]
    np.testing.assert_allclose(clone(first).numpy(), layer(first).numpy(), rtol=1e-6)

    # Dynamic spatial shapes: one model, several sizes.
    source = keras.Input((None, None, input_channels))
    model = keras.Model(source, layer_cls(**init_kwargs)(source))
    for size, x in inputs.items():
        out = model(x).numpy()
        expected = layer.compute_output_shape(x.shape)
        assert tuple(out.shape) == tuple(expected), (size, out.shape, expected)
        np.testing.assert_allclose(out, layer(x).numpy(), rtol=1e-5, atol=1e-5)

    # `.keras` inside a model, loaded with no custom_objects.
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "model.keras")
        model.save(path)
        loaded = keras.models.load_model(path)
    for x in inputs.values():
        np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), rtol=1e-6)
    assert type(loaded.layers[-1]) is layer_cls

    # Mixed precision: float16 compute, float32 variables, close to the float32 result.
    mixed = layer_cls(**init_kwargs, dtype="mixed_float16")
    out16 = mixed(first)
    assert mixed.compute_dtype == "float16" and out16.dtype == "float16", out16.dtype
    reference = layer(first).numpy()
    scale = max(float(np.abs(reference).max()), 1.0)
    np.testing.assert_allclose(out16.numpy().astype(np.float32), reference, atol=2e-3 * scale)
