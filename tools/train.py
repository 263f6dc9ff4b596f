"""Trains DeepLab-LargeFOV, optionally with the template-similarity loss.

    python3 tools/train.py --flagfile=flags/shapes_baseline.cfg --model_dir=runs/shapes_base

Every hyper-parameter is a flag (`--helpfull`); the flagfiles in flags/ hold the published
settings. Everything goes into --model_dir: the resolved flags (flags.txt), config.json,
checkpoints, TensorBoard logs and the final model.keras. Re-running the same command after a
kill resumes from the last checkpoint.
"""

import dataclasses
import os

from absl import flags

from tf_segunravel import cli
from tf_segunravel.errors import InputError
from tf_segunravel.training.loop import INITS, STRATEGIES, TrainConfig

F = flags
F.DEFINE_string("model_dir", None, "Directory for checkpoints, logs and the final model.")
F.DEFINE_string("dataset", "segunravel_shapes", "TFDS dataset name, or folder:<dir>.")
F.DEFINE_string("split", "train", "Training split (voc2012_segmentation: train_aug).")
F.DEFINE_string("data_dir", None, "TFDS data dir (default: TFDS's own).")
F.DEFINE_integer("num_classes", None, "Classes (default: from the dataset's metadata).")
F.DEFINE_float("width", 1.0, "Channel width multiplier of the network.")
F.DEFINE_float("dropout", 0.5, "Dropout rate of drop6 and drop7.")
F.DEFINE_integer("crop_size", 321, "Side of the square training crops.")
F.DEFINE_integer("batch_size", 10, "Global batch size.")
F.DEFINE_float("scale_min", 0.5, "Smallest random rescaling.")
F.DEFINE_float("scale_max", 1.5, "Largest random rescaling.")
F.DEFINE_boolean("mirror", True, "Random left-right mirroring.")
F.DEFINE_integer("shuffle_buffer", 1000, "Examples in the shuffle buffer.")
F.DEFINE_integer("steps", 6000, "Training steps (Caffe's max_iter).")
F.DEFINE_integer("checkpoint_every", 500, "Steps between checkpoints; divides --steps.")
F.DEFINE_float("base_lr", 1e-3, "Base learning rate.")
F.DEFINE_enum("lr_policy", "step", ["step", "poly"], "Caffe learning-rate policy.")
F.DEFINE_integer("step_size", 2000, "Steps between x gamma drops (step policy).")
F.DEFINE_float("gamma", 0.1, "Drop factor (step policy).")
F.DEFINE_float("power", 0.9, "Exponent (poly policy).")
F.DEFINE_float("momentum", 0.9, "SGD momentum.")
F.DEFINE_float("weight_decay", 5e-4, "L2 decay on kernels, added to the gradient.")
F.DEFINE_boolean("lr_multipliers", True, "DeepLab's lr_mult: 1/2 weights/biases, 10/20 fc8.")
F.DEFINE_integer("train_layers", 0, "Train only the last N weight layers (0: all).")
F.DEFINE_float("template_weight", 0.0, "Weight of the template-similarity loss (0: off).")
F.DEFINE_enum("similarity", "cosine", ["cosine", "correlation"], "Template similarity.")
F.DEFINE_boolean("selective", False, "Template loss on misclassified pixels only.")
F.DEFINE_enum("template_reduction", "mean", ["mean", "sum"], "Divide by valid pixels or not.")
F.DEFINE_enum("init", "scratch", list(INITS), "Initialisation when no checkpoint exists.")
F.DEFINE_string(
    "init_path",
    None,
    "vgg16: weights file or 'imagenet'; caffe: .caffemodel or converted .weights.h5; "
    "model: a model dir, checkpoint or .keras file.",
)
F.DEFINE_integer("seed", 0, "Seed of initialisation, shuffling and augmentation.")
F.DEFINE_boolean("deterministic", False, "Deterministic ops and input order (slower).")
F.DEFINE_boolean("mixed_precision", False, "float16 compute with loss scaling.")
F.DEFINE_boolean("xla", False, "Compile the train step with XLA.")
F.DEFINE_enum("strategy", "default", list(STRATEGIES), "tf.distribute strategy.")
F.DEFINE_integer("verbose", 1, "Keras fit verbosity (1: progress bar).")
F.mark_flag_as_required("model_dir")

for name, test, message in [
    ("width", lambda v: v > 0, "must be > 0"),
    ("dropout", lambda v: 0 <= v < 1, "must be in [0, 1)"),
    ("crop_size", lambda v: v >= 8, "must be >= 8"),
    ("batch_size", lambda v: v >= 1, "must be >= 1"),
    ("scale_min", lambda v: v > 0, "must be > 0"),
    ("steps", lambda v: v >= 1, "must be >= 1"),
    ("checkpoint_every", lambda v: v >= 1, "must be >= 1"),
    ("base_lr", lambda v: v > 0, "must be > 0"),
    ("step_size", lambda v: v >= 1, "must be >= 1"),
    ("gamma", lambda v: 0 < v <= 1, "must be in (0, 1]"),
    ("momentum", lambda v: 0 <= v < 1, "must be in [0, 1)"),
    ("weight_decay", lambda v: v >= 0, "must be >= 0"),
    ("train_layers", lambda v: v >= 0, "must be >= 0"),
    ("template_weight", lambda v: v >= 0, "must be >= 0"),
    ("num_classes", lambda v: v is None or v >= 1, "must be >= 1"),
]:
    F.register_validator(name, test, f"--{name} {message}")
F.register_multi_flags_validator(
    ["steps", "checkpoint_every"],
    lambda f: f["steps"] % f["checkpoint_every"] == 0,
    "--steps must be a multiple of --checkpoint_every",
)
F.register_multi_flags_validator(
    ["scale_min", "scale_max"],
    lambda f: f["scale_min"] <= f["scale_max"],
    "--scale_min must not exceed --scale_max",
)
F.register_multi_flags_validator(
    ["init", "init_path"],
    lambda f: f["init"] in ("scratch", "vgg16") or bool(f["init_path"]),
    "--init_path is required with --init=caffe or --init=model",
)
FLAGS = F.FLAGS


def dataset_num_classes(dataset, data_dir):
    """The class count from a TFDS dataset's metadata (class_names)."""
    from tf_segunravel.data.pipeline import dataset_metadata

    names = dataset_metadata(dataset, data_dir).get("class_names")
    if not names:
        raise InputError(f"--dataset={dataset}: no class_names in its metadata; set --num_classes")
    return len(names)


def main(argv):
    del argv  # cli.run rejects positional arguments
    from tf_segunravel.training.loop import train

    num_classes = FLAGS.num_classes
    if num_classes is None:
        if FLAGS.dataset.startswith("folder:"):
            raise InputError("--num_classes is required with a folder: dataset")
        num_classes = dataset_num_classes(FLAGS.dataset, FLAGS.data_dir)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {name: FLAGS[name].value for name in fields if name in FLAGS}
    config = TrainConfig(**{**values, "num_classes": num_classes})
    os.makedirs(config.model_dir, exist_ok=True)
    FLAGS.append_flags_into_file(os.path.join(config.model_dir, "flags.txt"))
    logs = train(config)
    for key, value in logs.items():
        print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")


if __name__ == "__main__":
    cli.run(main)
