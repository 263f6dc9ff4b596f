"""Where the unravel's time goes, per layer kind.

    python3 -m bench.profile_unravel --model=LargeFOV --size=321 [--repeats=5]
    python3 -m bench.profile_unravel --model=ResNet50 --size=224

One walk runs eagerly with every rule of the layer table and every merge wrapped, so that
each call's arguments are kept. Each call is then run again on its own as a compiled
`tf.function` (its tensors passed as arguments, so nothing is folded at trace time) and
timed (median of --repeats after one untimed call). The figures are per layer type: the
summed rule time, the summed time of the merges run before those layers, the number of
layers, of those that no point reached (whose rules run all their ops on nothing) and of
points arriving. The parts add up to more than the compiled whole walk, which
is printed beside them: each separate function pays its own call overhead
(`call_overhead_s`, an empty function's, measured in the same run; `calls` of them).

It also counts the ops the compiled walk runs, per layer type (`<type>_ops`, the layer's
merge and rule together; `walk_ops` in all): the graph after TensorFlow's optimiser
(Grappler: shapes known at trace time and constants folded away), constants not counted.
A walk of few points costs about its op count times the per-op cost of the executor
(`walk_s_per_op`), whatever the work inside each op; that count does not depend on the load.

With `--op_times`, TensorFlow's profiler also records --repeats compiled walks and the
time of each op type is printed per walk (`op_<type>_s`, the ops' own time on both cores
added, the executor's idle time as `op_idle_s`): where a walk's time goes by kind of work
(gathers, products, sums, the argmax, the held tables' checks as `op_equal_s`).

`--model` is LargeFOV (full width, 21 classes, random weights) or a name of bench/zoo.py.
"""

import collections
import dataclasses
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags, logging

from bench import zoo
from bench.timing import median_seconds, op_times
from tf_segunravel.models import deeplab_largefov
from tf_segunravel.unravel import SegUnravel, tracer

flags.DEFINE_string("model", "LargeFOV", "LargeFOV or a bench/zoo.py model name.")
# --size (default 224) and --repeats are bench/zoo.py's flags, shared.
flags.DEFINE_integer("top", 12, "Layer types (and op types) printed, slowest first.")
flags.DEFINE_bool(
    "op_times", False, "Also profile the compiled walk per op type (TensorFlow's profiler)."
)
FLAGS = flags.FLAGS


def build(name, size):
    if name == "LargeFOV":
        return deeplab_largefov(num_classes=21)
    return zoo.build(name, size)


def record_calls(engine, values):
    """Runs one eager walk and returns [(layer type, rule or 'merge', fn, args, points in)]:
    `fn(*args)` repeats the call."""
    calls, merges = [], []
    original_merge = tracer.merge

    def merge(points, sizes, sort=True):
        merges.append((points, sizes, sort))
        return original_merge(points, sizes, sort)

    def take_merges(kind_name):
        """The merges recorded since the last rule, as calls charged to `kind_name`."""
        for merged, sizes, sort in merges:

            def again(p, sizes=sizes, sort=sort):
                return original_merge(tracer.Points(*p), sizes, sort)

            calls.append((kind_name, "merge", again, (tuple(merged),), int(tf.size(merged.b))))
        merges.clear()

    def wrap(step, kind):
        def rule(layer, x, output, points, settings, **extra):
            kind_name = type(layer).__name__
            take_merges(kind_name)  # the merges the walk ran before this layer
            names = sorted(extra)

            def again(x, output, p, *extra_values, layer=layer, kind=kind, names=names):
                return kind.rule(
                    layer,
                    x,
                    output,
                    tracer.Points(*p),
                    settings,
                    **dict(zip(names, extra_values, strict=True)),
                )

            args = (x, output, tuple(points), *(extra[n] for n in names))
            calls.append((kind_name, "rule", again, args, int(tf.size(points.b))))
            return kind.rule(layer, x, output, points, settings, **extra)

        return rule

    kinds = engine.graph.kinds
    saved = dict(kinds)
    for step in engine.graph.steps:
        kind = kinds.get(id(step))
        if kind is not None:
            kinds[id(step)] = dataclasses.replace(kind, rule=wrap(step, kind))
    tracer.merge = merge
    try:
        engine.walk(values)
    finally:
        tracer.merge = original_merge
        kinds.clear()
        kinds.update(saved)
    take_merges("ImageMerge")  # the image's merge, after the last layer
    return calls


