"""What every benchmark shares: the median time of a call."""

import statistics
import time


def median_seconds(fn, repeats):
    """Median wall time of `repeats` calls of `fn`, after one untimed call (tracing, warm-up)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
