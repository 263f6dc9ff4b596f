"""`TrainConfig`: every training setting, defined once.

Each field is the setting's only definition: its default, its `--flag` help, its choices and
its check. `tools/train.py` generates its flags from it, the flagfiles in `flags/` set them,
`tf_segunravel.demo` reads the shapes flagfiles into it, and the run writes it to
`<model_dir>/config.json`. To add a setting, add a field here.
"""

import dataclasses
import os
import typing

from tf_segunravel import flag_settings, flagfiles
from tf_segunravel.errors import InputError
from tf_segunravel.flag_settings import (
    Rule,
    at_least_one,
    fraction,
    non_negative,
    positive,
    setting,
)

# The per-epoch history the training loop writes into a model dir (read by the demo's plots).
HISTORY_FILE = "history.csv"
# The shipped flagfiles: the checkout's flags/, or their copies in an installed package.
FLAGS_DIR = flagfiles.flags_dir()
INITS = ("scratch", "vgg16", "caffe", "model")
ARCHITECTURES = ("largefov", "segformer_b0")
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run depends on; written to `<model_dir>/config.json`.

    Fields with `network=True` fix the network's variables and can never change in a model
    dir. Fields with `resumable=True` may differ when a run resumes (they change how the run is
    watched, not what it computes); any other difference is refused unless
    `allow_config_change` is set.
    """

    model_dir: str = setting(help="Directory for checkpoints, logs and the final model.")
    # ------------------------------------------------------------------------------ data
    dataset: str = setting("segunravel_shapes", "TFDS dataset name, or folder:<dir>.")
    split: str = setting("train", "Training split (voc2012_segmentation: train_aug).")
    data_dir: str | None = setting(None, "TFDS data dir (default: TFDS's own).")
    num_classes: int | None = setting(
        None,
        "Classes (default: from the dataset's metadata).",
        check=at_least_one,
        requirement="must be >= 1",
        network=True,
    )
    crop_size: int = setting(
        321,
        "Side of the square training crops.",
        check=lambda v: v >= 8,
        requirement="must be >= 8",
    )
    batch_size: int = setting(
        10, "Global batch size.", check=at_least_one, requirement="must be >= 1"
    )
    scale_min: float = setting(
        0.5, "Smallest random rescaling.", check=positive, requirement="must be > 0"
    )
    scale_max: float = setting(
        1.5, "Largest random rescaling.", check=positive, requirement="must be > 0"
    )
    mirror: bool = setting(True, "Random left-right mirroring.")
    shuffle_buffer: int = setting(
        1000, "Examples in the shuffle buffer.", check=at_least_one, requirement="must be >= 1"
    )
    # ----------------------------------------------------------------------------- model
    architecture: str = setting(
        "largefov",
        "The network: largefov (DeepLab-LargeFOV) or segformer_b0 (keras-hub's SegFormer-B0 "
        "encoder and decoder, scores at stride 4, for --crop_size x --crop_size images; needs "
        "the keras-hub extra).",
        choices=ARCHITECTURES,
        network=True,
    )
    width: float = setting(
        1.0,
        "Channel width multiplier of the network.",
        check=positive,
        requirement="must be > 0",
        network=True,
    )
    dropout: float = setting(
        0.5,
        "Dropout rate of drop6 and drop7 (segformer_b0: of the classifier's input).",
        check=fraction,
        requirement="must be in [0, 1)",
        network=True,
    )
    init: str = setting("scratch", "Initialisation when no checkpoint exists.", choices=INITS)
    init_path: str | None = setting(
        None,
        "vgg16: weights file or 'imagenet'; caffe: .caffemodel or converted .weights.h5; "
        "model: a model dir, checkpoint or .keras file.",
    )
    # -------------------------------------------------------------------------- schedule
    steps: int = setting(
        6000, "Training steps (Caffe's max_iter).", check=at_least_one, requirement="must be >= 1"
    )
    checkpoint_every: int = setting(
        500,
        "Steps between checkpoints; divides --steps.",
        check=at_least_one,
        requirement="must be >= 1",
    )
    base_lr: float = setting(1e-3, "Base learning rate.", check=positive, requirement="must be > 0")
    lr_policy: str = setting("step", "Caffe learning-rate policy.", choices=("step", "poly"))
    step_size: int = setting(
        2000,
        "Steps between x gamma drops (step policy).",
        check=at_least_one,
        requirement="must be >= 1",
    )
    gamma: float = setting(
        0.1,
        "Drop factor (step policy).",
        check=lambda v: 0 < v <= 1,
        requirement="must be in (0, 1]",
    )
    power: float = setting(
        0.9, "Exponent (poly policy).", check=positive, requirement="must be > 0"
    )
    warmup_steps: int = setting(
        0,
        "Steps of linear learning-rate warm-up before the policy (0: none, as in Caffe).",
        check=non_negative,
        requirement="must be >= 0",
    )
    momentum: float = setting(0.9, "SGD momentum.", check=fraction, requirement="must be in [0, 1)")
    weight_decay: float = setting(
        5e-4,
        "L2 decay on kernels, added to the gradient.",
        check=non_negative,
        requirement="must be >= 0",
    )
    lr_multipliers: bool = setting(True, "DeepLab's lr_mult: 1/2 weights/biases, 10/20 fc8.")
    train_layers: int = setting(
        0,
        "Train only the last N weight layers (0: all).",
        check=non_negative,
        requirement="must be >= 0",
    )
    # ------------------------------------------------------------------ template loss
    template_weight: float = setting(
        0.0,
        "Weight of the template-similarity loss (0: off).",
        check=non_negative,
        requirement="must be >= 0",
    )
    similarity: str = setting("cosine", "Template similarity.", choices=("cosine", "correlation"))
    selective: bool = setting(False, "Template loss on misclassified pixels only.")
    template_reduction: str = setting(
        "mean", "Divide by valid pixels or not.", choices=("mean", "sum")
    )
    # --------------------------------------------------------------------- execution
    seed: int = setting(0, "Seed of initialisation, shuffling and augmentation.")
    deterministic: bool = setting(False, "Deterministic ops and input order (slower).")
    mixed_precision: bool = setting(False, "float16 compute with loss scaling.")
    xla: bool = setting(False, "Compile the train step with XLA.")
    strategy: str = setting("default", "tf.distribute strategy.", choices=STRATEGIES)
    verbose: int = setting(1, "Keras fit verbosity (1: progress bar).", resumable=True)
    allow_config_change: bool = setting(
        False,
        "Resume a model dir whose config.json differs from these settings (the change is "
        "recorded in config_changes.jsonl).",
        resumable=True,
    )

    RULES = (
        Rule(
            ("steps", "checkpoint_every"),
            lambda c: c.steps % c.checkpoint_every == 0,
            "steps must be a multiple of checkpoint_every",
        ),
        Rule(
            ("warmup_steps", "steps"),
            lambda c: c.warmup_steps < c.steps,
            "warmup_steps must be smaller than steps",
        ),
        Rule(
            ("scale_min", "scale_max"),
            lambda c: c.scale_min <= c.scale_max,
            "scale_min must not exceed scale_max",
        ),
        Rule(
            ("init", "init_path"),
            lambda c: c.init in ("scratch", "vgg16") or bool(c.init_path),
            "init_path is required with init=caffe or init=model",
        ),
    )

    def __post_init__(self):
        if not self.model_dir:
            raise ValueError("model_dir is required")
        flag_settings.validate(self)


def run_fields() -> list[str]:
    """The names of the fields that define what a run computes (all but the resumable)."""
    return [f.name for f in dataclasses.fields(TrainConfig) if not f.metadata.get("resumable")]


def flagfile_config(
    name: str, flags_dir: str = FLAGS_DIR, **overrides: typing.Any
) -> "TrainConfig":
    """The `TrainConfig` of flagfile `name` in `flags_dir`, then `overrides`."""
    from absl import flags

    path = os.path.join(flags_dir, name)
    if not os.path.isfile(path):
        raise InputError(f"{path}: flagfile not found")
    try:
        return flag_settings.from_flagfile(TrainConfig, path, **overrides)
    except (ValueError, flags.Error) as e:  # absl's flag errors and TrainConfig's checks
        raise InputError(f"{path}: {e}") from e
