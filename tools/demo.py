"""The main job, end to end on data made on the spot (no downloads).

    python3 tools/demo.py --output_dir=runs/demo

Prepares the embedded `segunravel_shapes` dataset (generated, about 15 s), builds a
reduced-width DeepLab-LargeFOV, segments a validation image, saves the model as `.keras`,
reloads it and checks the reloaded model gives the same scores.
"""

import json
import os

from absl import flags

from tf_segunravel import cli
from tf_segunravel.errors import InputError

flags.DEFINE_string("output_dir", "runs/demo", "Directory that receives every artefact.")
flags.DEFINE_float("width", 0.125, "Channel width multiplier of the model.")
flags.DEFINE_string("data_dir", None, "TFDS data dir (default: TFDS's own).")
flags.register_validator("width", lambda w: w > 0, "--width must be > 0")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise InputError(f"unexpected arguments: {' '.join(argv[1:])}")
    import keras
    import numpy as np

    from tf_segunravel.data import load_split
    from tf_segunravel.models import deeplab_largefov

    os.makedirs(FLAGS.output_dir, exist_ok=True)
    model = deeplab_largefov(num_classes=21, width=FLAGS.width)
    example = next(iter(load_split("segunravel_shapes", "val", data_dir=FLAGS.data_dir)))
    image = example["image"].numpy()[None].astype("float32")
    scores = model(image, training=False).numpy()
    path = os.path.join(FLAGS.output_dir, "largefov.keras")
    model.save(path)
    reloaded = keras.models.load_model(path)
    max_diff = float(np.abs(reloaded(image, training=False).numpy() - scores).max())
    summary = {
        "parameters": model.count_params(),
        "image": example["filename"].numpy().decode(),
        "image_shape": list(image.shape[1:]),
        "score_shape": list(scores.shape[1:]),
        "reload_max_abs_diff": max_diff,
    }
    with open(os.path.join(FLAGS.output_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    for key, value in summary.items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    cli.run(main)
