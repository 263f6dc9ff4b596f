"""What every benchmark shares: the median time of a call, and the profiler's time per op type."""

import collections
import glob
import json
import os
import statistics
import time

import tensorflow as tf


def median_seconds(fn, repeats):
    """Median wall time of `repeats` calls of `fn`, after one untimed call (tracing, warm-up)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def op_times(run, repeats, logdir):
    """[(op type, seconds, occurrences)], most seconds first: `run()` called `repeats` times
    under TensorFlow's profiler (into `logdir`), after one untimed call that traces and warms
    it, each op's own time summed by type (over both cores, so the sum exceeds the wall time;
    "IDLE" is the executor's idle time). Totals over all calls: divide by what one call does.
    The profiler's summary lists the 500 costliest ops, so a function of many cheap ops is
    undercounted. It is read through the profiler's private converter, the one TensorBoard's
    profile plugin calls."""
    from tensorflow.python.profiler.internal import _pywrap_profiler_plugin

    run()
    tf.profiler.experimental.start(logdir)
    try:
        for _ in range(repeats):
            run()
    finally:
        tf.profiler.experimental.stop()
    (path,) = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
    data, ok = _pywrap_profiler_plugin.xspace_to_tools_data([path], "framework_op_stats", {})
    if not ok:
        raise RuntimeError(f"{path}: the profiler could not summarise it: {data[:200]!r}")
    table = json.loads(data)[0]  # the table with the idle time (the next one leaves it out)
    columns = [column["id"] for column in table["cols"]]
    seconds, occurrences = collections.Counter(), collections.Counter()
    for row in table["rows"]:
        cells = dict(zip(columns, (cell["v"] if cell else None for cell in row["c"]), strict=True))
        seconds[cells["type"]] += cells["total_self_time"] * 1e-6  # us -> s
        occurrences[cells["type"]] += int(cells["occurrences"])
    return [(op_type, total, occurrences[op_type]) for op_type, total in seconds.most_common()]
