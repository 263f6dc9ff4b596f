"""Heat maps from fixation points (CNN-Fixations): outlier removal, point masks, blur.

TensorFlow ops throughout, so the same code serves the Python API and the SavedModel's
`fixations` signature. docs/method.md ("Heat maps") states the rule and our choices.
"""

import math
import typing

import tensorflow as tf

from tf_segunravel.errors import InputError
from tf_segunravel.grids import labels_at_size
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


def gaussian_kernel(sigma: typing.Any) -> tf.Tensor:
    """The blur's taps, float32 [2 r + 1] summing to 1, r = ceil(3 sigma); sigma a number
    or a float32 scalar tensor (the score grid's stride times `sigma`, inside a graph)."""
    if isinstance(sigma, (int, float)):
        radius = tf.constant(math.ceil(3 * sigma))
    else:
        sigma = tf.maximum(tf.cast(sigma, tf.float32), 1e-6)  # 0 would make 0 / 0 at the centre
        radius = tf.cast(tf.math.ceil(3.0 * sigma), tf.int32)
    taps = tf.cast(tf.range(-radius, radius + 1), tf.float32)
    kernel = tf.exp(-0.5 * tf.square(taps / sigma))
    return kernel / tf.reduce_sum(kernel)


def _blur_matrix(sigma: typing.Any, size: typing.Any) -> tf.Tensor:
    """[size, size]: row i holds the taps centred on i, cut at the border (symmetric)."""
    kernel = gaussian_kernel(sigma)
    radius = (tf.shape(kernel)[0] - 1) // 2
    index = tf.range(size)
    offset = index[None, :] - index[:, None]
    taps = tf.gather(kernel, tf.clip_by_value(offset + radius, 0, 2 * radius))
    return tf.where(tf.abs(offset) <= radius, taps, 0.0)


def gaussian_blur(maps: typing.Any, sigma: typing.Any) -> tf.Tensor:
    """Separable Gaussian blur of [M, H, W] maps (zeros beyond the border); sigma in px, one
    value or (along H, along W), numbers or float32 scalar tensors (a number <= 0: no blur).

    Written as two matrix products, B_H X B_W with B the banded matrix of the taps, rather
    than as two one-channel convolutions: the same sums, but a one-channel convolution of
    121 taps runs at a fraction of the matrix unit's speed (at 321 x 321 the blur was most of
    a LargeFOV fixation map's cost; docs/benchmarks.md). tests/unravel/test_maps.py holds it
    to the convolutions."""
    maps = tf.convert_to_tensor(maps, tf.float32)
    sigma_y, sigma_x = sigma if isinstance(sigma, (tuple, list)) else (sigma, sigma)
    shape = tf.shape(maps)
    if not (isinstance(sigma_y, (int, float)) and sigma_y <= 0):
        maps = tf.linalg.matmul(_blur_matrix(sigma_y, shape[1]), maps)
    if not (isinstance(sigma_x, (int, float)) and sigma_x <= 0):
        maps = tf.linalg.matmul(maps, _blur_matrix(sigma_x, shape[2]))
    return maps


def _blur_drawn(flat: tf.Tensor, sigma: typing.Any) -> tf.Tensor:
    """`gaussian_blur` of [M, H, W] maps, only those with a positive value blurred (a blurred
    empty map is empty, and most of a segmentation's classes are absent from any one
    image), each then scaled to a peak of 1."""
    present = tf.cast(tf.where(tf.reduce_any(flat > 0, axis=[1, 2])), tf.int32)
    drawn = gaussian_blur(tf.gather_nd(flat, present), sigma)
    blurred = tf.scatter_nd(present, drawn, tf.shape(flat))
    return tf.math.divide_no_nan(blurred, tf.reduce_max(blurred, axis=[1, 2], keepdims=True))


# `ranking`'s tie-break: the weight of the density (or the segment) under the blurred points,
# and of the density under the segment. Small enough to reorder only pixels whose blurred
# points differ by less than this share of their peak; large enough that float32 near 1
# (a step of 6e-8) keeps the second term's order, and the third's under the second.
TIE_BREAK = 1e-3


def heatmaps(
    points: typing.Any,
    counts: typing.Any,
    *,
    batch: int,
    num_classes: int,
    height: typing.Any,
    width: typing.Any,
    sigma: typing.Any = 20.0,
    outlier_radius: float = 0.02,
    weighted: bool = True,
    ranking: str = "points",
    labels: typing.Any = None,
) -> tf.Tensor:
    """float32 [batch, num_classes, height, width] heat maps, each normalised to [0, 1].

    Args:
      points: int [N, 4] rows (image, class, y, x) in pixel coordinates.
      counts: int [N], paths through each point, or float path weights.
      sigma: Gaussian blur in pixels (0: the bare point mask), or (along y, along x).
      outlier_radius: fraction of the image diagonal for outlier removal (0: keep all).
      weighted: point masks weighted by count (True) or plain (False).
      ranking: "points" (pixels no blurred point reaches tie at 0), "density" (ties broken
        by the points blurred at half the image's longer side, so every pixel ranks by its
        nearness to the class's points), "segment" (by the class's segment in `labels`,
        blurred at `sigma`, then by the density). docs/method.md, "Heat maps".
      labels: int [batch, height, width], each pixel's class; needed by "segment".
    """
    points = tf.cast(points, tf.int32)
    counts = tf.convert_to_tensor(counts)
    if weighted and counts.dtype.is_floating:
        # Path weights can lie below float32's range (a product of a share per layer): each
        # map's scaled to its largest in float64 first, as the map is scaled in the end.
        values = tf.cast(_per_map_scaled(points, counts, batch, num_classes), tf.float32)
    elif weighted:
        values = tf.cast(counts, tf.float32)
    else:
        values = tf.ones(tf.shape(points)[:1])
    if outlier_radius > 0:
        keep = inlier_mask(points, height, width, outlier_radius)
        points, values = tf.boolean_mask(points, keep), tf.boolean_mask(values, keep)
    shape = tf.stack([batch, num_classes, height, width])
    flat = tf.reshape(tf.scatter_nd(points, values, shape), tf.stack([-1, height, width]))
    maps = _blur_drawn(flat, sigma)
    if ranking != "points":
        if ranking not in ("density", "segment"):
            raise ValueError(f"ranking={ranking!r}: choose from points, density, segment")
        longer = tf.cast(tf.maximum(height, width), tf.float32)
        rest = _blur_drawn(flat, longer / 2.0)  # 3 sigma reaches every pixel from any point
        if ranking == "segment":
            if labels is None:
                raise ValueError("ranking='segment' needs each pixel's labels")
            classes = tf.range(num_classes, dtype=tf.int32)[None, :, None, None]
            region = tf.cast(tf.cast(labels, tf.int32)[:, None] == classes, tf.float32)
            region = tf.reshape(region, tf.stack([-1, height, width]))
            rest = _blur_drawn(region, sigma) + TIE_BREAK * rest
        maps = maps + TIE_BREAK * rest
        maps = tf.math.divide_no_nan(maps, tf.reduce_max(maps, axis=[1, 2], keepdims=True))
    return tf.reshape(maps, shape)


