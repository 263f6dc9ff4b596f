"""DeepLab's test protocol and the segmentation scores (per-class IoU, mean IoU, accuracy).

Protocol: pad the image to a fixed size (513 for VOC) with the mean colour, run the network,
upsample the stride-8 scores x8 bilinearly with aligned corners (Caffe's Interp: score i sits
over pixel 8i), crop back to the image, take the argmax.
"""

import keras
import numpy as np
import tensorflow as tf

from tf_segunravel.data.labels import IGNORE_LABEL
from tf_segunravel.data.pipeline import eval_pipeline
from tf_segunravel.models.deeplab_largefov import OUTPUT_STRIDE


def upsample_scores(scores, stride=OUTPUT_STRIDE):
    """[B, h, w, C] -> [B, (h-1)*stride+1, (w-1)*stride+1, C], corners aligned."""
    size = (tf.shape(scores)[1:3] - 1) * stride + 1
    return tf.compat.v1.image.resize(
        scores, size, method=tf.image.ResizeMethod.BILINEAR, align_corners=True
    )


def scores_at_size(scores, height, width):
    """Stride-8 scores [B, h, w, C] -> [B, height, width, C]: upsampled, cropped back."""
    scores = upsample_scores(tf.cast(scores, tf.float32))
    # (h-1)*8+1 >= H holds for Caffe's pooling sizes; pad a shortfall (other models) anyway.
    pad_h = tf.maximum(height - tf.shape(scores)[1], 0)
    pad_w = tf.maximum(width - tf.shape(scores)[2], 0)
    scores = tf.pad(scores, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]], mode="SYMMETRIC")
    return scores[:, :height, :width]


def full_resolution_scores(network, images):
    """Scores at the input resolution: [B, H, W, C] for images [B, H, W, 3]."""
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    return scores_at_size(network(images, training=False), height, width)


def evaluate(network, examples, num_classes, pad_size=513, class_names=None):
    """Runs the test protocol over `examples`; returns a JSON-ready dict of scores.

    Keys: `per_class_iou` {name: IoU or None when the class never occurs nor is predicted},
    `mean_iou` (over classes that occur), `pixel_accuracy`, `images`, `confusion` (rows:
    truth, columns: prediction).
    """
    mean_iou = keras.metrics.MeanIoU(num_classes, ignore_class=IGNORE_LABEL)
    predict = tf.function(lambda images: full_resolution_scores(network, images))
    images_seen = 0
    for features, labels in eval_pipeline(examples, pad_size=pad_size, batch_size=1):
        predicted = tf.argmax(predict(features["image"]), axis=-1, output_type=tf.int32)
        height, width = int(features["height"][0]), int(features["width"][0])
        mean_iou.update_state(labels[:, :height, :width], predicted[:, :height, :width])
        images_seen += 1
    confusion = mean_iou.total_cm.numpy().astype(np.int64)
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
        "images": images_seen,
        "confusion": confusion.tolist(),
    }


def format_table(results):
    """The per-class IoU table as aligned text lines, then mean IoU and pixel accuracy."""
    width = max(len(name) for name in results["per_class_iou"])
    lines = [f"{'class':<{width}}  IoU"]
    for name, iou in results["per_class_iou"].items():
        lines.append(f"{name:<{width}}  {'-' if iou is None else f'{100 * iou:5.2f}'}")
    lines.append(f"{'mean IoU':<{width}}  {100 * results['mean_iou']:5.2f}")
    lines.append(f"{'pixel acc.':<{width}}  {100 * results['pixel_accuracy']:5.2f}")
    return lines
