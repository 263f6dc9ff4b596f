"""`shift_variants`: fixation location under no, partial and full shift."""

import dataclasses
import typing
from collections.abc import Sequence

import tensorflow as tf

from tf_segunravel.experiments.common import AnalysisInputs, Network, _bars, _common
from tf_segunravel.experiments.location import fixation_location
from tf_segunravel.unravel.settings import FixationSettings

if typing.TYPE_CHECKING:
    from matplotlib.axes import Axes


def shift_variants(
    network: Network,
    examples: tf.data.Dataset,
    num_classes: int,
    class_names: Sequence[str] | None = None,
    class_kinds: Sequence[str] | None = None,
    settings: FixationSettings | None = None,
    max_images: int = 100,
    pad_size: int = 513,
) -> list[dict]:
    """fixation_location under each shift; one row per class and variant."""
    settings = settings or FixationSettings()
    rows = []
    for shift in ("none", "partial", "full"):
        for row in fixation_location(
            network,
            examples,
            num_classes,
            class_names,
            class_kinds,
            settings=dataclasses.replace(settings, shift=shift),
            max_images=max_images,
            pad_size=pad_size,
        ):
            rows.append({"shift": shift, **row})
    return rows


def plot(axis: "Axes", rows: list[dict]) -> None:
    names = list(dict.fromkeys(r["name"] for r in rows))
    series = {
        s: [r["inside_truth"] for r in rows if r["shift"] == s] for s in ("none", "partial", "full")
    }
    _bars(axis, names, series)
    axis.set_ylabel("fixations inside truth")


def run(inputs: AnalysisInputs) -> tuple[list[dict], dict]:
    rows = shift_variants(inputs.network, inputs.examples, inputs.num_classes, **_common(inputs))
    return rows, {}
