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
- `road`: ROAD's remove-least minus remove-most score gap, with noisy linear imputation.
- `energy`: the share of the map's mass inside the ground-truth object of class c.
- `pointing_game`: 1 when the map's maximum lies inside the ground-truth object, else 0
  (tied maxima: the share of them inside).

Written by hand: the explanation libraries (tf-keras-vis, xplique, Quantus) score
classifiers, not a class's mean over a predicted region of a segmentation network.
"""

import typing

import keras
import numpy as np
import tensorflow as tf

if typing.TYPE_CHECKING:
    from tf_segunravel.unravel.geometry import ScoreMap
    from tf_segunravel.unravel.settings import InputSettings

CONTEXT_MARGIN = 3  # px: "context" is farther than this from the region
FILLS = ("mean", "blur")
DOMAINS = ("all", "context")


def region_score(
    score_map: "ScoreMap", images: tf.Tensor, cls: int, region: typing.Any
) -> tf.Tensor:
    """float32 [N]: f for each image of a batch [N, H, W, 3], class `cls`, region bool [H, W]."""
    probabilities = tf.nn.softmax(score_map.compiled_at_image_size(images), axis=-1)[..., cls]
    weights = tf.cast(region, tf.float32)
    return tf.reduce_sum(probabilities * weights, axis=[1, 2]) / tf.reduce_sum(weights)


def context_domain(region: typing.Any, margin: int = CONTEXT_MARGIN) -> tf.Tensor:
    """bool [H, W]: the pixels farther than `margin` px (Chebyshev) from `region`."""
    grown = tf.nn.max_pool2d(
        tf.cast(region, tf.float32)[None, ..., None], 2 * margin + 1, 1, "SAME"
    )[0, ..., 0]
    return grown == 0


def order(saliency: typing.Any, domain: typing.Any, seed: int = 0) -> tf.Tensor:
    """int32 [n]: the flat indices of the `domain` pixels, most relevant first; ties in the map
    go by a fixed random key (`seed`), so no method gains from the raster order."""
    flat = tf.reshape(tf.cast(saliency, tf.float32), [-1])
    inside = tf.cast(tf.where(tf.reshape(domain, [-1]))[:, 0], tf.int32)
    key = tf.random.stateless_uniform(tf.shape(inside), [seed, 0])
    by_key = tf.gather(inside, tf.argsort(key, stable=True))
    return tf.gather(by_key, tf.argsort(-tf.gather(flat, by_key), stable=True))


def filled(image: typing.Any, fill: str = "mean", sigma: float = 5.0) -> tf.Tensor:
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
    score_map: "ScoreMap",
    image: typing.Any,
    cls: int,
    region: typing.Any,
    saliency: typing.Any,
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


def area(values: typing.Sequence[float] | np.ndarray) -> float:
    """The area under a curve sampled at equal steps over [0, 1] (trapezoids)."""
    curve = np.asarray(values, np.float64)
    return float(np.trapezoid(curve, dx=1.0 / (len(curve) - 1)))


def deletion_auc(
    score_map: "ScoreMap",
    image: typing.Any,
    cls: int,
    region: typing.Any,
    saliency: typing.Any,
    **options: typing.Any,
) -> float:
    return area(curve(score_map, image, cls, region, saliency, mode="deletion", **options))


def insertion_auc(
    score_map: "ScoreMap",
    image: typing.Any,
    cls: int,
    region: typing.Any,
    saliency: typing.Any,
    **options: typing.Any,
) -> float:
    return area(curve(score_map, image, cls, region, saliency, mode="insertion", **options))


ROAD_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
ROAD_NOISE = 2.55  # px values (0.01 of the 0..255 range), as ROAD's noisy imputation
ROAD_ITERATIONS = 200


def impute(
    image: typing.Any,
    removed: typing.Any,
    iterations: int = ROAD_ITERATIONS,
    noise: float = ROAD_NOISE,
    seed: int = 0,
) -> tf.Tensor:
    """ROAD's noisy linear imputation: each removed pixel becomes the weighted mean of its 8
    neighbours (1/6 sideways, 1/12 diagonally), the equations of all removed pixels solved
    together (Jacobi iterations from the mean colour), plus Gaussian noise. image [N, H, W,
    3] float; removed bool [N, H, W]."""
    image = tf.cast(image, tf.float32)
    mask = tf.cast(removed, tf.float32)[..., None]
    x = _jacobi(image, mask, tf.constant(iterations))
    jitter = tf.random.stateless_normal(tf.shape(x), [seed, 1], stddev=noise)
    return tf.clip_by_value(x + jitter * mask, 0.0, 255.0)


def _neighbour_sum(x: tf.Tensor) -> tf.Tensor:
    """Each pixel's 8 neighbours weighted 2/12 sideways and 1/12 diagonally, per channel;
    beyond the border there are none (zeros). The 3 x 3 kernel [[1, 2, 1], [2, 0, 2], [1, 2,
    1]] / 12 is the separable [1, 2, 1] x [1, 2, 1] less 4 at the centre: shifted adds that
    XLA fuses into one pass, where a depthwise convolution per iteration was most of the
    main job's faithfulness stage."""
    padded = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])
    rows = padded[:, :-2] + 2 * padded[:, 1:-1] + padded[:, 2:]
    both = rows[:, :, :-2] + 2 * rows[:, :, 1:-1] + rows[:, :, 2:]
    return (both - 4 * x) / 12.0


