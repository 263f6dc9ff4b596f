"""Heat maps from fixation points (CNN-Fixations): outlier removal, point masks, blur.

TensorFlow ops throughout, so the same code serves the Python API and the SavedModel's
`fixations` signature. docs/method.md ("Heat maps") states the rule and our choices.
"""

import math
import typing

import tensorflow as tf

from tf_segunravel.unravel.settings import FixationSettings

if typing.TYPE_CHECKING:
    from tf_segunravel.unravel.tracer import UnravelResult

# A point is an outlier unless more than this share of its class's points are near it
# (CNN-Fixations' rule)...
MIN_NEIGHBOUR_SHARE = 0.05
# ...or, where a class's points are spread so widely that no window holds that share, more
# than this share of the densest window's count (docs/method.md, "Heat maps").
DENSEST_SHARE = 0.5


def inlier_mask(
    points: tf.Tensor,
    height: int,
    width: int,
    radius: float,
    min_share: float = MIN_NEIGHBOUR_SHARE,
    densest_share: float = DENSEST_SHARE,
) -> tf.Tensor:
    """bool [N]: points (b, class, y, x) whose window holds more than
    min(`min_share` x their (image, class) group's size, `densest_share` x the group's
    densest window), windows of half-side `radius * image diagonal`, the point included.

    The first term is CNN-Fixations' rule. It alone would drop every point of a class spread
    over more than about 1 / `min_share` windows (a stride-1 network's large segment): the
    second term keeps the densest parts of such a class instead. Where the densest window
    holds at least `min_share / densest_share` of the group (10%), the first term is the
    smaller and the rule is the original's exactly; a group with points always keeps its
    densest window's points.

    "Within" is the square window of that half-side (Chebyshev distance; our choice). Each
    group's points are counted into a count image, and a summed-area table answers every
    point's window in four lookups: memory grows with groups x H x W, never with N x N (a
    K > 1 or mass unravel of a batch has tens of thousands of points).
    """
    points = tf.cast(points, tf.int32)
    diagonal = tf.sqrt(tf.cast(height * height + width * width, tf.float32))
    reach = tf.cast(tf.floor(radius * diagonal), tf.int32)
    group_ids, group = tf.unique(points[:, 0] * (tf.reduce_max(points[:, 1]) + 1) + points[:, 1])
    groups = tf.size(group_ids)
    ones = tf.ones_like(group, tf.int32)
    counts = tf.scatter_nd(
        tf.stack([group, points[:, 2], points[:, 3]], axis=1), ones, [groups, height, width]
    )
    table = tf.pad(tf.cumsum(tf.cumsum(counts, axis=1), axis=2), [[0, 0], [1, 0], [1, 0]])
    top = tf.maximum(points[:, 2] - reach, 0)
    bottom = tf.minimum(points[:, 2] + reach, height - 1) + 1
    left = tf.maximum(points[:, 3] - reach, 0)
    right = tf.minimum(points[:, 3] + reach, width - 1) + 1

    def at(ys, xs):
        return tf.gather_nd(table, tf.stack([group, ys, xs], axis=1))

    neighbours = at(bottom, right) - at(top, right) - at(bottom, left) + at(top, left)
    group_size = tf.gather(tf.math.unsorted_segment_sum(ones, group, groups), group)
    densest = tf.gather(tf.math.unsorted_segment_max(neighbours, group, groups), group)
    threshold = tf.minimum(
        min_share * tf.cast(group_size, tf.float32), densest_share * tf.cast(densest, tf.float32)
    )
    return tf.cast(neighbours, tf.float32) > threshold


def gaussian_blur(maps: tf.Tensor, sigma: float) -> tf.Tensor:
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
    points: typing.Any,
    counts: typing.Any,
    *,
    batch: int,
    num_classes: int,
    height: typing.Any,
    width: typing.Any,
    sigma: float = 20.0,
    outlier_radius: float = 0.02,
    weighted: bool = True,
) -> tf.Tensor:
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


def fixation_maps(
    result: "UnravelResult", height: typing.Any, width: typing.Any, settings: FixationSettings
) -> tf.Tensor:
    """The heat maps of an `UnravelResult` (tensors or arrays) at image size: float32
    [B, classes, height, width], drawn as `settings` (a `FixationSettings`) says."""
    seeds = tf.shape(result.seeds)
    return heatmaps(
        result.points,
        result.counts,
        batch=seeds[0],
        num_classes=seeds[1],
        height=height,
        width=width,
        sigma=settings.sigma,
        outlier_radius=settings.outlier_radius,
        weighted=settings.weighted,
    )
