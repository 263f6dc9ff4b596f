"""The training run behind `tools/train.py`, top to bottom in stages.

Resume order: an existing checkpoint in the model dir, then the requested initialisation
(VGG-16, a caffemodel, another trained model), then scratch. Checkpoints are written at the
end of every checkpoint interval, so a run killed at any moment loses at most one interval and
the same command continues it to the same final step.
"""

import dataclasses
import json
import math
import os
import shutil
import tempfile
import time
import types
import typing

import keras
import tensorflow as tf

from tf_segunravel.atomic import make_output_dir, save_atomically, write_json, write_text
from tf_segunravel.data import labels as data_labels
from tf_segunravel.data import load_split, train_pipeline
from tf_segunravel.errors import InputError
from tf_segunravel.training import checkpoints
from tf_segunravel.training.config import (
    HISTORY_FILE,
    INITS,
    STRATEGIES,
    TrainConfig,
    run_fields,
)
from tf_segunravel.training.optim import freeze_all_but_last, learning_rate_schedule
from tf_segunravel.training.trainer import SegmentationTrainer

FLAGS_FILE = "flags.txt"
CONFIG_CHANGES_FILE = "config_changes.jsonl"


# Steps that one call of Keras' train function runs (`steps_per_execution`), at most: the
# call's fixed cost (Keras' loop, callbacks, the logs' round trip to Python) then falls on a
# group of steps instead of each. The steps themselves are the same ops on the same batches,
# so the weights are the same bit for bit (tests/training/test_train.py). The divergence
# guard then reads the loss once a group, which is enough: the loss it reads is the interval's
# running mean, NaN from the first bad step on. Only without a distribution strategy: under
# MultiWorkerMirroredStrategy, Keras 3.15's grouped loop fails ("You must feed a value for
# placeholder tensor 'while/body/.../Placeholder_7'"), and the other strategies are not
# tested here with it.
MOST_STEPS_PER_EXECUTION = 25


def steps_per_execution(interval: int, most: int = MOST_STEPS_PER_EXECUTION) -> int:
    """The largest number of steps, at most `most`, that divides the checkpoint `interval`:
    a group never straddles a checkpoint, so every checkpoint lands where it did."""
    return max(k for k in range(1, min(interval, most) + 1) if interval % k == 0)


class TrainingDiverged(InputError):
    """The loss became NaN or Inf; the last good checkpoint is left in place."""


def make_strategy(name: str) -> tf.distribute.Strategy:
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


def worker_role(strategy: tf.distribute.Strategy) -> tuple[bool, int]:
    """(is_chief, task id) of this process: the chief is the `chief` task, or worker 0 of a
    cluster without one; a single process is its own chief."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True, 0
    task_type, task_id = resolver.task_type, resolver.task_id or 0
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    first_worker = task_type == "worker" and task_id == 0 and not has_chief
    return task_type == "chief" or first_worker, task_id


def initialise(network: keras.Model, init: str, init_path: str | None) -> None:
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
            if not init_path:
                raise InputError("init=caffe needs init_path: a .caffemodel or .weights.h5 file")
            load_caffemodel_weights(network, init_path)
    elif init == "model":
        if not init_path:
            raise InputError("init=model needs init_path: a model dir, checkpoint or .keras file")
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
        # Called once per group of steps (`steps_per_execution`), `batch` the group's last.
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


class _UnlessDiverged(keras.callbacks.Callback):
    """Forwards to `callback` only while `guard` has seen no divergence.

    Keras still calls `on_epoch_end` after the guard stops training, so without this the
    history CSV, TensorBoard and the image panels would record the NaN interval that no
    checkpoint holds, and the resumed run would write that interval's row a second time.
    """

    def __init__(self, callback, guard):
        super().__init__()
        self.callback, self.guard = callback, guard

    def set_model(self, model):
        super().set_model(model)
        self.callback.set_model(model)

    def set_params(self, params):
        super().set_params(params)
        self.callback.set_params(params)

    def _forward(name: str):  # type: ignore[misc]  # a class-body helper, not a method
        def hook(self, *args, **kwargs):
            if self.guard.diverged_at is None:
                getattr(self.callback, name)(*args, **kwargs)

        return hook

    on_epoch_begin = _forward("on_epoch_begin")
    on_epoch_end = _forward("on_epoch_end")
    on_train_batch_begin = _forward("on_train_batch_begin")
    on_train_batch_end = _forward("on_train_batch_end")
    del _forward

    def on_train_begin(self, logs=None):
        self.callback.on_train_begin(logs)

    def on_train_end(self, logs=None):
        self.callback.on_train_end(logs)  # closes files and writers, diverged or not


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


def resolve_num_classes(config: TrainConfig) -> TrainConfig:
    """`config` with `num_classes` filled in from the dataset's metadata when it is None."""
    if config.num_classes is not None:
        return config
    from tf_segunravel.data.pipeline import dataset_classes

    if config.dataset.startswith("folder:"):
        raise InputError("num_classes is required with a folder: dataset")
    names, _ = dataset_classes(config.dataset, config.data_dir)
    if not names:
        raise InputError(
            f"dataset={config.dataset}: no class_names in its metadata; set num_classes="
        )
    return dataclasses.replace(config, num_classes=len(names))


