"""Label and score grids: how the network's score grid meets the image's pixels.

One home for what the losses, the evaluation, the unravel, the fixation files and the export
all need: the lowest-index argmax, labels sampled onto the score grid, and scores brought to
image size with DeepLab's protocol (docs/method.md, "Test protocol").
"""

import tensorflow as tf

from tf_segunravel.models.deeplab_largefov import OUTPUT_STRIDE


def first_argmax(values, axis=-1):
    """argmax that returns the lowest index among ties (tf.argmax leaves it unspecified).

    The unravel's tie rule (docs/method.md, "Ties"), and the label rule everywhere else, so a
    predicted label never depends on the kernel that computed it.
    """
    best = tf.reduce_max(values, axis=axis, keepdims=True)
    positions = tf.range(tf.shape(values)[axis])
    shape = [1] * len(values.shape)
    shape[axis] = -1
    positions = tf.reshape(positions, shape)
    large = tf.shape(values)[axis]
    return tf.reduce_min(tf.where(tf.equal(values, best), positions, large), axis=axis)


def shrink_labels(labels, size):
    """Labels [B, H, W] sampled at the score grid `size` = (h, w), as Caffe's Interp shrink.

    Score position i sits over input pixel round(i * (H - 1) / (h - 1)) (exactly 8i for the
    321 -> 41 and 513 -> 65 grids), so labels are gathered there, never interpolated.
    """

    def positions(full, small):
        full, small = tf.cast(full, tf.float32), tf.cast(small, tf.float32)
        step = (full - 1.0) / tf.maximum(small - 1.0, 1.0)
        return tf.cast(tf.round(tf.range(small) * step), tf.int32)

    shape = tf.shape(labels)
    labels = tf.gather(labels, positions(shape[1], size[0]), axis=1)
    return tf.gather(labels, positions(shape[2], size[1]), axis=2)


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


def labels_at_size(scores, height, width):
    """Predicted labels int32 [B, height, width] from score-grid scores [B, h, w, C]."""
    return tf.cast(first_argmax(scores_at_size(scores, height, width), axis=-1), tf.int32)
