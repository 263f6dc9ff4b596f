"""`k_analysis`: per layer, how many input channels a unit on the fixation path needs to
capture 10, 25 and 50% of its positive contribution, averaged over the fixation points.
"""

import typing
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from tf_segunravel.experiments.common import AnalysisInputs, Network, _bars, _examples
from tf_segunravel.unravel.rules import channels_to_reach
from tf_segunravel.unravel.tracer import SegUnravel

if typing.TYPE_CHECKING:
    from matplotlib.axes import Axes

K_FRACTIONS = (0.10, 0.25, 0.50)


def k_analysis(
    network: Network,
    examples: tf.data.Dataset,
    max_images: int = 20,
    fractions: Sequence[float] = K_FRACTIONS,
) -> list[dict]:
    """Rows per channel-choosing layer: input channels and the mean K for each fraction.

    The engine returns every layer's channel scores beside the points (graph mode), and
    `channels_to_reach`, the mass rule's own count, says how many channels each needs.
    """
    engine = SegUnravel(network, keep_channel_scores=True)
    needed: dict[tuple[str, float], list[int]] = {}
    channels: dict[str, int] = {}
    order: list[str] = []
    for image, _ in _examples(examples, max_images):
        kept = engine(image[None].astype(np.float32)).channel_scores
        assert kept is not None  # keep_channel_scores=True
        for layer, scores in kept:
            if layer not in channels:
                order.append(layer)
            channels[layer] = scores.shape[1]
            for fraction in fractions:
                count, _ = channels_to_reach(tf.constant(scores), fraction)
                needed.setdefault((layer, fraction), []).extend(count.numpy().tolist())
    rows = []
    for layer in order:
        row = {"layer": layer, "input_channels": channels[layer]}
        for fraction in fractions:
            values = needed[(layer, fraction)]
            row[f"k_{round(fraction * 100)}"] = float(np.mean(values))
            row[f"k_{round(fraction * 100)}_share"] = float(np.mean(values)) / channels[layer]
        rows.append(row)
    return rows


def plot(axis: "Axes", rows: list[dict]) -> None:
    labels = [r["layer"] for r in rows]
    keys = [k for k in rows[0] if k.startswith("k_") and k.endswith("_share")]
    _bars(axis, labels, {k: [r[k] for r in rows] for k in keys})
    axis.set_ylabel("share of input channels")


def run(inputs: AnalysisInputs) -> tuple[list[dict], dict]:
    # A fifth of the images: every layer's channel scores are kept per image.
    return k_analysis(
        inputs.network, inputs.examples, max_images=max(1, inputs.options.max_images // 5)
    ), {}
