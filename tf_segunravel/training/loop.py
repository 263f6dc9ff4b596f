"""The training run behind `tools/train.py`, top to bottom in stages.

Resume order: an existing checkpoint in the model dir, then the requested initialisation
(VGG-16, a caffemodel, another trained model), then scratch. Checkpoints are written at the
end of every checkpoint interval, so a run killed at any moment loses at most one interval and
the same command continues it to the same final step.
"""

import dataclasses
import math
import os

import keras
import tensorflow as tf

from tf_segunravel.atomic import save_atomically, write_json
from tf_segunravel.data import labels as data_labels
from tf_segunravel.data import load_split, train_pipeline
from tf_segunravel.errors import InputError
from tf_segunravel.training import checkpoints
from tf_segunravel.training.optim import freeze_all_but_last, learning_rate_schedule
from tf_segunravel.training.trainer import SegmentationTrainer

INITS = ("scratch", "vgg16", "caffe", "model")
HISTORY_FILE = "history.csv"
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


@dataclasses.dataclass
class TrainConfig:
    """Everything a run depends on; written to `<model_dir>/config.json`."""

    model_dir: str
    dataset: str = "segunravel_shapes"
    split: str = "train"
    data_dir: str | None = None
    num_classes: int = 21
    width: float = 1.0
    dropout: float = 0.5
    crop_size: int = 321
    batch_size: int = 10
    scale_min: float = 0.5
    scale_max: float = 1.5
    mirror: bool = True
    shuffle_buffer: int = 1000
    steps: int = 6000
    checkpoint_every: int = 500
    base_lr: float = 1e-3
    lr_policy: str = "step"
    step_size: int = 2000
    gamma: float = 0.1
    power: float = 0.9
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_multipliers: bool = True
    train_layers: int = 0
    template_weight: float = 0.0
    similarity: str = "cosine"
    selective: bool = False
    template_reduction: str = "mean"
    init: str = "scratch"
    init_path: str | None = None
    seed: int = 0
    deterministic: bool = False
    mixed_precision: bool = False
    xla: bool = False
    strategy: str = "default"
    verbose: int = 1


class TrainingDiverged(InputError):
    """The loss became NaN or Inf; the last good checkpoint is left in place."""


def make_strategy(name):
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":  # reads the cluster from TF_CONFIG
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f"strategy must be one of {STRATEGIES}, got {name!r}")


def initialise(network, init, init_path):
    """Applies the requested initialisation to a freshly built network."""
    from tf_segunravel.models import load_caffemodel_weights, load_vgg16_weights

    if init == "scratch":
        return
    if init == "vgg16":
        load_vgg16_weights(network, init_path or "imagenet")
    elif init == "caffe":
        if init_path and init_path.endswith(".weights.h5"):
            network.load_weights(init_path)  # already converted by tools/convert_caffe.py
        else:
            load_caffemodel_weights(network, init_path)
    elif init == "model":
        source = checkpoints.load_network(init_path)
        for layer in network.layers:
            if layer.weights:
                try:
                    layer.set_weights(source.get_layer(layer.name).get_weights())
                except ValueError as e:
                    raise InputError(f"{init_path}: layer {layer.name}: {e}") from e
    else:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")


class _CheckpointAndGuard(keras.callbacks.Callback):
    """Stops on a NaN/Inf loss or weight before anything is saved; checkpoints each good
    interval. Weights are checked too: a blown-up network can die (all-zero ReLUs) with
    Inf weights and a perfectly finite loss."""

    def __init__(self, manager, step, interval):
        super().__init__()
        self.manager = manager
        self.step = step
        self.interval = interval
        self.diverged_at = None

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.diverged_at = int(self.step.numpy()) + batch + 1
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if self.diverged_at is None and not all(
            bool(tf.reduce_all(tf.math.is_finite(v.value))) for v in self.model.network.weights
        ):
            self.diverged_at = (epoch + 1) * self.interval
            self.model.stop_training = True
        if self.diverged_at is None:
            self.step.assign((epoch + 1) * self.interval)
            self.manager.save(checkpoint_number=(epoch + 1) * self.interval)


class _ImageSummaries(keras.callbacks.Callback):
    """Writes image / ground truth / prediction panels to TensorBoard each interval."""

    def __init__(self, log_dir, images, labels, interval):
        super().__init__()
        self.writer = tf.summary.create_file_writer(os.path.join(log_dir, "images"))
        self.images, self.labels, self.interval = images, labels, interval
        self.colormap = tf.constant(data_labels.voc_colormap(), tf.uint8)

    def on_epoch_end(self, epoch, logs=None):
        scores = self.model.network(self.images, training=False)
        size = tf.shape(self.images)[1:3]
        predicted = tf.argmax(tf.image.resize(scores, size), -1, output_type=tf.int32)
        panels = tf.concat(
            [
                tf.cast(self.images, tf.uint8),
                tf.gather(self.colormap, tf.cast(self.labels, tf.int32)),
                tf.gather(self.colormap, predicted),
            ],
            axis=2,
        )
        with self.writer.as_default():
            tf.summary.image("image_truth_prediction", panels, (epoch + 1) * self.interval, 4)


