"""`salient_parts`: mask each class's most fixated region (heat map >= 0.5), segment again,
and measure how much the class's probability drops inside and outside the masked region.
"""

import typing
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from tf_segunravel.data.labels import class_name
from tf_segunravel.data.pipeline import MEAN_RGB
from tf_segunravel.experiments.common import AnalysisInputs, Network, _bars, _examples
from tf_segunravel.unravel.geometry import ScoreMap
from tf_segunravel.unravel.maps import fixation_maps
from tf_segunravel.unravel.settings import FixationSettings
from tf_segunravel.unravel.tracer import SegUnravel

if typing.TYPE_CHECKING:
    from matplotlib.axes import Axes


def salient_parts(
    network: Network,
    examples: tf.data.Dataset,
    num_classes: int,
    class_names: Sequence[str] | None = None,
    settings: FixationSettings | None = None,
    max_images: int = 50,
    threshold: float = 0.5,
) -> list[dict]:
    """Rows per class: mean probability drop inside and outside its masked salient region.

    `settings` draw the heat maps (default: `FixationSettings(sigma=6)`, a blur that suits
    small images).
    """
    settings = settings or FixationSettings(sigma=6.0)
    engine = SegUnravel(network, settings)
    drops_in: dict[typing.Any, list[float]] = {c: [] for c in range(num_classes)}
    drops_out: dict[typing.Any, list[float]] = {c: [] for c in range(num_classes)}
    mean = np.array(MEAN_RGB, np.float32)

    # One graph for every masked image of a size (not a fresh graph walk per call).
    softmax = tf.function(
        lambda x: tf.nn.softmax(ScoreMap(network).at_image_size(x)), autograph=False
    )

    def probabilities(image):
        return softmax(tf.constant(image[None], tf.float32))[0].numpy()

    for image, _ in _examples(examples, max_images):
        height, width = image.shape[:2]
        result = engine(image[None].astype(np.float32))
        before = probabilities(image)
        predicted = before.argmax(-1)
        maps = fixation_maps(result, height, width, settings).numpy()[0]
        for cls in np.flatnonzero(result.seeds[0]):
            region = maps[cls] >= threshold
            if not region.any():
                continue
            masked = np.where(region[..., None], mean, image.astype(np.float32))
            after = probabilities(masked)
            outside = (predicted == cls) & ~region
            drops_in[cls].append(float((before[..., cls] - after[..., cls])[region].mean()))
            if outside.any():
                drop = (before[..., cls] - after[..., cls])[outside].mean()
                drops_out[cls].append(float(drop))
    return [
        {
            "class": cls,
            "name": class_name(class_names, cls),
            "images": len(drops_in[cls]),
            "drop_inside": float(np.mean(drops_in[cls])) if drops_in[cls] else None,
            "drop_outside": float(np.mean(drops_out[cls])) if drops_out[cls] else None,
        }
        for cls in range(num_classes)
    ]


def plot(axis: "Axes", rows: list[dict]) -> None:
    labels = [r["name"] for r in rows]
    _bars(axis, labels, {k: [r[k] for r in rows] for k in ("drop_inside", "drop_outside")})
    axis.set_ylabel("probability drop")


def run(inputs: AnalysisInputs) -> tuple[list[dict], dict]:
    rows = salient_parts(
        inputs.network,
        inputs.examples,
        inputs.num_classes,
        inputs.class_names,
        settings=inputs.settings,
        max_images=inputs.options.max_images,
    )
    return rows, {}
