"""DeepLab's test protocol and the segmentation scores (per-class IoU, mean IoU, accuracy).

Protocol: pad the image to a fixed size (513 for VOC) with the mean colour, run the network,
upsample the stride-8 scores x8 bilinearly with aligned corners (Caffe's Interp: score i sits
over pixel 8i), crop back to the image, take the argmax.
"""

import dataclasses
import typing
from collections.abc import Iterator, Sequence

import keras
import numpy as np
import tensorflow as tf

from tf_segunravel.data.labels import IGNORE_LABEL
from tf_segunravel.data.pipeline import eval_pipeline
from tf_segunravel.grids import first_argmax

if typing.TYPE_CHECKING:
    from tf_segunravel.crf import CRFSettings


def full_resolution_scores(network: keras.Model, images: tf.Tensor) -> tf.Tensor:
    """Scores at the input resolution: [B, H, W, C] for images [B, H, W, 3], each pixel
    interpolated from the score positions around it where the network's own geometry puts
    them (DeepLab's x8 aligned-corner rule for LargeFOV)."""
    from tf_segunravel.unravel.geometry import ScoreMap

    return ScoreMap(network).at_image_size(images)


def predictions(
    network: keras.Model, examples: tf.data.Dataset, pad_size: int = 513, batch_size: int = 1
) -> Iterator[tuple[tf.Tensor, tf.Tensor, tf.Tensor]]:
    """Per example, by DeepLab's protocol: (image uint8 [H, W, 3], scores at image size
    float32 [H, W, C], truth int32 [H, W]), all cropped back to the image, in the examples'
    order. `batch_size` images go through the network together (each padded to `pad_size`);
    a batch costs less per image where the network is small, and gives each image the scores
    a pass on its own does up to float rounding (bit for bit with oneDNN's AVX-512 kernels;
    with its AVX2 ones up to 3e-5 apart on the main job's networks, whose 1,500 labellings
    stayed the same: tests/test_evaluation.py, docs/benchmarks.md)."""
    # No tensor-dependent Python control flow inside: AutoGraph would only cost trace time.
    # reduce_retracing: a last, smaller batch reuses the trace.
    predict = tf.function(
        lambda images: full_resolution_scores(network, images),
        autograph=False,
        reduce_retracing=True,
    )
    for features, labels in eval_pipeline(examples, pad_size=pad_size, batch_size=batch_size):
        scores = predict(features["image"])
        heights, widths = features["height"].numpy(), features["width"].numpy()
        for index, (height, width) in enumerate(zip(heights, widths, strict=True)):
            image = tf.cast(features["image"][index, :height, :width], tf.uint8)
            yield image, scores[index, :height, :width], labels[index, :height, :width]


