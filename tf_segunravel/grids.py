"""Label and score grids: how the network's score grid meets the image's pixels.

One home for what the losses, the evaluation, the unravel, the fixation files and the export
all need: the lowest-index argmax, labels sampled onto the score grid, and scores brought to
image size with DeepLab's protocol (docs/method.md, "Test protocol").
"""

import typing

import tensorflow as tf

from tf_segunravel.models.deeplab_largefov import OUTPUT_STRIDE


def first_argmax(values: typing.Any, axis: int = -1) -> tf.Tensor:
    """argmax that returns the lowest index among ties (tf.argmax leaves it unspecified).

    The unravel's tie rule (docs/method.md, "Ties"), and the label rule everywhere else, so a
    predicted label never depends on the kernel that computed it.
    """
    rank = len(values.shape)
    if axis in (-1, rank - 1):
        # top_k is documented stable (equal values: the lower index first), and with k = 1
        # it is one pass over the values where the general form below takes four.
        return tf.math.top_k(values, 1).indices[..., 0]
    best = tf.reduce_max(values, axis=axis, keepdims=True)
    positions = tf.range(tf.shape(values)[axis])
    shape = [1] * rank
    shape[axis] = -1
    positions = tf.reshape(positions, shape)
    large = tf.shape(values)[axis]
    return tf.reduce_min(tf.where(tf.equal(values, best), positions, large), axis=axis)


# DeepLab-LargeFOV's score grid: score i over pixel 8i on both axes (rows: height, width;
# columns: scale, offset), the map `unravel.geometry.score_geometry` derives for it.
DEEPLAB_GEOMETRY = ((float(OUTPUT_STRIDE), 0.0), (float(OUTPUT_STRIDE), 0.0))


def shrink_labels(
    labels: tf.Tensor, size: typing.Any, geometry: tf.Tensor | None = None
) -> tf.Tensor:
    """Labels [B, H, W] sampled at the score grid `size` = (h, w), never interpolated.

    Without `geometry`, as Caffe's Interp shrink: score position i sits over input pixel
    round(i * (H - 1) / (h - 1)), exactly 8i for the 321 -> 41 and 513 -> 65 grids (training
    uses this). With `geometry` ([2, 2] rows (height, width) of (scale, offset)), over pixel
    round(scale * i + offset), clamped to the image.
    """

    def positions(full, small, axis):
        full, small = tf.cast(full, tf.float32), tf.cast(small, tf.float32)
        if geometry is None:
            step = (full - 1.0) / tf.maximum(small - 1.0, 1.0)
            where = tf.round(tf.range(small) * step)
        else:
            scale, offset = geometry[axis][0], geometry[axis][1]
            where = tf.round(tf.range(small) * scale + offset)
        return tf.cast(tf.clip_by_value(where, 0.0, full - 1.0), tf.int32)

    shape = tf.shape(labels)
    labels = tf.gather(labels, positions(shape[1], size[0], 0), axis=1)
    return tf.gather(labels, positions(shape[2], size[1], 1), axis=2)


def _sample_axis(scores, size, scale, offset, axis):
    """Linear interpolation of `scores` along `axis` at the grid coordinates of `size`
    pixels, (pixel - offset) / scale, clamped to the grid's first and last position."""
    cells = tf.shape(scores)[axis]
    where = (tf.range(tf.cast(size, tf.float32)) - offset) / scale
    where = tf.clip_by_value(where, 0.0, tf.cast(cells - 1, tf.float32))
    low = tf.cast(tf.floor(where), tf.int32)
    high = tf.minimum(low + 1, cells - 1)
    weight = where - tf.cast(low, tf.float32)
    shape = [1, 1, 1, 1]
    shape[axis] = -1
    weight = tf.reshape(weight, shape)
    return (
        tf.gather(scores, low, axis=axis) * (1.0 - weight)
        + tf.gather(scores, high, axis=axis) * weight
    )


def scores_at_size(
    scores: tf.Tensor,
    height: typing.Any,
    width: typing.Any,
    geometry: typing.Any = DEEPLAB_GEOMETRY,
) -> tf.Tensor:
    """Score-grid scores [B, h, w, C] -> [B, height, width, C] on the image's pixels.

    Each pixel interpolates bilinearly between the score positions around it, placed by
    `geometry` ([2, 2] rows (height, width) of (scale, offset): score i over pixel
    scale * i + offset, from `unravel.geometry.score_geometry`); pixels beyond the outermost
    positions take the nearest. With DeepLab's geometry (the default) this is its protocol
    exactly: x8 bilinear upsampling with aligned corners, cropped back to the image.
    """
    scores = tf.cast(scores, tf.float32)
    geometry = tf.cast(tf.convert_to_tensor(geometry), tf.float32)
    scores = _sample_axis(scores, height, geometry[0, 0], geometry[0, 1], axis=1)
    return _sample_axis(scores, width, geometry[1, 0], geometry[1, 1], axis=2)


def labels_at_size(
    scores: tf.Tensor,
    height: typing.Any,
    width: typing.Any,
    geometry: typing.Any = DEEPLAB_GEOMETRY,
) -> tf.Tensor:
    """Predicted labels int32 [B, height, width] from score-grid scores [B, h, w, C]."""
    full = scores_at_size(scores, height, width, geometry)
    return tf.cast(first_argmax(full, axis=-1), tf.int32)