def config_changes(previous: dict, config: TrainConfig) -> dict[str, tuple]:
    """{field: (before, now)} for the run-defining fields that differ from `previous`."""
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    changes = {}
    for name in run_fields():
        before = previous.get(name, defaults[name])
        if name != "model_dir" and before != getattr(config, name):
            changes[name] = (before, getattr(config, name))
    return changes


def _check_resume(config):
    """Refuses to continue a model dir trained with other settings, unless allowed.

    Architecture fields can never change (the checkpoint would not fit); any other change
    needs `allow_config_change`. Returns the record of an allowed change (None when nothing
    changed), which the run appends to `config_changes.jsonl` once it has started.
    """
    config_path = os.path.join(config.model_dir, checkpoints.CONFIG_FILE)
    if not os.path.exists(config_path):
        return
    changes = config_changes(checkpoints.read_config(config.model_dir), config)
    architecture = {f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get("network")}
    described = ", ".join(f"{k}={a} (now {b})" for k, (a, b) in sorted(changes.items()))
    if changes.keys() & architecture or (changes and not config.allow_config_change):
        remedy = "use another model_dir=<dir>"
        if not changes.keys() & architecture:
            remedy += ", or pass allow_config_change=True to continue it with the new settings"
        raise InputError(
            f"{config_path}: this model dir was trained with other settings: {described}; {remedy}"
        )
    if not changes:
        return None
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "checkpoint": tf.train.latest_checkpoint(
            os.path.join(config.model_dir, checkpoints.CHECKPOINT_DIR)
        ),
        "changes": {k: {"before": a, "now": b} for k, (a, b) in changes.items()},
    }


def train(config: TrainConfig, flags_text: str | None = None) -> dict:
    """Runs (or resumes) a training run; returns the final logs dict.

    Everything that can fail on bad input (settings against the model dir, the dataset and
    its files, the initialisation) is done before the model dir is written: a run that fails
    before its first step leaves a new model dir uncreated and an existing one untouched.
    `flags_text`, the binary's resolved flags, is saved as `flags.txt` beside `config.json`.
    """
    config = resolve_num_classes(config)
    change = _check_resume(config)
    created = not os.path.exists(config.model_dir)
    try:
        run = prepare(config)
    except BaseException:
        if created:  # nothing should be there yet; make sure nothing is
            shutil.rmtree(config.model_dir, ignore_errors=True)
        raise
    return _run(config, run, flags_text, change)


