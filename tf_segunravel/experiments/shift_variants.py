"""`shift_variants`: fixation location under no, partial and full shift."""

import dataclasses

from tf_segunravel.experiments.common import _bars, _common
from tf_segunravel.experiments.location import fixation_location
from tf_segunravel.unravel.settings import FixationSettings


def shift_variants(
    network,
    examples,
    num_classes,
    class_names=None,
    class_kinds=None,
    settings=None,
    max_images=100,
    pad_size=513,
):
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


def plot(axis, rows):
    names = list(dict.fromkeys(r["name"] for r in rows))
    series = {
        s: [r["inside_truth"] for r in rows if r["shift"] == s] for s in ("none", "partial", "full")
    }
    _bars(axis, names, series)
    axis.set_ylabel("fixations inside truth")


def run(inputs):
    rows = shift_variants(inputs.network, inputs.examples, inputs.num_classes, **_common(inputs))
    return rows, {}