def confusion_counts(truth: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Pixel counts [truth, prediction] (int64) of one labelling, `IGNORE_LABEL` pixels left out.

    In NumPy rather than through keras.metrics.MeanIoU: the metric's eager update cost more
    than the network's pass on the main job's small images (evaluation took 6.7 s a network on
    500 images, 4.4 s in NumPy, the same counts).
    """
    truth = np.asarray(truth).ravel()
    predicted = np.asarray(predicted).ravel()
    kept = truth != IGNORE_LABEL
    truth, predicted = truth[kept].astype(np.int64), predicted[kept].astype(np.int64)
    for name, labels in (("truth", truth), ("prediction", predicted)):
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            bad = labels[(labels < 0) | (labels >= num_classes)][0]
            raise ValueError(
                f"{name} label {bad} outside 0..{num_classes - 1} (and {IGNORE_LABEL}, ignored)"
            )
    counts = np.bincount(truth * num_classes + predicted, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def iou_scores(confusion: np.ndarray, class_names: Sequence[str] | None = None) -> dict:
    """Per-class IoU, mean IoU and pixel accuracy from a confusion matrix (rows: truth).

    `per_class_iou` is None for a class neither present nor predicted; `mean_iou` averages
    the classes present in the truth.
    """
    confusion = np.asarray(confusion, np.int64)
    num_classes = confusion.shape[0]
    truth, predicted = confusion.sum(1), confusion.sum(0)
    intersection = np.diag(confusion)
    union = truth + predicted - intersection
    names = class_names or [str(c) for c in range(num_classes)]
    per_class = {
        name: (float(intersection[c] / union[c]) if union[c] else None)
        for c, name in enumerate(names)
    }
    occurring = [c for c in range(num_classes) if truth[c] > 0]
    return {
        "per_class_iou": per_class,
        "mean_iou": float(np.mean([intersection[c] / union[c] for c in occurring]))
        if occurring
        else 0.0,
        "pixel_accuracy": float(intersection.sum() / max(confusion.sum(), 1)),
        "confusion": confusion.tolist(),
    }


def evaluate(
    network: keras.Model,
    examples: tf.data.Dataset,
    num_classes: int,
    pad_size: int = 513,
    class_names: Sequence[str] | None = None,
    crf_settings: "CRFSettings | None" = None,
    batch_size: int = 1,
) -> dict:
    """Runs the test protocol over `examples`, `batch_size` images a pass (`predictions`);
    returns a JSON-ready dict of scores.

    Keys: `per_class_iou` {name: IoU or None when the class never occurs nor is predicted},
    `mean_iou` (over classes that occur), `pixel_accuracy`, `images`, `confusion` (rows:
    truth, columns: prediction). With `crf_settings` (a `crf.CRFSettings`), the same pass also
    scores DeepLab's dense CRF on the softmax, under `crf` (with the settings used).
    """
    plain = np.zeros((num_classes, num_classes), np.int64)
    refined = np.zeros_like(plain)
    images_seen = 0
    for image, scores, truth in predictions(network, examples, pad_size, batch_size):
        truth = truth.numpy()
        plain += confusion_counts(truth, first_argmax(scores, axis=-1).numpy(), num_classes)
        if crf_settings is not None:
            from tf_segunravel.crf import dense_crf

            probabilities = tf.nn.softmax(scores, axis=-1).numpy()
            refined_labels = dense_crf(image.numpy(), probabilities, crf_settings)
            refined += confusion_counts(truth, refined_labels, num_classes)
        images_seen += 1
    results = {**iou_scores(plain, class_names), "images": images_seen}
    if crf_settings is not None:
        results["crf"] = {
            **iou_scores(refined, class_names),
            "settings": dataclasses.asdict(crf_settings),
        }
    return results


def crf_search(
    network: keras.Model,
    examples: tf.data.Dataset,
    num_classes: int,
    grid: Sequence["CRFSettings"],
    pad_size: int = 513,
    batch_size: int = 1,
) -> list[dict]:
    """DeepLab's cross-validation of the CRF: mean IoU of every `CRFSettings` in `grid` on
    `examples` (a held-out subset), from one network pass (`batch_size` images at a time,
    `predictions`). Rows sorted best first."""
    from tf_segunravel.crf import dense_crf

    kept = []  # the network runs once; the CRF reruns per setting on the kept softmax
    for image, scores, truth in predictions(network, examples, pad_size, batch_size):
        probabilities = tf.nn.softmax(scores, axis=-1).numpy().astype(np.float16)
        kept.append((image.numpy(), probabilities, truth.numpy()))
    rows = []
    for crf_settings in grid:
        confusion = np.zeros((num_classes, num_classes), np.int64)
        for image, probabilities, truth in kept:
            confusion += confusion_counts(
                truth, dense_crf(image, probabilities, crf_settings), num_classes
            )
        ious = iou_scores(confusion)
        rows.append({**dataclasses.asdict(crf_settings), "mean_iou": ious["mean_iou"]})
    return sorted(rows, key=lambda row: -row["mean_iou"])


def format_table(results: dict) -> list[str]:
    """The per-class IoU table as aligned text lines, then mean IoU and pixel accuracy; with
    a `crf` entry, a second column for the network + CRF."""
    columns = [("IoU", results)]
    if "crf" in results:
        columns.append(("IoU + CRF", results["crf"]))
    width = max(len(name) for name in [*results["per_class_iou"], "pixel acc."])

    def cell(value):
        return f"{'-' if value is None else f'{100 * value:5.2f}':>{len(columns[-1][0])}}"

    def row(label, values):
        return f"{label:<{width}}  " + "  ".join(cell(v) for v in values)

    lines = [f"{'class':<{width}}  " + "  ".join(f"{t:>{len(columns[-1][0])}}" for t, _ in columns)]
    for name in results["per_class_iou"]:
        lines.append(row(name, [c["per_class_iou"][name] for _, c in columns]))
    lines.append(row("mean IoU", [c["mean_iou"] for _, c in columns]))
    lines.append(row("pixel acc.", [c["pixel_accuracy"] for _, c in columns]))
    return lines
