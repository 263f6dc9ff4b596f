"""What every experiment shares: its inputs, the examples it reads, the model stamps
of the over-seeds caches, and `write_results` (CSV, JSON and a figure drawn by the
experiment's own `plot`).
"""

import csv
import dataclasses
import importlib
import os
import typing
from types import ModuleType

import keras
import numpy as np
import tensorflow as tf

from tf_segunravel.atomic import make_output_dir, save_atomically, write_json
from tf_segunravel.experiment_registry import (
    MODEL,
    MODELS,
    REGISTRY,
    RESULTS,
    TRAINS,
    ExperimentSettings,
)
from tf_segunravel.unravel.graph import ModelGraph
from tf_segunravel.unravel.settings import FixationSettings

# What the analyses take as a network: a Keras model, or its graph as the unravel reads it.
Network: typing.TypeAlias = keras.Model | ModelGraph


def _examples(examples, max_images):
    for example in examples.take(max_images).as_numpy_iterator():
        yield example["image"], example["segmentation"][..., 0]


def model_stamp(name: str) -> list[int] | None:
    """[bytes, newest modification time in ns] of the files the model at path `name` is
    loaded from (`training.checkpoints.network_files`: a .keras file, a model dir's
    model.keras or latest checkpoint), of every file of another directory (a SavedModel), or
    None when `name` is no path. Part of the over-seeds caches' key: a model retrained at the
    same path is run again, and a model dir that only gained an evaluation is not."""
    from tf_segunravel.errors import InputError
    from tf_segunravel.training.checkpoints import network_files

    try:
        files = network_files(name)
    except InputError:
        if not os.path.isdir(name):
            return None
        files = [os.path.join(root, f) for root, _, names in os.walk(name) for f in names]
    infos = [os.stat(f) for f in files]
    return [sum(i.st_size for i in infos), max((i.st_mtime_ns for i in infos), default=0)]


def model_key(name: str) -> str:
    """A file name for a model's path: its characters outside [A-Za-z0-9-_.] as '_'."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name.strip("/"))


@dataclasses.dataclass
class AnalysisInputs:
    """What every experiment that analyses models reads (`experiment_registry.MODEL` and
    `MODELS`): the model, its data, the fixation settings and the experiment settings."""

    network: keras.Model
    examples: tf.data.Dataset
    num_classes: int
    class_names: list[str]
    class_kinds: list[str] | None
    settings: FixationSettings
    options: ExperimentSettings = dataclasses.field(default_factory=ExperimentSettings)
    figure_dir: str | None = None  # faithfulness: where its curves and example panels go
    # Which images `examples` are (e.g. "segunravel_shapes/val"): part of the over-seeds
    # caches' key, so a cached model result is never reused for other images.
    source: str = ""


# How a refusal names the kind of experiment that was asked for.
_KINDS = {
    MODEL: "one of the one-model experiments",
    MODELS: "run over seeds",
    TRAINS: "one of the training experiments",
    RESULTS: "one of the experiments that read other experiments' results",
}


def experiment_module(name: str, reads: str) -> ModuleType:
    """The module of experiment `name`, which must read `reads` (MODEL, MODELS, TRAINS or
    RESULTS);
    a ValueError naming the experiment and the choices otherwise."""
    spec = REGISTRY.get(name)
    if spec is None or spec.reads != reads:
        chosen = [n for n, e in REGISTRY.items() if e.reads == reads]
        raise ValueError(f"experiment={name}: not {_KINDS[reads]}; choose from {chosen}")
    return importlib.import_module(f"tf_segunravel.experiments.{spec.module}")


def _common(inputs: AnalysisInputs) -> dict:
    return dict(
        class_names=inputs.class_names,
        class_kinds=inputs.class_kinds,
        settings=inputs.settings,
        max_images=inputs.options.max_images,
        pad_size=inputs.options.pad_size,
    )


def write_results(
    rows: list[dict], output_dir: str, name: str, summary: dict | None = None
) -> None:
    """`<name>.csv`, `<name>.json` (rows and summary) and `<name>.png` (a bar chart)."""
    import matplotlib.pyplot as plt

    make_output_dir(output_dir)
    base = os.path.join(output_dir, name)
    fields = list(rows[0]) if rows else []

    def write_csv(path):
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)

    save_atomically(base + ".csv", write_csv)
    write_json(base + ".json", {"experiment": name, "rows": rows, "summary": summary or {}})
    figure, axis = plt.subplots(figsize=(max(6, 0.6 * len(rows)), 3.5))
    _plot(axis, rows, name)
    figure.tight_layout()
    save_atomically(base + ".png", lambda p: figure.savefig(p, dpi=90, format="png"))
    plt.close(figure)


def _bars(axis, labels, series):
    width = 0.8 / max(len(series), 1)
    for i, (label, values) in enumerate(series.items()):
        xs = np.arange(len(labels)) + i * width
        axis.bar(xs, [np.nan if v is None else v for v in values], width, label=label)
    axis.set_xticks(np.arange(len(labels)) + 0.4 - width / 2, labels, rotation=45, ha="right")
    axis.legend(fontsize=8)


def _plot(axis, rows, name):
    """Draws experiment `name`'s figure with its module's `plot` (the registry names the
    module; an entry without one, such as an over-seeds summary, draws fixation location's)."""
    spec = REGISTRY.get(name)
    module = spec.module if spec and spec.module else "location"
    importlib.import_module(f"tf_segunravel.experiments.{module}").plot(axis, rows)
    axis.set_title(name)
