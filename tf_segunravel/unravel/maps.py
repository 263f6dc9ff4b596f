"""Heat maps from fixation points (CNN-Fixations): outlier removal, point masks, blur.

TensorFlow ops throughout, so the same code serves the Python API and the SavedModel's
`fixations` signature.
"""

import math

import tensorflow as tf

# A point is an outlier unless more than this share of its class's points are near it.
MIN_NEIGHBOUR_SHARE = 0.05


def inlier_mask(points, height, width, radius, min_share=MIN_NEIGHBOUR_SHARE):
    """bool [N]: points (b, class, y, x) with more than `min_share` of their (image, class)
    group within `radius * image diagonal` (the point itself included).

    Pairwise over all N points with a same-group mask: N is at most the number of seeds for
    K = 1 (41 x 41 at 321 px), so the N x N comparison stays small.
    """
    diagonal = tf.sqrt(tf.cast(height * height + width * width, tf.float32))
    reach = tf.square(radius * diagonal)
    group = points[:, 0] * 100003 + points[:, 1]
    same = tf.equal(group[:, None], group[None, :])
    yx = tf.cast(points[:, 2:4], tf.float32)
    squared = tf.reduce_sum(tf.square(yx[:, None, :] - yx[None, :, :]), axis=-1)
    near = tf.logical_and(same, squared <= reach)
    neighbours = tf.reduce_sum(tf.cast(near, tf.float32), axis=1)
    group_size = tf.reduce_sum(tf.cast(same, tf.float32), axis=1)
    return neighbours > min_share * group_size


def gaussian_blur(maps, sigma):
    """Separable Gaussian blur of [M, H, W] maps (zeros beyond the border); sigma in px."""
    if sigma <= 0:
        return maps
    radius = math.ceil(3 * sigma)
    taps = tf.range(-radius, radius + 1, dtype=tf.float32)
    kernel = tf.exp(-0.5 * tf.square(taps / sigma))
    kernel /= tf.reduce_sum(kernel)
    x = maps[..., None]
    x = tf.nn.conv2d(x, tf.reshape(kernel, [-1, 1, 1, 1]), 1, "SAME")
    x = tf.nn.conv2d(x, tf.reshape(kernel, [1, -1, 1, 1]), 1, "SAME")
    return x[..., 0]


def heatmaps(
    points,
    counts,
    batch,
    num_classes,
    height,
    width,
    sigma=20.0,
    outlier_radius=0.02,
    weighted=True,
):
    """float32 [batch, num_classes, height, width] heat maps, each normalised to [0, 1].

    Args:
      points: int [N, 4] rows (image, class, y, x) in pixel coordinates.
      counts: int [N], paths through each point.
      sigma: Gaussian blur in pixels (0: the bare point mask).
      outlier_radius: fraction of the image diagonal for outlier removal (0: keep all).
      weighted: point masks weighted by count (True) or plain (False).
    """
    points = tf.cast(points, tf.int32)
    values = tf.cast(counts, tf.float32) if weighted else tf.ones(tf.shape(points)[:1])
    if outlier_radius > 0:
        keep = inlier_mask(points, height, width, outlier_radius)
        points, values = tf.boolean_mask(points, keep), tf.boolean_mask(values, keep)
    dense = tf.scatter_nd(points, values, tf.stack([batch, num_classes, height, width]))
    flat = tf.reshape(dense, tf.stack([-1, height, width]))
    blurred = tf.reshape(gaussian_blur(flat, sigma), tf.shape(dense))
    peak = tf.reduce_max(blurred, axis=[2, 3], keepdims=True)
    return tf.math.divide_no_nan(blurred, peak)
