"""Faithfulness metrics for per-class explanation maps of a segmentation network.

For one image, one class c and its predicted region R (fixed from the clean image), the score
of an altered image x' is f(x') = the mean over R of class c's softmax at image size, placed
with the model's own geometry (`ScoreMap.at_image_size`). Every metric takes a map
[H, W] (higher: more relevant) and returns a number; TensorFlow ops, one batched forward pass
per curve.

- `deletion_auc` / `insertion_auc`: pixels ordered by the map, highest first (ties broken by
  a fixed random key), removed from the image (filled with its mean colour, or a blurred
  copy) or added back to the filled image in `steps` equal steps; the area under f over the
  fraction removed, in [0, 1]. Low deletion and high insertion mean a faithful map.
  `domain="context"` orders and alters only the pixels more than 3 px from R (Chebyshev
  distance), which is what a claim about context needs.
- `energy`: the share of the map's mass inside the ground-truth object of class c.
- `pointing_game`: 1 when the map's maximum lies inside the ground-truth object, else 0
  (tied maxima: the share of them inside).

Written by hand: the explanation libraries (tf-keras-vis, xplique, Quantus) score
classifiers, not a class's mean over a predicted region of a segmentation network.
"""

import typing

import numpy as np
import tensorflow as tf

CONTEXT_MARGIN = 3  # px: "context" is farther than this from the region
FILLS = ("mean", "blur")
DOMAINS = ("all", "context")


def region_score(score_map, images, cls, region):
    """float32 [N]: f for each image of a batch [N, H, W, 3], class `cls`, region bool [H, W]."""
    probabilities = tf.nn.softmax(score_map.at_image_size(images), axis=-1)[..., cls]
    weights = tf.cast(region, tf.float32)
    return tf.reduce_sum(probabilities * weights, axis=[1, 2]) / tf.reduce_sum(weights)


def context_domain(region, margin=CONTEXT_MARGIN):
    """bool [H, W]: the pixels farther than `margin` px (Chebyshev) from `region`."""
    grown = tf.nn.max_pool2d(
        tf.cast(region, tf.float32)[None, ..., None], 2 * margin + 1, 1, "SAME"
    )[0, ..., 0]
    return grown == 0


def order(saliency, domain, seed=0):
    """int32 [n]: the flat indices of the `domain` pixels, most relevant first; ties in the map
    go by a fixed random key (`seed`), so no method gains from the raster order."""
    flat = tf.reshape(tf.cast(saliency, tf.float32), [-1])
    inside = tf.cast(tf.where(tf.reshape(domain, [-1]))[:, 0], tf.int32)
    key = tf.random.stateless_uniform(tf.shape(inside), [seed, 0])
    by_key = tf.gather(inside, tf.argsort(key, stable=True))
    return tf.gather(by_key, tf.argsort(-tf.gather(flat, by_key), stable=True))


def filled(image, fill="mean", sigma=5.0):
    """What a removed pixel becomes: the image's mean colour, or a blurred copy."""
    image = tf.cast(image, tf.float32)
    if fill == "mean":
        return tf.broadcast_to(tf.reduce_mean(image, axis=[0, 1]), tf.shape(image))
    if fill == "blur":
        from tf_segunravel.unravel.maps import gaussian_blur

        channels = tf.transpose(image, [2, 0, 1])
        return tf.transpose(gaussian_blur(channels, sigma), [1, 2, 0])
    raise ValueError(f"fill={fill!r}: choose from {list(FILLS)}")


def _curve(score_map, image, cls, region, saliency, mode, steps, fill, domain, seed, chunk):
    height, width = image.shape[0], image.shape[1]
    allowed = tf.ones([height, width], tf.bool) if domain == "all" else context_domain(region)
    ranked = order(saliency, allowed, seed)
    n = tf.shape(ranked)[0]
    # Step t alters the first round(t n / steps) pixels of the order.
    counts = tf.cast(
        tf.round(tf.range(steps + 1, dtype=tf.float32) * tf.cast(n, tf.float32) / steps), tf.int32
    )
    rank = tf.scatter_nd(ranked[:, None], tf.range(n), [height * width])
    rank = tf.where(
        tf.scatter_nd(ranked[:, None], tf.ones_like(ranked, tf.bool), [height * width]),
        rank,
        tf.fill([height * width], height * width),  # never altered
    )
    rank = tf.reshape(rank, [height, width])
    original = tf.cast(image, tf.float32)
    background = filled(image, fill)
    scores = []
    for start in range(0, steps + 1, chunk):
        altered = rank[None] < counts[start : start + chunk, None, None]  # [k, H, W]
        if mode == "insertion":  # the altered pixels are the ones given back
            altered = ~altered & allowed[None]
        batch = tf.where(altered[..., None], background, original)
        scores.append(region_score(score_map, batch, cls, region))
    return tf.concat(scores, axis=0)


def curve(
    score_map,
    image,
    cls: int,
    region,
    saliency,
    *,
    mode: str = "deletion",
    steps: int = 50,
    fill: str = "mean",
    domain: str = "all",
    seed: int = 0,
    chunk: int = 17,
) -> np.ndarray:
    """float [steps + 1]: f after each step of deleting (or inserting) pixels by the map.

    `score_map` is a `ScoreMap` (input settings and output included); image [H, W, 3] RGB
    0..255; region bool [H, W], class `cls`'s predicted region; saliency [H, W]. Insertion
    starts from the filled image with the `domain`'s pixels filled and adds them back."""
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"mode={mode!r}: choose deletion or insertion")
    if domain not in DOMAINS:
        raise ValueError(f"domain={domain!r}: choose from {list(DOMAINS)}")
    values = _curve(
        score_map,
        image,
        cls,
        tf.convert_to_tensor(region, tf.bool),
        saliency,
        mode,
        steps,
        fill,
        domain,
        seed,
        chunk,
    )
    return values.numpy()


def area(values: typing.Sequence[float]) -> float:
    """The area under a curve sampled at equal steps over [0, 1] (trapezoids)."""
    values = np.asarray(values, np.float64)
    return float(np.trapezoid(values, dx=1.0 / (len(values) - 1)))


def deletion_auc(score_map, image, cls, region, saliency, **options) -> float:
    return area(curve(score_map, image, cls, region, saliency, mode="deletion", **options))


def insertion_auc(score_map, image, cls, region, saliency, **options) -> float:
    return area(curve(score_map, image, cls, region, saliency, mode="insertion", **options))


def energy(saliency, truth) -> float:
    """The share of the map's (non-negative) mass inside the ground-truth object."""
    saliency = np.clip(np.asarray(saliency, np.float64), 0, None)
    total = saliency.sum()
    return float(saliency[np.asarray(truth, bool)].sum() / total) if total > 0 else 0.0


def pointing_game(saliency, truth) -> float:
    """1.0 when the map's maximum lies inside the object, else 0.0; with tied maxima, the
    share of them inside (so a flat map scores the object's area, not a hit)."""
    saliency = np.asarray(saliency)
    peaks = saliency == saliency.max()
    return float((peaks & np.asarray(truth, bool)).sum() / peaks.sum())
