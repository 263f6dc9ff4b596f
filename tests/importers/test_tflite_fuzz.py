"""The TFLite reader on mutated files: every one imports or ends in a `TfliteImportError`;
nothing crashes, hangs or raises anything else. Run in a subprocess with a time limit, so a
crash in the flatbuffer reader or LiteRT fails the test instead of the test run."""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("ai_edge_litert")

from tests.helpers import REPO_ROOT
from tests.importers.test_onnx_fuzz import tally_imports

SECONDS = 120  # the fuzz loop's own budget; the subprocess gets twice that


def small_segmenter() -> bytes:
    """A converted Keras segmenter with the importer's common ops: a strided convolution with
    a fused ReLU, a depthwise convolution, a dilated one (SPACE_TO_BATCH_ND), pooling, a skip
    and a bilinear resize back to the input."""
    import keras
    import tensorflow as tf

    L = keras.layers
    keras.utils.set_random_seed(0)
    inputs = keras.Input((24, 24, 3))
    x = L.Conv2D(8, 3, strides=2, padding="same", activation="relu")(inputs)
    y = L.DepthwiseConv2D(3, padding="same")(x)
    y = L.Conv2D(8, 3, padding="same", dilation_rate=2)(y)
    x = L.Add()([x, y])
    x = L.AveragePooling2D(2)(x)
    x = L.Conv2D(4, 1)(x)
    outputs = L.UpSampling2D(4, interpolation="bilinear")(x)
    model = keras.Model(inputs, outputs)
    return tf.lite.TFLiteConverter.from_keras_model(model).convert()


def fuzz(folder: str, count: int, seed: int, seconds: float) -> dict:
    """`tally_imports` of `small_segmenter`'s mutants by the TFLite importer."""
    from tf_segunravel.importers.tflite_model import TfliteImportError, import_tflite

    data = small_segmenter()
    return tally_imports(
        data, ".tflite", import_tflite, TfliteImportError, folder, count, seed, seconds
    )


@pytest.mark.slow  # mutants for two minutes in a subprocess
def test_mutated_tflite_files_import_or_are_refused_cleanly(tmp_path):
    code = (
        "import json, sys; from tests.importers.test_tflite_fuzz import fuzz; "
        f"print(json.dumps(fuzz({str(tmp_path)!r}, 400, 0, {SECONDS})))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=2 * SECONDS + 120,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    tally = json.loads(proc.stdout.strip().splitlines()[-1])
    assert tally["unclean"] == [], tally["unclean"]
    assert tally["tried"] >= 30 and tally["refused"] > 0, tally
