"""bench/profile_unravel.py re-runs each rule of a walk on its own: the repeats must be the
walk's own calls, or the profile times something else."""

import keras
import numpy as np
import tensorflow as tf

from bench.profile_unravel import record_calls
from tf_segunravel.models import deeplab_largefov
from tf_segunravel.unravel import SegUnravel


def test_the_profile_repeats_every_rule_and_merge_of_the_walk():
    keras.utils.set_random_seed(0)
    model = deeplab_largefov(num_classes=4, width=1 / 16)
    engine = SegUnravel(model)
    image = tf.constant(np.random.default_rng(0).uniform(0, 255, (1, 49, 49, 3)), tf.float32)
    values = engine.record(image)
    calls = record_calls(engine, values)
    rules = [c for c in calls if c[1] == "rule"]
    walked = [s for s in engine.graph.steps if engine.graph.kind(s) is not None]
    assert len(rules) == len(walked)  # one call per layer, each layer once
    assert {c[0] for c in rules} >= {"Conv2D", "CaffePooling2D"}
    assert calls[-1][:2] == ("ImageMerge", "merge")
    # The score layer's rule, repeated compiled, moves the seeds as the walk did.
    kind, _, again, args, arriving = rules[0]
    assert kind == "Conv2D" and arriving == int(tf.size(args[2][0]))
    moved = tf.function(again)(*args)
    direct = again(*args)
    for a, b in zip(tf.nest.flatten(moved), tf.nest.flatten(direct), strict=True):
        if a is not None:
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    # The engine is left as it was: its table holds the original rules again.
    assert engine.walk(values).counts.numpy().sum() == engine.walk(values).seeds.numpy().sum()
    assert all("record_calls" not in engine.graph.kind(s).rule.__qualname__ for s in walked)


def _compiled_walk():
    """(model, engine, compiled walk, its recorded values) of a tiny LargeFOV, as the
    profile compiles them."""
    keras.utils.set_random_seed(0)
    model = deeplab_largefov(num_classes=4, width=1 / 16)
    engine = SegUnravel(model)
    image = tf.constant(np.random.default_rng(0).uniform(0, 255, (1, 49, 49, 3)), tf.float32)
    record = tf.function(lambda x: {str(k): v for k, v in engine.record(x).items()})
    walk = tf.function(lambda values: engine.walk({int(k): v for k, v in values.items()}))
    return model, engine, walk, record(image)


def test_the_op_count_charges_the_walks_ops_to_its_layers():
    from bench.profile_unravel import op_counts

    model, engine, walk, values = _compiled_walk()
    counts = op_counts(engine, walk, values)
    convolutions = sum(1 for layer in model.layers if type(layer).__name__ == "Conv2D")
    # Every convolution rule is dozens of ops; the seeding and the image's merge are "other".
    assert counts["Conv2D"] > 20 * convolutions
    assert counts["CaffePooling2D"] > 0
    assert 0 < counts["other"] < counts["Conv2D"]


def test_the_op_times_profile_the_compiled_walk(tmp_path):
    from bench.timing import op_times

    _, _, walk, values = _compiled_walk()
    timed = op_times(lambda: walk(values).counts.numpy(), 2, str(tmp_path))
    times = {op_type: seconds for op_type, seconds, _ in timed}
    # Each op type ran in both walks.
    assert all(count % 2 == 0 for op_type, _, count in timed if op_type != "IDLE")
    # The convolution rules gather windows and filters: the walk's gathers are timed.
    assert times["GatherV2"] > 0
    assert all(seconds >= 0 for seconds in times.values())
    assert list(times) == sorted(times, key=lambda t: -times[t])
