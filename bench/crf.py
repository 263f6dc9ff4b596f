"""Dense CRF time per image next to the network's forward pass.

    python3 -m bench.crf [--size=513 --classes=21 --width=1.0 --repeats=5]

Full-size DeepLab-LargeFOV (random weights) on one --size x --size image: `forward_s` is a
compiled forward pass with the scores brought to image size (DeepLab's protocol, softmax
included), `crf_s` DeepLab's dense CRF with its default settings (10 mean-field iterations)
on that softmax. Medians of --repeats; the ratio comes last. Needs the crf extra.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf
from absl import app, flags

from bench.timing import median_seconds
from tf_segunravel import crf
from tf_segunravel.evaluation import full_resolution_scores
from tf_segunravel.models import deeplab_largefov

flags.DEFINE_integer("size", 513, "Square image side.")
flags.DEFINE_integer("classes", 21, "Classes.")
flags.DEFINE_float("width", 1.0, "Network width.")
flags.DEFINE_integer("repeats", 5, "Timed calls.")
FLAGS = flags.FLAGS


def main(_):
    model = deeplab_largefov(num_classes=FLAGS.classes, width=FLAGS.width)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (FLAGS.size, FLAGS.size, 3), dtype=np.uint8)
    probabilities_of = tf.function(
        lambda x: tf.nn.softmax(full_resolution_scores(model, x), axis=-1)
    )
    batch = tf.constant(image[None], tf.float32)
    forward_s = median_seconds(lambda: probabilities_of(batch).numpy(), FLAGS.repeats)
    probabilities = probabilities_of(batch).numpy()[0]
    crf_s = median_seconds(lambda: crf.dense_crf(image, probabilities), FLAGS.repeats)
    print(f"cpu_cores: {os.cpu_count()}")
    print(f"size: {FLAGS.size}")
    print(f"classes: {FLAGS.classes}")
    print(f"forward_s: {forward_s:.3f}")
    print(f"crf_s: {crf_s:.3f}")
    print(f"crf_over_forward: {crf_s / forward_s:.3f}")


if __name__ == "__main__":
    app.run(main)