def op_counts(engine, walk, values):
    """{layer type: ops} of the compiled walk after Grappler, constants left out. Ops are
    attributed by the name scope the walk opens per layer; the seeding and the image's merge
    are under "other"."""
    from tensorflow.core.protobuf import config_pb2
    from tensorflow.python.grappler import tf_optimizer  # the optimiser tf.function runs

    concrete = walk.get_concrete_function(values)
    graph = concrete.graph
    meta = tf.compat.v1.train.export_meta_graph(graph_def=graph.as_graph_def(), graph=graph)
    fetch = meta.collection_def["train_op"].node_list.value
    fetch.extend(t.name for t in concrete.outputs)
    optimized = tf_optimizer.OptimizeGraph(config_pb2.ConfigProto(), meta)
    kinds = {tracer._scope_name(s.layer.name): type(s.layer).__name__ for s in engine.graph.steps}
    counts = collections.Counter()
    for node in optimized.node:
        if node.op not in ("Const", "Placeholder", "NoOp"):
            counts[kinds.get(node.name.split("/")[0], "other")] += 1
    return counts


def main(_):
    logging.set_verbosity(logging.ERROR)  # one tf.function per call retraces by design
    keras.utils.set_random_seed(0)
    model = build(FLAGS.model, FLAGS.size)
    engine = SegUnravel(model)
    image = tf.constant(
        np.random.default_rng(0).uniform(0, 255, (1, FLAGS.size, FLAGS.size, 3)), tf.float32
    )
    forward = tf.function(lambda x: model(x, training=False))
    forward_s = median_seconds(lambda: forward(image).numpy(), FLAGS.repeats)
    record = tf.function(lambda x: {str(k): v for k, v in engine.record(x).items()})
    walk = tf.function(lambda values: engine.walk({int(k): v for k, v in values.items()}))
    compiled = record(image)
    walk_s = median_seconds(lambda: walk(compiled).counts.numpy(), FLAGS.repeats)

    ops = op_counts(engine, walk, compiled)
    values = {int(k): v for k, v in compiled.items()}
    per_kind = collections.defaultdict(
        lambda: {"rule_s": 0.0, "merge_s": 0.0, "layers": 0, "empty": 0}
    )
    points_in = collections.Counter()
    recorded = record_calls(engine, values)
    calls = len(recorded)
    for kind_name, what, fn, args, arriving in recorded:
        compiled_fn = tf.function(fn)
        seconds = median_seconds(
            lambda f=compiled_fn, a=args: [
                t.numpy() for t in tf.nest.flatten(f(*a)) if t is not None
            ],
            FLAGS.repeats,
        )
        entry = per_kind[kind_name]
        entry[f"{what}_s"] += seconds
        if what == "rule":
            entry["layers"] += 1
            entry["empty"] += arriving == 0
            points_in[kind_name] += arriving
    print(f"model: {FLAGS.model}")
    print(f"size: {FLAGS.size}")
    print(f"cpu_cores: {os.cpu_count()}")
    total = 0.0
    ranked = sorted(per_kind.items(), key=lambda kv: -(kv[1]["rule_s"] + kv[1]["merge_s"]))
    for kind_name, entry in ranked[: FLAGS.top]:
        key = kind_name.lower()
        print(f"{key}_layers: {entry['layers']}")
        print(f"{key}_points_in: {points_in[kind_name]}")
        print(f"{key}_layers_without_points: {entry['empty']}")
        print(f"{key}_rule_s: {entry['rule_s']:.4f}")
        print(f"{key}_merge_s: {entry['merge_s']:.4f}")
        print(f"{key}_ops: {ops[kind_name]}")
    for entry in per_kind.values():
        total += entry["rule_s"] + entry["merge_s"]
    empty = tf.function(lambda t: t + 1)
    one = tf.constant([1])
    call_s = median_seconds(lambda: empty(one).numpy(), 20)
    print(f"call_overhead_s: {call_s:.5f}")
    print(f"calls: {calls}")
    print(f"forward_s: {forward_s:.4f}")
    print(f"walk_s: {walk_s:.4f}")
    print(f"walk_ops: {sum(ops.values())}")
    print(f"other_ops: {ops['other']}")
    print(f"walk_s_per_op: {walk_s / sum(ops.values()):.2e}")
    print(f"parts_s: {total:.4f}")
    for kind_name, entry in ranked[: FLAGS.top]:
        share = (entry["rule_s"] + entry["merge_s"]) / total
        print(f"{kind_name.lower()}_share_of_parts: {share:.3f}")
    print(f"parts_over_walk: {total / walk_s:.3f}")
    print(f"parts_less_call_overhead_over_walk: {(total - calls * call_s) / walk_s:.3f}")
    if FLAGS.op_times:
        with tempfile.TemporaryDirectory() as logdir:
            timed = op_times(lambda: walk(compiled).counts.numpy(), FLAGS.repeats, logdir)
            for op_type, seconds, _ in timed[: FLAGS.top]:
                print(f"op_{op_type.lower()}_s: {seconds / FLAGS.repeats:.4f}")
    print(f"walk_over_forward: {walk_s / forward_s:.3f}")


if __name__ == "__main__":
    app.run(main)