# XLA compiles the loop once per image shape (about 0.2 s on a 2-core CPU) and runs ROAD's
# 200 iterations about 5x faster than TensorFlow's executor (tests/test_faithfulness.py holds
# it to the depthwise-convolution form).
@tf.function(jit_compile=True, reduce_retracing=True)
def _jacobi(image: tf.Tensor, mask: tf.Tensor, iterations: tf.Tensor) -> tf.Tensor:
    """`impute`'s Jacobi iterations, starting from each image's mean colour."""
    # Divide by the weight of the neighbours inside the image (less at the border).
    scale = mask / _neighbour_sum(tf.ones_like(image))
    keep = image * (1 - mask)
    x = keep + tf.reduce_mean(image, axis=[1, 2], keepdims=True) * mask
    for _ in tf.range(iterations):
        x = keep + _neighbour_sum(x) * scale
    return x


def road(
    score_map: "ScoreMap",
    image: typing.Any,
    cls: int,
    region: typing.Any,
    saliency: typing.Any,
    *,
    fractions: typing.Sequence[float] = ROAD_FRACTIONS,
    seed: int = 0,
    iterations: int = ROAD_ITERATIONS,
) -> float:
    """ROAD (Rong et al. 2022): the mean over `fractions` of f with the least relevant share
    removed minus f with the most relevant share removed, removed pixels filled by noisy
    linear imputation (which, unlike a constant fill, leaks no removal pattern). Higher:
    more faithful; a random map scores about 0."""
    height, width = image.shape[0], image.shape[1]
    ranked = order(saliency, tf.ones([height, width], tf.bool), seed)
    n = height * width
    rank = tf.reshape(tf.scatter_nd(ranked[:, None], tf.range(n), [n]), [height, width])
    counts = tf.constant([round(f * n) for f in fractions], tf.int32)[:, None, None]
    most = rank[None] < counts  # the most relevant share removed
    least = rank[None] >= n - counts
    original = tf.cast(image, tf.float32)[None]
    batch = tf.tile(original, [2 * len(fractions), 1, 1, 1])
    removed = tf.concat([most, least], axis=0)
    scores = region_score(
        score_map, impute(batch, removed, iterations, seed=seed), cls, tf.constant(region)
    ).numpy()
    morf, lerf = scores[: len(fractions)], scores[len(fractions) :]
    return float(np.mean(lerf - morf))


def spearman(a: typing.Any, b: typing.Any) -> float:
    """Spearman's rank correlation of two maps (ties share their mean rank)."""

    def ranks(values):
        values = np.asarray(values, np.float64).ravel()
        _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
        ends = np.cumsum(counts)
        return ((ends - counts + 1 + ends) / 2.0)[inverse]

    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / denominator) if denominator > 0 else 0.0


def randomised_layers(model: keras.Model) -> list[str]:
    """The names of `model`'s layers with weights, from the scores down to the image."""
    return [layer.name for layer in reversed(model.layers) if layer.weights]


def cascade_correlations(
    explain_maps: typing.Callable[[keras.Model, typing.Any], np.ndarray],
    model: keras.Model,
    image: np.ndarray,
    classes: typing.Sequence[int],
    *,
    seed: int = 0,
    layers: typing.Sequence[str] | None = None,
    input: "InputSettings | None" = None,
    output: str | None = None,
    regions: tuple | None = None,
) -> tuple[list[str], np.ndarray]:
    """(layer names, float [steps, len(classes)]): re-initialise the layers with weights from
    the scores downwards, one more at each step (each weight drawn from a normal with the
    clean weight's own std, seeded), and rank-correlate each class's map with the clean
    network's (Adebayo et al. 2018's cascading randomisation).

    `explain_maps(model, regions)` returns [len(classes), H, W] maps for a model, with the
    classes' regions fixed to `regions` (the clean network's, so the seeds stay put); `input`
    and `output` read the network as `graph.ModelGraph` does; `regions`, when the caller has
    the clean network's `baselines.predicted_regions` already, saves that pass. A map that
    stays correlated while the weights it claims to explain are destroyed is not explaining
    them."""
    from tf_segunravel.baselines import predicted_regions
    from tf_segunravel.unravel.graph import ModelGraph

    if regions is None:
        graph = ModelGraph(model, input=input, output=output, strict=False)
        regions = predicted_regions(graph, image)
    clean = explain_maps(model, regions)
    randomised = keras.models.clone_model(model)
    randomised.set_weights(model.get_weights())
    names = list(layers or randomised_layers(model))
    table = []
    for step, name in enumerate(names):
        layer = randomised.get_layer(name)
        fresh = []
        for number, weight in enumerate(layer.weights):
            initializer = keras.initializers.RandomNormal(
                stddev=float(np.std(weight.numpy())) or 0.01, seed=seed * 1000 + step * 10 + number
            )
            fresh.append(initializer(weight.shape).numpy())
        layer.set_weights(fresh)
        maps = explain_maps(randomised, regions)
        table.append([spearman(a, b) for a, b in zip(clean, maps, strict=True)])
    return names, np.asarray(table, np.float64).reshape(len(names), len(classes))