def _per_map_scaled(points, weights, batch, num_classes):
    """float64 `weights` [N] divided by the largest of their (image, class) map's."""
    weights = tf.cast(weights, tf.float64)
    which = points[:, 0] * tf.cast(num_classes, tf.int32) + points[:, 1]
    largest = tf.math.unsorted_segment_max(weights, which, batch * num_classes)
    return tf.math.divide_no_nan(weights, tf.gather(largest, which))


def heatmap_sigma(
    settings: FixationSettings, geometry: typing.Any, height: typing.Any, width: typing.Any
) -> typing.Any:
    """`settings.sigma` in pixels along (y, x): as given, or (`sigma_unit="score_cells"`)
    times the score grid's stride on the image from `geometry` ([2, 2] rows (y, x) of
    (scale, offset)); numbers where the geometry is known now, else scalar tensors. Refuses,
    naming the setting, a blur wider than a `height` x `width` image (sigma above its longer
    side: every map would be nearly flat) where the sizes are known now, and as a graph
    assertion where they are known only when the graph runs; and score cells without a
    geometry (a SavedModel's fixations carry none)."""
    if settings.sigma_unit == "pixels":
        sigma = (settings.sigma, settings.sigma)
    elif geometry is None:
        raise InputError(
            f"sigma_unit={settings.sigma_unit}: this model gives no score grid geometry (a "
            f"SavedModel); pass sigma_unit=pixels, or the Keras, ONNX or TFLite model"
        )
    elif (known := tf.get_static_value(geometry)) is not None:
        sigma = (settings.sigma * abs(float(known[0][0])), settings.sigma * abs(float(known[1][0])))
    else:
        stride = tf.abs(tf.cast(geometry, tf.float32)[:, 0])
        sigma = (settings.sigma * stride[0], settings.sigma * stride[1])
    _check_kernel(settings, sigma, height, width)
    return sigma


def _check_kernel(settings, sigma, height, width):
    unit = "px" if settings.sigma_unit == "pixels" else "score cells"
    known = [tf.get_static_value(value) for value in (*sigma, height, width)]
    if any(value is None for value in known):
        # The sizes are known only when the graph runs (a SavedModel's signature): the same
        # refusal as an assertion, which fails the call with this message.
        widest = tf.maximum(tf.cast(sigma[0], tf.float32), tf.cast(sigma[1], tf.float32))
        longest = tf.cast(tf.maximum(height, width), tf.float32)
        tf.debugging.assert_less_equal(
            widest,
            longest,
            message=f"sigma={settings.sigma:g} {unit}: the heat-map blur is wider than the "
            "image (sigma above its longer side); export with a smaller sigma",
        )
        return
    widest = max(float(known[0]), float(known[1]))
    rows, columns = int(known[2]), int(known[3])
    if widest > max(rows, columns):
        raise InputError(
            f"sigma={settings.sigma:g} {unit}: a heat-map blur of {widest:g} px is wider "
            f"than the image ({rows} x {columns}); pass a sigma of at most "
            f"{max(rows, columns) * settings.sigma / widest:g}"
        )


def fixation_maps(
    result: "UnravelResult",
    height: typing.Any,
    width: typing.Any,
    settings: FixationSettings,
    labels: typing.Any = None,
) -> tf.Tensor:
    """The heat maps of an `UnravelResult` (tensors or arrays) at image size: float32
    [B, classes, height, width], drawn as `settings` (a `FixationSettings`) says. `labels`
    [B, height, width] are the regions `ranking="segment"` orders by (default: the
    prediction, placed on the image by the result's geometry)."""
    seeds = tf.shape(result.seeds)
    sigma = heatmap_sigma(settings, result.geometry, height, width)
    if settings.ranking == "segment" and labels is None:
        labels = labels_at_size(result.scores, height, width, result.geometry)
    return heatmaps(
        result.points,
        result.counts,
        batch=seeds[0],
        num_classes=seeds[1],
        height=height,
        width=width,
        sigma=sigma,
        outlier_radius=settings.outlier_radius,
        weighted=settings.weighted,
        ranking=settings.ranking,
        labels=labels,
    )
