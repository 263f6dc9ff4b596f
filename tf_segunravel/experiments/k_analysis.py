"""`k_analysis`: per layer, how many input channels a unit on the fixation path needs to
capture 10, 25 and 50% of its positive contribution, averaged over the fixation points.
"""

import numpy as np
import tensorflow as tf

from tf_segunravel.experiments.common import _bars, _examples
from tf_segunravel.unravel.rules import channels_to_reach
from tf_segunravel.unravel.tracer import SegUnravel

K_FRACTIONS = (0.10, 0.25, 0.50)


def k_analysis(network, examples, max_images=20, fractions=K_FRACTIONS):
    """Rows per channel-choosing layer: input channels and the mean K for each fraction.

    The engine returns every layer's channel scores beside the points (graph mode), and
    `channels_to_reach`, the mass rule's own count, says how many channels each needs.
    """
    engine = SegUnravel(network, keep_channel_scores=True)
    needed, channels, order = {}, {}, []
    for image, _ in _examples(examples, max_images):
        for layer, scores in engine(image[None].astype(np.float32)).channel_scores:
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


def plot(axis, rows):
    labels = [r["layer"] for r in rows]
    keys = [k for k in rows[0] if k.startswith("k_") and k.endswith("_share")]
    _bars(axis, labels, {k: [r[k] for r in rows] for k in keys})
    axis.set_ylabel("share of input channels")


def run(inputs):
    # A fifth of the images: every layer's channel scores are kept per image.
    return k_analysis(
        inputs.network, inputs.examples, max_images=max(1, inputs.options.max_images // 5)
    ), {}
