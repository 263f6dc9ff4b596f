"""Kill training at random moments, restart it each time, compare with an uninterrupted run.

    python3 -m bench.kill [--kills=12 --steps=60 --checkpoint_every=4 --seed=0]

Trains the demo's recipe (`flags/shapes_demo.cfg`, `--deterministic`) at a tiny size on
segunravel_shapes, once straight through and once under repeated SIGKILLs: each kill comes
after a random delay (uniform between 1 s and the straight run's duration, after the process
starts), or, for every third kill, the moment a checkpoint write is seen in progress (a
`*_temp*` entry in the checkpoint dir). After each kill the same command is started again.
Prints the kills, how many landed during a checkpoint write, the restarts that resumed from a
checkpoint, and the largest difference between the final weights of the two runs (0 means
bit for bit).
"""

import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags

flags.DEFINE_integer("kills", 12, "SIGKILLs to deliver before letting the run finish.")
flags.DEFINE_integer("steps", 60, "Training steps.")
flags.DEFINE_integer("checkpoint_every", 4, "Steps between checkpoints.")
flags.DEFINE_integer("seed", 0, "Seed of the kill times.")
flags.DEFINE_string("data_dir", None, "TFDS data dir with segunravel_shapes (default: a new one).")
FLAGS = flags.FLAGS

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def command(model_dir, data_dir):
    return [
        sys.executable,
        os.path.join(REPO_ROOT, "tools", "train.py"),
        "--flagfile=flags/shapes_demo.cfg",
        f"--model_dir={model_dir}",
        f"--data_dir={data_dir}",
        f"--steps={FLAGS.steps}",
        f"--checkpoint_every={FLAGS.checkpoint_every}",
        "--crop_size=33",
        "--batch_size=4",
        "--width=0.0625",
        "--verbose=0",
    ]


def writing_checkpoint(model_dir):
    directory = os.path.join(model_dir, "checkpoints")
    return os.path.isdir(directory) and any("_temp" in n for n in os.listdir(directory))


def final_weights(model_dir):
    import keras

    import tf_segunravel.models  # noqa: F401  (registers the custom layers)

    path = os.path.join(model_dir, "model.keras")
    return keras.saving.load_model(path, compile=False).get_weights()


def main(_):
    import numpy as np
    import tensorflow as tf

    rng = random.Random(FLAGS.seed)
    work = tempfile.mkdtemp(prefix="bench-kill-")
    try:
        data_dir = FLAGS.data_dir
        if data_dir is None:
            import tensorflow_datasets as tfds

            import tf_segunravel.data  # noqa: F401  (registers the builders)

            data_dir = os.path.join(work, "tfds")
            tfds.builder("segunravel_shapes", data_dir=data_dir).download_and_prepare()
        straight, killed = os.path.join(work, "straight"), os.path.join(work, "killed")
        started = time.perf_counter()
        subprocess.run(command(straight, data_dir), cwd=REPO_ROOT, check=True)
        straight_seconds = time.perf_counter() - started

        kills = during_write = resumed = 0
        started = time.perf_counter()
        while True:
            had_checkpoint = tf.train.latest_checkpoint(os.path.join(killed, "checkpoints"))
            child = subprocess.Popen(
                command(killed, data_dir),
                cwd=REPO_ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            resumed += bool(had_checkpoint)
            if kills >= FLAGS.kills:
                if child.wait(timeout=600) != 0:
                    raise SystemExit("the last restart failed")
                break
            on_write = kills % 3 == 2
            deadline = time.monotonic() + rng.uniform(1.0, straight_seconds)
            while child.poll() is None:
                if on_write and writing_checkpoint(killed):
                    break
                if not on_write and time.monotonic() >= deadline:
                    break
                time.sleep(0.002)
            if child.poll() is not None:  # finished before the kill came: start again
                shutil.rmtree(killed)
                continue
            during_write += writing_checkpoint(killed)
            child.send_signal(signal.SIGKILL)
            child.wait()
            kills += 1
        killed_seconds = time.perf_counter() - started
        difference = max(
            float(np.abs(a - b).max())
            for a, b in zip(final_weights(straight), final_weights(killed), strict=True)
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"steps: {FLAGS.steps}")
    print(f"checkpoint_every: {FLAGS.checkpoint_every}")
    print(f"kills: {kills}")
    print(f"kills_during_checkpoint_write: {during_write}")
    print(f"restarts_resumed_from_a_checkpoint: {resumed}")
    print(f"straight_seconds: {straight_seconds:.1f}")
    print(f"killed_seconds: {killed_seconds:.1f}")
    print(f"max_weight_difference: {difference:.3g}")


if __name__ == "__main__":
    app.run(main)
