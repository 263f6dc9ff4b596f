"""Where trained networks live, and how every tool loads one.

A training model dir holds `config.json` (what network it trains), `checkpoints/` (model,
optimizer, step and dropout seeds, written by `tf.train.CheckpointManager`), `logs/`
(TensorBoard) and, once training finishes, `model.keras`.
"""

import json
import os

import keras
import tensorflow as tf

from tf_segunravel.errors import InputError
from tf_segunravel.models import FEATURE_LAYER, deeplab_largefov, segformer
from tf_segunravel.models.segformer import segformer_b0

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
FINAL_MODEL = "model.keras"


def make_checkpoint(
    network: keras.Model,
    optimizer: keras.optimizers.Optimizer | None = None,
    step: tf.Variable | None = None,
) -> tf.train.Checkpoint:
    """A `tf.train.Checkpoint` of the network, optimizer, step and the dropout seed states.

    `step` counts the batches trained; it differs from `optimizer.iterations` under mixed
    precision, whose loss scaling skips the update of batches with non-finite gradients.

    Keras 3 keeps dropout's random state in seed-generator variables that TF checkpoints do
    not track on their own; saving them makes a resumed run draw the same dropout masks as an
    uninterrupted one.
    """
    seeds = [v for v in network.variables if "seed_generator_state" in v.path]
    items = {"model": network, "dropout_seeds": seeds}
    if optimizer is not None:
        items["optimizer"] = optimizer
    if step is not None:
        items["step"] = step
    return tf.train.Checkpoint(**items)


def read_config(model_dir: str) -> dict:
    path = os.path.join(model_dir, CONFIG_FILE)
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError as e:
        raise InputError(f"{model_dir}: not a training model dir (no {CONFIG_FILE})") from e
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON ({e})") from e


def network_from_config(config: dict) -> keras.Model:
    """The untrained network a model dir's recorded config (`read_config`) describes (a
    config from before `architecture` existed is LargeFOV's)."""
    if config.get("architecture", "largefov") == "segformer_b0":
        return segformer_b0(
            num_classes=config["num_classes"],
            width=config["width"],
            dropout=config["dropout"],
            image_size=config["crop_size"],
        )
    return deeplab_largefov(
        num_classes=config["num_classes"], width=config["width"], dropout=config["dropout"]
    )


def feature_layer(config: dict) -> str:
    """The layer whose output the template loss compares, in the config's network."""
    if config.get("architecture", "largefov") == "segformer_b0":
        return segformer.FEATURE_LAYER
    return FEATURE_LAYER


def _restore(network, prefix):
    try:
        make_checkpoint(network).read(prefix).expect_partial()
    except (tf.errors.OpError, ValueError, AssertionError) as e:
        raise InputError(f"{prefix}: cannot restore the network ({e})") from e
    return network


def resolve_network(path: str) -> tuple[str, ...]:
    """What `load_network(path)` reads: ("keras", the .keras file) or ("checkpoint", the
    prefix, its model dir). InputError, naming `path`, when it is none of them."""
    path = os.fspath(path)
    if path.endswith(".keras"):
        if not os.path.isfile(path):
            raise InputError(f"{path}: no such file")
        return "keras", path
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, FINAL_MODEL)):
            return "keras", os.path.join(path, FINAL_MODEL)
        prefix = tf.train.latest_checkpoint(os.path.join(path, CHECKPOINT_DIR))
        if prefix is None:
            raise InputError(f"{path}: model dir has neither {FINAL_MODEL} nor a checkpoint")
        return "checkpoint", prefix, path
    if tf.io.gfile.exists(path + ".index"):
        return "checkpoint", path, os.path.dirname(os.path.dirname(os.path.abspath(path)))
    raise InputError(f"{path}: not a .keras file, a model dir or a checkpoint prefix")


def network_files(path: str) -> list[str]:
    """The files `load_network(path)` reads: the .keras file, or the checkpoint's index and
    data files."""
    kind, target, *_ = resolve_network(path)
    return [target] if kind == "keras" else sorted(tf.io.gfile.glob(target + ".*"))


def load_network(path: str) -> keras.Model:
    """The segmentation network stored at `path`.

    `path` may be a `.keras` file, a training model dir (its `model.keras`, else its latest
    checkpoint), or a checkpoint prefix inside a model dir (`.../checkpoints/ckpt-300`).
    """
    kind, target, *model_dir = resolve_network(path)
    if kind == "keras":
        try:
            return keras.models.load_model(target)
        except (ValueError, OSError, TypeError) as e:
            raise InputError(f"{target}: cannot load the .keras model ({e})") from e
    return _restore(network_from_config(read_config(model_dir[0])), target)
