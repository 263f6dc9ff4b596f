"""Unravel speed on the full-size network: forward pass, unravel, naive per-point loop.

    python3 -m bench.unravel [--sizes=321,513 --repeats=3 --naive_seeds=12]

Full-size DeepLab-LargeFOV (width 1, 21 classes, random weights drawn with seed 0;
--weights loads converted Caffe weights), one image per size, every detected class
unravelled. `forward_s` is a compiled forward pass, `unravel_s` the engine's walk from the
scores to the image on the recorded activations of that pass (medians of --repeats). The
naive per-point loop (tests/unravel_reference.py) is timed on the first --naive_seeds seeds
and scaled to all seeds. With --held_tables (default) the same walk is also timed on an
engine that transposes every kernel on every call (`cache_kernels=False`), and the held
tables' bit-for-bit checks on their own (`unravel/rules/kernel_rows.py`). Peak resident
memory of the process is printed before the ratios, which come last.
"""

import os
import resource
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags

from bench.timing import median_seconds
from tests.unravel_reference import naive_unravel
from tf_segunravel.models import deeplab_largefov
from tf_segunravel.unravel import SegUnravel
from tf_segunravel.unravel.rules import kernel_rows

flags.DEFINE_list("sizes", ["321", "513"], "Square image sides.")
flags.DEFINE_integer("repeats", 3, "Timed runs per figure (median).")
flags.DEFINE_integer("naive_seeds", 12, "Seeds the naive loop is timed on (0: skip it).")
flags.DEFINE_string("weights", None, "Optional converted LargeFOV .weights.h5.")
flags.DEFINE_bool(
    "held_tables", True, "Also time the walk without held kernel tables, and their checks."
)
FLAGS = flags.FLAGS


def main(_):
    keras.utils.set_random_seed(0)  # the same weights, so the same points, on every run
    model = deeplab_largefov(num_classes=21)
    if FLAGS.weights:
        model.load_weights(FLAGS.weights)
    engine = SegUnravel(model)
    forward = tf.function(lambda x: model(x, training=False))
    record = tf.function(lambda x: {str(k): v for k, v in engine.record(x).items()})
    walk = tf.function(lambda values: engine.walk({int(k): v for k, v in values.items()}))
    trace = tf.function(engine.trace)
    uncached = SegUnravel(model, cache_kernels=False)
    walk_uncached = tf.function(
        lambda values: uncached.walk({int(k): v for k, v in values.items()})
    )
    tables = [kernel_rows.for_layer(layer) for layer in model.layers]
    tables = [table for table in tables if table is not None]
    # One element of each table, so that every check's result is used.
    check_tables = tf.function(lambda: tf.stack([table.rows()[0, 0] for table in tables]))
    print(f"held_tables_mb: {sum(table.nbytes for table in tables) / 1e6:.0f}")
    ratios = {}
    print(f"cpu_cores: {os.cpu_count()}")
    print(f"gpus: {len(tf.config.list_physical_devices('GPU'))}")
    for size in map(int, FLAGS.sizes):
        image = tf.constant(
            np.random.default_rng(size).uniform(0, 255, (1, size, size, 3)), tf.float32
        )
        forward_s = median_seconds(lambda image=image: forward(image).numpy(), FLAGS.repeats)
        values = record(image)
        unravel_s = median_seconds(lambda values=values: walk(values).counts.numpy(), FLAGS.repeats)
        out = trace(image)
        seeds = int(tf.reduce_sum(out.seeds))
        classes = int(tf.math.count_nonzero(tf.reduce_sum(out.seeds, axis=0)))
        print(f"size_{size}_seeds: {seeds}")
        print(f"size_{size}_classes: {classes}")
        print(f"size_{size}_forward_s: {forward_s:.3f}")
        print(f"size_{size}_unravel_s: {unravel_s:.3f}")
        ratios[f"size_{size}_unravel_over_forward"] = unravel_s / forward_s
        if FLAGS.held_tables:
            # The same walk transposing every kernel on every call, and the held tables'
            # checks on their own (the weights unchanged, so no table is remade).
            uncached_s = median_seconds(
                lambda values=values: walk_uncached(values).counts.numpy(), FLAGS.repeats
            )
            checks_s = median_seconds(lambda: check_tables().numpy(), FLAGS.repeats)
            print(f"size_{size}_unravel_uncached_s: {uncached_s:.3f}")
            print(f"size_{size}_table_checks_s: {checks_s:.4f}")
            ratios[f"size_{size}_uncached_over_held"] = uncached_s / unravel_s
            ratios[f"size_{size}_table_checks_over_unravel"] = checks_s / unravel_s
        if FLAGS.naive_seeds:
            start = time.perf_counter()
            naive_unravel(model, image.numpy(), seed_limit=FLAGS.naive_seeds)
            naive_s = (time.perf_counter() - start) * seeds / FLAGS.naive_seeds
            print(f"size_{size}_naive_s_estimated: {naive_s:.1f}")
            ratios[f"size_{size}_speedup_over_naive"] = naive_s / unravel_s
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak_rss_mb: {peak:.0f}")
    for name, value in ratios.items():
        print(f"{name}: {value:.3f}")


if __name__ == "__main__":
    app.run(main)
