"""Heat maps for a batch: time and memory of outlier removal, masks and blur.

    python3 -m bench.heatmaps [--images=8 --size=513 --k=3 --width=0.25 --repeats=3]

A LargeFOV (random weights, 21 classes) is unravelled with K = --k over a batch of --images
random images of --size pixels; `fixation_maps` then draws every class's heat map at image
size with the default settings (outlier radius 0.02, sigma 20). `heatmaps_s` is the median of
--repeats calls. `heatmaps_peak_rss_growth_mib` is how far the process's peak resident
memory rose during those calls; `pairwise_outliers_gib` is what a pairwise N x N outlier test
would have allocated for the same points (a bool, a float distance and a two-float
difference per pair), for comparison.
"""

import os
import resource
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf
from absl import app, flags

from tf_segunravel.models import deeplab_largefov
from tf_segunravel.unravel import FixationSettings, SegUnravel, fixation_maps

flags.DEFINE_integer("images", 8, "Images in the batch.")
flags.DEFINE_integer("size", 513, "Square image side.")
flags.DEFINE_integer("k", 3, "Unravel K.")
flags.DEFINE_float("width", 0.25, "Network width (the point count hardly depends on it).")
flags.DEFINE_integer("repeats", 3, "Timed calls.")
FLAGS = flags.FLAGS


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(_):
    model = deeplab_largefov(num_classes=21, width=FLAGS.width)
    settings = FixationSettings(k=FLAGS.k)
    images = np.random.default_rng(0).uniform(0, 255, (FLAGS.images, FLAGS.size, FLAGS.size, 3))
    result = SegUnravel(model, settings)(images.astype(np.float32))
    draw = tf.function(
        lambda points, counts, seeds: fixation_maps(
            result._replace(points=points, counts=counts, seeds=seeds),
            FLAGS.size,
            FLAGS.size,
            settings,
        )
    )
    points = tf.constant(result.points)
    counts = tf.constant(result.counts)
    seeds = tf.constant(result.seeds)
    before = peak_rss_mib()
    draw(points, counts, seeds).numpy()  # trace
    times = []
    for _ in range(FLAGS.repeats):
        start = time.perf_counter()
        draw(points, counts, seeds).numpy()
        times.append(time.perf_counter() - start)
    growth = peak_rss_mib() - before
    n = len(result.points)
    print(f"cpu_cores: {os.cpu_count()}")
    print(f"images: {FLAGS.images}")
    print(f"size: {FLAGS.size}")
    print(f"k: {FLAGS.k}")
    print(f"points: {n}")
    print(f"classes_drawn: {int(np.count_nonzero(result.seeds))}")
    print(f"heatmaps_s: {statistics.median(times):.3f}")
    print(f"heatmaps_peak_rss_growth_mib: {growth:.0f}")
    print(f"peak_rss_mib: {peak_rss_mib():.0f}")
    print(f"pairwise_outliers_gib: {n * n * (1 + 4 + 8) / 2**30:.1f}")


if __name__ == "__main__":
    app.run(main)
