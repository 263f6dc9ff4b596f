"""Many seeds: the fixation tool's work on a stride-1 encoder-decoder at 512 px.

    python3 -m bench.many_seeds [--side=512 --repeats=3 --k=1]

A stride-1 network seeds every pixel: 262,144 positions at 512 x 512, spread over its
predicted classes. This builds the small U-Net of `bench/zoo.py` with a sigmoid head (a
binary segmenter, random weights: the cost does not depend on what it learned) and runs
what `tools/fixations.py` runs per image, `FixationWriter.compute` (unravel, heat maps with
outlier removal, statistics; nothing written), on one image. Figures: the seeds and points,
the median seconds of the compiled forward pass and of `compute`, and the process's peak
resident memory; the ratio (compute / forward) comes last.
"""

import os
import resource
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags
from PIL import Image

from bench.timing import median_seconds
from bench.zoo import unet
from tf_segunravel.fixation_files import FixationWriter
from tf_segunravel.unravel.settings import FixationSettings

flags.DEFINE_integer("side", 512, "Square image side.")
flags.DEFINE_integer("k", 1, "Unravel K.")
FLAGS = flags.FLAGS  # --repeats comes with bench.zoo


def binary_unet(size):
    keras.utils.set_random_seed(0)
    base = unet(size, classes=1)
    return keras.Model(base.inputs, keras.layers.Activation("sigmoid")(base.outputs[0]))


def main(_):
    size = FLAGS.side
    model = binary_unet(size)
    image = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as work:
        path = os.path.join(work, "image.png")
        Image.fromarray(image).save(path)
        writer = FixationWriter(model, os.path.join(work, "out"), FixationSettings(k=FLAGS.k))
        forward = tf.function(lambda x: model(x, training=False))
        batch = tf.constant(image[None], tf.float32)
        forward_s = median_seconds(lambda: forward(batch).numpy(), FLAGS.repeats)
        result = writer.compute(path)
        compute_s = median_seconds(lambda: writer.compute(path), FLAGS.repeats)
    seeds = sum(entry["seeds"] for entry in result.statistics.values())
    print(f"size: {size}")
    print(f"k: {FLAGS.k}")
    print(f"seeds: {seeds}")
    print(f"points: {len(result.points)}")
    print(f"blank_maps: {int(sum(m.max() == 0 for m in result.maps))}")
    print(f"forward_s: {forward_s:.3f}")
    print(f"compute_s: {compute_s:.3f}")
    print(f"peak_rss_gib: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f}")
    print(f"compute_over_forward: {compute_s / forward_s:.1f}")


if __name__ == "__main__":
    app.run(main)
