"""What explaining one image costs: fixations beside the gradient baselines.

    python3 -m bench.explain [--networks=largefov,unet,deeplabv3_plus --repeats=3]

For each network (random weights: the cost does not depend on what it learned), one image,
every predicted class: the median seconds of the methods table's `fixations` entry (one
walk for all classes, then the compiled heat maps, as the tools run them) and of each
gradient method of `tf_segunravel/baselines.py`
(Grad-CAM compiled, one backward pass for every class; tf-keras-vis' Grad-CAM and the
others one backward pass per class), with the network's forward pass for scale; medians of
`--explain_repeats` for the forward pass and the fixations, of `--explain_repeats` - 2 (at
least 1, after one untimed call) for each baseline. LargeFOV is full width at 321 x 321,
the U-Net and DeepLabV3+ of `bench/zoo.py` at 224. The ratios (method / fixations,
measured in the same run) come last.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags

from bench.timing import median_seconds
from bench.zoo import deeplabv3_plus, unet
from tf_segunravel import baselines, methods
from tf_segunravel.models import deeplab_largefov
from tf_segunravel.unravel import FixationSettings
from tf_segunravel.unravel.graph import ModelGraph

flags.DEFINE_list("networks", ["largefov", "unet", "deeplabv3_plus"], "Networks to time.")
flags.DEFINE_list(
    "methods",
    ["gradcam", "gradcam_reference", "saliency", "gradient_x_input"],
    "Baselines to time (smoothgrad: 20 saliency passes per class; gradcam_reference: "
    "tf-keras-vis' Gradcam, one class at a time, beside the compiled one).",
)
flags.DEFINE_list(
    "variants",
    ["fixations_k3"],
    "Fixation entries of the methods table timed beside plain fixations (ratios to the "
    "forward pass as <network>_<entry>_over_forward).",
)
flags.DEFINE_integer("explain_repeats", 3, "Timed runs per figure (median).")
FLAGS = flags.FLAGS  # --repeats belongs to bench.zoo
SETTINGS = FixationSettings()  # the defaults users run with
OPTIONS = methods.MethodOptions(SETTINGS)

NETWORKS = {
    "largefov": (lambda: deeplab_largefov(num_classes=21), 321),
    "unet": (lambda: unet(224), 224),
    "deeplabv3_plus": (lambda: deeplabv3_plus(224), 224),
}


def measure(name):
    """Prints one network's figures; returns its [(ratio name, value)]."""
    build, side = NETWORKS[name]
    keras.utils.set_random_seed(0)
    model = build()
    graph = ModelGraph(model)
    image = np.random.default_rng(0).integers(0, 256, (side, side, 3)).astype(np.uint8)
    batch = tf.constant(image[None], tf.float32)
    forward = tf.function(lambda x: model(x, training=False))
    forward_s = median_seconds(lambda: forward(batch).numpy(), FLAGS.explain_repeats)
    classes = [int(c) for c in np.flatnonzero(methods.engine_for(graph, SETTINGS)(batch).seeds[0])]

    def seconds_of(entry_name):  # as every tool runs them: the walk, then the compiled maps
        entry = methods.get(entry_name)

        def maps():
            return entry.maps(graph, image[None], classes, options=OPTIONS)

        maps()  # traces the engine and the heat maps
        return median_seconds(maps, FLAGS.explain_repeats)

    fixations_s = seconds_of("fixations")
    print(f"{name}_classes: {len(classes)}")
    print(f"{name}_forward_s: {forward_s:.3f}")
    print(f"{name}_fixations_s: {fixations_s:.3f}")
    ratios = [(f"{name}_fixation_maps_over_forward", fixations_s / forward_s)]
    for variant in FLAGS.variants:
        variant_s = seconds_of(variant)
        print(f"{name}_{variant}_s: {variant_s:.3f}")
        ratios.append((f"{name}_{variant}_over_forward", variant_s / forward_s))
    for method in FLAGS.methods:
        reference = method == "gradcam_reference"
        seconds = median_seconds(
            lambda method=method, reference=reference: baselines.explain(
                "gradcam" if reference else method, graph, image, classes, reference=reference
            ),
            max(1, FLAGS.explain_repeats - 2),  # one call traces the compiled Grad-CAM
        )
        print(f"{name}_{method}_s: {seconds:.3f}")
        label = "gradcam_compiled" if method == "gradcam" else method
        ratios.append((f"{name}_{label}_over_fixation_maps", seconds / fixations_s))
    return ratios


def main(_):
    print(f"cpu_cores: {os.cpu_count()}")
    ratios = [ratio for name in FLAGS.networks for ratio in measure(name)]
    for label, value in ratios:
        print(f"{label}: {value:.2f}")


if __name__ == "__main__":
    app.run(main)