def prepare(config: TrainConfig) -> types.SimpleNamespace:
    """Everything before the first step, without writing to the model dir: the strategy, the
    network, its optimizer and trainer, the restored checkpoint (or initialisation) and the
    input pipeline (`bench/profile_train_step.py` times a step of exactly this)."""
    config = resolve_num_classes(config)
    num_classes = typing.cast(int, config.num_classes)  # resolved: a number from here on
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    if config.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    strategy = make_strategy(config.strategy)

    # --------------------------------------------------------------------- input pipeline
    # First, so that a bad dataset or bad files fail before anything is built or written.
    examples = load_split(config.dataset, config.split, config.data_dir, config.num_classes)

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
            warmup_steps=config.warmup_steps,
        )
        optimizer = keras.optimizers.SGD(schedule, momentum=config.momentum)
        if config.mixed_precision:
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        trainer = SegmentationTrainer(
            network,
            num_classes,
            template_weight=config.template_weight,
            similarity=config.similarity,
            selective=config.selective,
            template_reduction=config.template_reduction,
            weight_decay=config.weight_decay,
            use_lr_multipliers=config.lr_multipliers,
            feature_layer=checkpoints.feature_layer(dataclasses.asdict(config)),
            dropout_seed=config.seed,
        )
        freeze_all_but_last(network, config.train_layers)
        trainer.compile(
            optimizer=optimizer,
            jit_compile=config.xla,
            steps_per_execution=(
                steps_per_execution(config.checkpoint_every) if config.strategy == "default" else 1
            ),
        )
        optimizer.build(network.trainable_variables)

    # ------------------------------------------------------------------ checkpoint load
    # Every worker restores the chief's latest checkpoint. Saving a checkpoint involves every
    # worker, so the others save theirs into a scratch dir that they delete at the end, as
    # TensorFlow's multi-worker guide prescribes; only the chief writes to the model dir.
    chief, task_id = worker_role(strategy)
    checkpoint_dir = os.path.join(config.model_dir, checkpoints.CHECKPOINT_DIR)
    step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    checkpoint = checkpoints.make_checkpoint(network, optimizer, step)
    latest = tf.train.latest_checkpoint(checkpoint_dir)
    if latest:
        checkpoint.restore(latest).assert_existing_objects_matched()
    else:
        initialise(network, config.init, config.init_path)
    scratch = None if chief else tempfile.mkdtemp(prefix=f"tf_segunravel-worker{task_id}-")
    manager = tf.train.CheckpointManager(
        checkpoint, checkpoint_dir if chief else scratch, max_to_keep=3
    )
    start_step = int(step.numpy())
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
        with_index=True,  # keys the dropout masks (models/layers.py KeyedDropout)
    )
    sample_images, sample_labels, _ = next(iter(batches.take(1)))
    return types.SimpleNamespace(
        chief=chief,
        scratch=scratch,
        network=network,
        trainer=trainer,
        manager=manager,
        step=step,
        start_step=start_step,
        batches=batches,
        samples=(sample_images[:4], sample_labels[:4]),
    )


def _run(config, run, flags_text, change):
    """The run proper: its record in the model dir, the loop, the final model. Only the chief
    writes to the model dir; another worker trains in step with it, checkpointing into its
    scratch dir, which it deletes at the end."""
    try:
        return _loop(config, run, flags_text, change)
    finally:
        if run.scratch:
            shutil.rmtree(run.scratch, ignore_errors=True)


def _loop(config, run, flags_text, change):
    network, trainer, manager, step = run.network, run.trainer, run.manager, run.step
    log_dir = os.path.join(config.model_dir, "logs")
    guard = _CheckpointAndGuard(manager, step, config.checkpoint_every)
    loggers = []
    if run.chief:
        make_output_dir(config.model_dir, "model_dir")
        if change:
            with open(os.path.join(config.model_dir, CONFIG_CHANGES_FILE), "a") as f:
                f.write(json.dumps(change) + "\n")
        config_path = os.path.join(config.model_dir, checkpoints.CONFIG_FILE)
        write_json(config_path, dataclasses.asdict(config))
        if flags_text is not None:
            write_text(os.path.join(config.model_dir, FLAGS_FILE), flags_text)
        loggers = [
            keras.callbacks.TensorBoard(log_dir, write_graph=False),
            # One row per checkpoint interval; appends on resume.
            keras.callbacks.CSVLogger(os.path.join(config.model_dir, HISTORY_FILE), append=True),
            _ImageSummaries(log_dir, *run.samples, config.checkpoint_every),
        ]

    # ----------------------------------------------------------------------------- loop
    intervals = config.steps // config.checkpoint_every
    first_interval = run.start_step // config.checkpoint_every
    # The guard runs first: it checkpoints a good interval before anything logs it.
    callbacks = [guard, *(_UnlessDiverged(logger, guard) for logger in loggers)]
    history = {}
    if first_interval < intervals:
        history = trainer.fit(
            run.batches,
            epochs=intervals,
            initial_epoch=first_interval,
            steps_per_epoch=config.checkpoint_every,
            callbacks=callbacks,
            verbose=config.verbose if run.chief else 0,
            shuffle=False,  # the pipeline shuffles, with its own seed
        ).history
    if guard.diverged_at is not None:
        raise TrainingDiverged(
            f"{config.model_dir}: loss or weights became NaN/Inf by step {guard.diverged_at}; "
            "stopped. "
            f"Last good checkpoint: {manager.latest_checkpoint or 'none'}; lower --base_lr"
        )

    # ------------------------------------------------------------------------ final model
    if run.chief:
        final = os.path.join(config.model_dir, checkpoints.FINAL_MODEL)
        save_atomically(final, network.save)
    logs = {key: float(values[-1]) for key, values in history.items()}
    logs["step"] = int(step.numpy())
    return logs