def cascading_randomisation(
    explain_maps: typing.Callable[[keras.Model, typing.Any], np.ndarray],
    model: keras.Model,
    image: np.ndarray,
    classes: typing.Sequence[int],
    **options: typing.Any,
) -> list[tuple[str, float]]:
    """[(layer, mean rank correlation over the classes)] at each step of
    `cascade_correlations` (same arguments)."""
    names, table = cascade_correlations(explain_maps, model, image, classes, **options)
    return [(name, float(row.mean())) for name, row in zip(names, table, strict=True)]


def energy(saliency: typing.Any, truth: typing.Any) -> float:
    """The share of the map's (non-negative) mass inside the ground-truth object."""
    saliency = np.clip(np.asarray(saliency, np.float64), 0, None)
    total = saliency.sum()
    return float(saliency[np.asarray(truth, bool)].sum() / total) if total > 0 else 0.0


def pointing_game(saliency: typing.Any, truth: typing.Any) -> float:
    """1.0 when the map's maximum lies inside the object, else 0.0; with tied maxima, the
    share of them inside (so a flat map scores the object's area, not a hit)."""
    saliency = np.asarray(saliency)
    peaks = saliency == saliency.max()
    return float((peaks & np.asarray(truth, bool)).sum() / peaks.sum())


METRICS = (
    "deletion_auc",
    "insertion_auc",
    "context_deletion_auc",
    "context_insertion_auc",
    "road",
    "energy",
    "pointing_game",
    "randomisation_rank_correlation",
    "seconds_per_image",
)
PER_IMAGE = ("seconds_per_image",)  # one value per image, not per (image, class)


BOOTSTRAP_SAMPLES = 2000


def bootstrap(
    values: typing.Iterable[float | None], seed: int = 0, samples: int = BOOTSTRAP_SAMPLES
) -> dict:
    """{mean, low, high}: the mean and a 95% percentile-bootstrap interval (fixed seed)."""
    values = np.asarray([v for v in values if v is not None], np.float64)
    if len(values) == 0:
        return {"mean": None, "low": None, "high": None, "n": 0}
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (samples, len(values)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"mean": float(values.mean()), "low": float(low), "high": float(high), "n": len(values)}


# Whether a larger value of each metric is better, for reading a difference.
HIGHER_IS_BETTER = {
    "deletion_auc": False,
    "insertion_auc": True,
    "context_deletion_auc": False,
    "context_insertion_auc": True,
    "road": True,
    "energy": True,
    "pointing_game": True,
    "randomisation_rank_correlation": False,
    "seconds_per_image": False,
}


def over_seeds(summaries: list[dict], method: str = "fixations") -> dict[str, dict[str, dict]]:
    """{baseline: {metric: t interval}} of `method` minus each other method, one value per
    seed: the difference of the two methods' means in that seed's `faithfulness.json`
    summary (every method is scored on the same pairs, so it is the mean paired difference).
    With `stats.verdict` each interval says whether `method` is ahead, behind or not
    resolved; `HIGHER_IS_BETTER` says which sign is ahead."""
    from tf_segunravel import stats

    others = [m for m in summaries[0]["methods"] if m != method]
    table: dict[str, dict[str, dict]] = {}
    for other in others:
        table[other] = {}
        for metric in METRICS:
            values = []
            for summary in summaries:
                mine = summary["methods"][method][metric]["mean"]
                theirs = summary["methods"][other][metric]["mean"]
                values.append(None if mine is None or theirs is None else mine - theirs)
            table[other][metric] = stats.mean_interval(values)
    return table


def over_seeds_markdown(
    table: dict[str, dict[str, dict]],
    method: str = "fixations",
    metrics: typing.Sequence[str] = METRICS,
) -> str:
    """The `over_seeds` table: one row per other method, `method` minus it per metric."""
    from tf_segunravel import stats

    rows = []
    for other, row in table.items():
        cells = [other]
        for metric in metrics:
            interval = row[metric]
            verdict = stats.verdict(interval)
            if verdict in ("above 0", "below 0"):
                ahead = (verdict == "above 0") == HIGHER_IS_BETTER[metric]
                verdict += f": {method} {'better' if ahead else 'worse'}"
            cells.append(f"{stats.describe(interval, 3, signed=True)} ({verdict})")
        rows.append(cells)
    lines = stats.markdown_table([f"{method} minus", *metrics], rows)
    return "\n".join(lines) + "\n"
