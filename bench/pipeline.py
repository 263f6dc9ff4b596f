"""Training-pipeline throughput against bare decoding of the same files.

    python3 -m bench.pipeline [--dataset=segunravel_shapes --split=train --crop_size=97]

Prints `name: value` lines: medians over --repeats runs of --images images each, then the
ratio (pipeline / decoding) measured in the same run, last.
"""

import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf
from absl import app, flags

from tf_segunravel.data import load_split, train_pipeline

flags.DEFINE_string("dataset", "segunravel_shapes", "TFDS name or folder:<dir>.")
flags.DEFINE_string("split", "train", "Split to read.")
flags.DEFINE_string("data_dir", None, "TFDS data dir (default: TFDS's).")
flags.DEFINE_integer("crop_size", 97, "Training crop size.")
flags.DEFINE_integer("batch_size", 10, "Training batch size.")
flags.DEFINE_integer("images", 1000, "Images per timed run.")
flags.DEFINE_integer("repeats", 5, "Timed runs; the median is printed.")
FLAGS = flags.FLAGS


def images_per_second(dataset, images, per_element):
    start = time.perf_counter()
    for _ in dataset.take(images // per_element):
        pass
    return images / (time.perf_counter() - start)


def main(_):
    examples = load_split(FLAGS.dataset, FLAGS.split, data_dir=FLAGS.data_dir).repeat()
    decoded = examples.map(lambda ex: (ex["image"], ex["segmentation"])).prefetch(tf.data.AUTOTUNE)
    pipeline = train_pipeline(
        examples, crop_size=FLAGS.crop_size, batch_size=FLAGS.batch_size, shuffle_buffer=200
    )
    images_per_second(pipeline, 10 * FLAGS.batch_size, FLAGS.batch_size)  # warm-up: buffers
    decode, train = [], []
    for _ in range(FLAGS.repeats):
        decode.append(images_per_second(decoded, FLAGS.images, 1))
        train.append(images_per_second(pipeline, FLAGS.images, FLAGS.batch_size))
    decode_median, train_median = statistics.median(decode), statistics.median(train)
    print(f"cpu_cores: {os.cpu_count()}")
    print(f"crop_size: {FLAGS.crop_size}")
    print(f"decode_images_per_s: {decode_median:.1f}")
    print(f"train_pipeline_images_per_s: {train_median:.1f}")
    print(f"train_pipeline_over_decode: {train_median / decode_median:.3f}")


if __name__ == "__main__":
    app.run(main)