def check_config(config):
    """Raises ValueError naming the field for values that cannot run."""
    problems = []
    if config.steps % config.checkpoint_every:
        problems.append("steps must be a multiple of checkpoint_every")
    if config.init != "scratch" and config.init != "vgg16" and not config.init_path:
        problems.append(f"init_path is required for init={config.init}")
    if config.crop_size < 8:
        problems.append("crop_size must be at least 8")
    if problems:
        raise ValueError("; ".join(problems))


def train(config):
    """Runs (or resumes) a training run; returns the final logs dict."""
    check_config(config)
    os.makedirs(config.model_dir, exist_ok=True)
    config_path = os.path.join(config.model_dir, checkpoints.CONFIG_FILE)
    if os.path.exists(config_path):
        previous = checkpoints.read_config(config.model_dir)
        for key in ("num_classes", "width", "dropout"):
            if previous.get(key) != getattr(config, key):
                raise InputError(
                    f"{config_path}: the model dir trains {key}={previous.get(key)}, "
                    f"not {getattr(config, key)}; use another --model_dir"
                )
    write_json(config_path, dataclasses.asdict(config))
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    if config.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    strategy = make_strategy(config.strategy)

    # ------------------------------------------------------------- model and optimizer
    with strategy.scope():
        network = checkpoints.network_from_config(dataclasses.asdict(config))
        schedule = learning_rate_schedule(
            config.lr_policy,
            config.base_lr,
            config.steps,
            config.step_size,
            config.gamma,
            config.power,
        )
        optimizer = keras.optimizers.SGD(schedule, momentum=config.momentum)
        if config.mixed_precision:
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        trainer = SegmentationTrainer(
            network,
            config.num_classes,
            template_weight=config.template_weight,
            similarity=config.similarity,
            selective=config.selective,
            template_reduction=config.template_reduction,
            weight_decay=config.weight_decay,
            use_lr_multipliers=config.lr_multipliers,
        )
        freeze_all_but_last(network, config.train_layers)
        trainer.compile(optimizer=optimizer, jit_compile=config.xla)
        optimizer.build(network.trainable_variables)

    # ------------------------------------------------------------------ checkpoint load
    step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    checkpoint = checkpoints.make_checkpoint(network, optimizer, step)
    manager = tf.train.CheckpointManager(
        checkpoint, os.path.join(config.model_dir, checkpoints.CHECKPOINT_DIR), max_to_keep=3
    )
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
    else:
        initialise(network, config.init, config.init_path)
    start_step = int(step.numpy())

    # --------------------------------------------------------------------- input pipeline
    examples = load_split(config.dataset, config.split, config.data_dir, config.num_classes)
    batches = train_pipeline(
        examples,
        crop_size=config.crop_size,
        batch_size=config.batch_size,
        seed=config.seed,
        scale_range=(config.scale_min, config.scale_max),
        mirror=config.mirror,
        shuffle_buffer=config.shuffle_buffer,
        deterministic=config.deterministic,
        skip_batches=start_step,
    )

    # ----------------------------------------------------------------------------- loop
    intervals = config.steps // config.checkpoint_every
    first_interval = start_step // config.checkpoint_every
    guard = _CheckpointAndGuard(manager, step, config.checkpoint_every)
    log_dir = os.path.join(config.model_dir, "logs")
    sample_images, sample_labels = next(iter(batches.take(1)))
    callbacks = [
        guard,
        keras.callbacks.TensorBoard(log_dir, write_graph=False),
        # One row per checkpoint interval; appends on resume.
        keras.callbacks.CSVLogger(os.path.join(config.model_dir, HISTORY_FILE), append=True),
        _ImageSummaries(log_dir, sample_images[:4], sample_labels[:4], config.checkpoint_every),
    ]
    history = {}
    if first_interval < intervals:
        history = trainer.fit(
            batches,
            epochs=intervals,
            initial_epoch=first_interval,
            steps_per_epoch=config.checkpoint_every,
            callbacks=callbacks,
            verbose=config.verbose,
            shuffle=False,  # the pipeline shuffles, with its own seed
        ).history
    if guard.diverged_at is not None:
        raise TrainingDiverged(
            f"{config.model_dir}: loss or weights became NaN/Inf at step {guard.diverged_at}; "
            "stopped. "
            f"Last good checkpoint: {manager.latest_checkpoint or 'none'}; lower --base_lr"
        )

    # ------------------------------------------------------------------------ final model
    final = os.path.join(config.model_dir, checkpoints.FINAL_MODEL)
    save_atomically(final, network.save)
    logs = {key: float(values[-1]) for key, values in history.items()}
    logs["step"] = int(step.numpy())
    return logs
