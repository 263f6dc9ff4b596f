"""Full-size train-step time with and without the template-similarity loss.

    python3 -m bench.train_step [--batch_size=2 --crop_size=321 --width=1.0 --repeats=5]

Both variants train the same network on the same random batch in one process; each figure is
the median of --repeats timed steps after a warm-up step. The ratio (template / plain) is
printed last.
"""

import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags

from tf_segunravel.models import deeplab_largefov
from tf_segunravel.training import SegmentationTrainer

flags.DEFINE_integer("batch_size", 2, "Batch size (the paper trains with 20-30 on a GPU).")
flags.DEFINE_integer("crop_size", 321, "Crop side.")
flags.DEFINE_float("width", 1.0, "Width multiplier (1.0: the published network).")
flags.DEFINE_integer("repeats", 5, "Timed steps per variant.")
flags.DEFINE_boolean("xla", False, "Compile the train step with XLA.")
FLAGS = flags.FLAGS


def step_seconds(trainer, images, labels):
    step = tf.function(trainer.train_step, jit_compile=FLAGS.xla)
    step((images, labels))  # trace, compile, build optimizer slots
    times = []
    for _ in range(FLAGS.repeats):
        start = time.perf_counter()
        logs = step((images, labels))
        float(logs["loss"])  # wait for the step to finish
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(_):
    rng = np.random.default_rng(0)
    shape = (FLAGS.batch_size, FLAGS.crop_size, FLAGS.crop_size)
    images = tf.constant(rng.uniform(0, 255, (*shape, 3)).astype(np.float32))
    labels = tf.constant(rng.integers(0, 21, shape).astype(np.int32))
    results = {}
    for name, weight in (("plain", 0.0), ("template", 0.1)):
        keras.utils.set_random_seed(0)
        network = deeplab_largefov(num_classes=21, width=FLAGS.width)
        trainer = SegmentationTrainer(network, 21, template_weight=weight)
        trainer.compile(optimizer=keras.optimizers.SGD(1e-3, momentum=0.9))
        results[name] = step_seconds(trainer, images, labels)
    print(f"cpu_cores: {os.cpu_count()}")
    print(f"gpus: {len(tf.config.list_physical_devices('GPU'))}")
    print(f"batch_size: {FLAGS.batch_size}")
    print(f"crop_size: {FLAGS.crop_size}")
    print(f"step_seconds_plain: {results['plain']:.3f}")
    print(f"step_seconds_template: {results['template']:.3f}")
    print(f"template_over_plain: {results['template'] / results['plain']:.3f}")


if __name__ == "__main__":
    app.run(main)
