"""Where the main job's train step spends its time.

    python3 -m bench.profile_train_step [--crop_size=97 --batch_size=10 --repeats=5 --op_times]

Builds the main job's baseline (flags/shapes_demo.cfg: width 1/16, cross-entropy, Caffe's
SGD) the way `tools/train.py` does (`training.loop.prepare`: the same trainer, optimizer and
keyed input pipeline on segunravel_shapes) and times, in one process, medians of --repeats
runs of --steps steps each, in milliseconds per step:
  pipeline_ms       the input pipeline alone (batches drawn, nothing trained)
  forward_ms        the network's forward pass on one batch, compiled
  gradients_ms      forward and backward (the loss's gradients), compiled
  step_ms           the whole train step (gradients, Caffe's decay and multipliers, the
                    optimizer, the metrics), compiled as `fit` compiles it
  fit_ms            `fit` over the pipeline, as training runs it (Keras' loop running
                    `steps_per_call` steps a call, a callback that reads the loss after each
                    call as the divergence guard does, the pipeline)
  fit_one_step_a_call_ms   the same `fit`, one step a call (training before 25 steps a call)
`--xla` compiles the step functions with XLA. With `--op_times`, TensorFlow's profiler
records --steps compiled train steps and prints each op type's own time per step
(`op_<type>_ms`, both cores added; `op_idle_ms` is the executor's idle time) and the number
of ops per step (`ops_per_step`).
"""

import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import tensorflow as tf
from absl import app, flags, logging

from bench.timing import op_times
from tf_segunravel.training import loop
from tf_segunravel.training.config import flagfile_config
from tf_segunravel.training.optim import caffe_gradients

flags.DEFINE_string("flagfile_name", "shapes_demo.cfg", "A flagfile of flags/: the recipe.")
flags.DEFINE_string("data_dir", None, "TFDS data dir with segunravel_shapes (default: TFDS's).")
flags.DEFINE_integer("crop_size", 97, "Training crop size.")
flags.DEFINE_integer("batch_size", 10, "Training batch size.")
flags.DEFINE_integer("steps", 50, "Steps per timed run.")
flags.DEFINE_integer("repeats", 5, "Timed runs; medians are printed.")
flags.DEFINE_bool(
    "xla",
    False,
    "Compile the train step with XLA (the training flag --xla); turns the recipe's "
    "--deterministic off, which XLA refuses for max-pool gradients.",
)
flags.DEFINE_bool("op_times", False, "Profile the compiled train step per op type.")
flags.DEFINE_integer("top", 12, "Op types printed, slowest first.")
FLAGS = flags.FLAGS


def median_ms(run, steps, repeats):
    """Median over `repeats` of `run()`'s wall time (it runs `steps` steps) per step, after
    one untimed run."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) / steps * 1e3)
    return statistics.median(times)


class _EpochTimes(keras.callbacks.Callback):
    """Reads the loss after every call of the train function, as the training run's
    divergence guard does, and keeps each epoch's wall time."""

    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        float(logs["loss"])

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.start)


def main(_):
    logging.set_verbosity(logging.ERROR)
    with tempfile.TemporaryDirectory() as model_dir:
        config = flagfile_config(
            FLAGS.flagfile_name,
            model_dir=os.path.join(model_dir, "run"),
            data_dir=FLAGS.data_dir,
            crop_size=FLAGS.crop_size,
            batch_size=FLAGS.batch_size,
            xla=FLAGS.xla,
            deterministic=not FLAGS.xla,
            verbose=0,
        )
        run = loop.prepare(config)
        trainer, network = run.trainer, run.network
        batches = iter(run.batches)
        batch = next(batches)
        images, labels = batch[0], batch[1]
        steps = FLAGS.steps

        def pipeline():
            for _ in range(steps):
                next(batches)

        forward = tf.function(lambda x: network(x, training=True), jit_compile=FLAGS.xla)

        @tf.function(jit_compile=FLAGS.xla)
        def gradients(x, y):
            variables = network.trainable_variables
            with tf.GradientTape() as tape:
                total, *_ = trainer._compute_losses(x, y, True)
            return caffe_gradients(tape.gradient(total, variables), variables)

        step = tf.function(trainer.train_step, jit_compile=FLAGS.xla)

        def repeat(fn, *args):
            def run_steps():
                for _ in range(steps):
                    out = fn(*args)
                tf.nest.flatten(out)[0].numpy()  # wait for the last step

            return run_steps

        # Training groups the steps of a checkpoint interval (`loop.steps_per_execution`);
        # an epoch here is --steps steps, so the group divides that instead.
        steps_per_call = loop.steps_per_execution(steps)

        def fit_ms(steps_per_execution):
            """One `fit` of --repeats + 1 epochs of --steps steps, as training calls it once
            for the whole run: the median epoch after the first, per step."""
            trainer.steps_per_execution = steps_per_execution
            trainer.train_function = None  # rebuilt by `fit` for the new group size
            epochs = _EpochTimes()
            trainer.fit(
                run.batches,
                epochs=FLAGS.repeats + 1,
                steps_per_epoch=steps,
                callbacks=[epochs],
                verbose=0,
                shuffle=False,
            )
            return statistics.median(epochs.seconds[1:]) / steps * 1e3

        results = {
            "pipeline_ms": median_ms(pipeline, steps, FLAGS.repeats),
            "forward_ms": median_ms(repeat(forward, images), steps, FLAGS.repeats),
            "gradients_ms": median_ms(repeat(gradients, images, labels), steps, FLAGS.repeats),
            "step_ms": median_ms(repeat(step, batch), steps, FLAGS.repeats),
            "fit_ms": fit_ms(steps_per_call),
            "fit_one_step_a_call_ms": fit_ms(1),
        }
        print(f"cpu_cores: {os.cpu_count()}")
        print(f"recipe: {FLAGS.flagfile_name}")
        print(f"crop_size: {FLAGS.crop_size}")
        print(f"batch_size: {FLAGS.batch_size}")
        print(f"xla: {FLAGS.xla}")
        print(f"steps_per_call: {steps_per_call}")
        for name, value in results.items():
            print(f"{name}: {value:.2f}")
        if FLAGS.op_times:
            with tempfile.TemporaryDirectory() as logdir:
                timed = op_times(lambda: step(batch)["loss"].numpy(), steps, logdir)
            ops = sum(count for op_type, _, count in timed if op_type != "IDLE")
            print(f"ops_per_step: {ops / steps:.0f}")
            for op_type, seconds, _ in timed[: FLAGS.top]:
                print(f"op_{op_type.lower()}_ms: {seconds / steps * 1e3:.2f}")
        print(f"fit_over_step: {results['fit_ms'] / results['step_ms']:.3f}")
        print(f"step_over_gradients: {results['step_ms'] / results['gradients_ms']:.3f}")
        grouping = results["fit_ms"] / results["fit_one_step_a_call_ms"]
        print(f"fit_grouped_over_one_step: {grouping:.3f}")


if __name__ == "__main__":
    app.run(main)
