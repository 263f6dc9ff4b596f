"""Explanation baselines beside the fixations: gradient maps from tf-keras-vis (the
`[baselines]` extra) and three trivial references every metric must beat.

    maps = explain("gradcam", graph, image, classes, layer="fc6")  # [len(classes), H, W]

Every method answers the same question for a segmentation network, as Seg-Grad-CAM poses
it: what drove class c's mean logit over its predicted region R (on the score grid, from
the clean image)? Maps are at the image's own size, non-negative, each scaled to [0, 1].

- `gradcam` (compiled here for every class in one pass, held to tf-keras-vis' Gradcam by the
  tests) and `gradcam_plus_plus` (tf-keras-vis), at a feature layer (`layer=`; by default
  the last convolution with a kernel wider than 1 x 1 that the scores depend on: LargeFOV's
  fc6, since at fc7 Grad-CAM of a 1 x 1 classifier is the class's own score map);
- `scorecam` (compiled here; no gradients: one forward pass per channel of the layer, the
  input masked by that channel), at the same layer;
- `saliency` (|gradient|, max over channels) and `smoothgrad` (its mean over 20 noisy
  copies, noise 0.2 of the input range), tf-keras-vis;
- `gradient_x_input`: |gradient x input| summed over channels, by hand (tf-keras-vis has no
  such method);
- `random` (a uniform map, fixed by the seed and the class), `segment_prior` (the
  predicted segment, blurred), `distance_prior` (1 / (1 + Chebyshev distance to the
  segment in px)).
"""

import typing

import keras
import numpy as np
import tensorflow as tf

from tf_segunravel.errors import InputError
from tf_segunravel.unravel.maps import gaussian_blur

if typing.TYPE_CHECKING:
    from tf_segunravel.unravel.graph import ModelGraph

GRADIENT_METHODS = (
    "gradcam",
    "gradcam_plus_plus",
    "scorecam",
    "saliency",
    "smoothgrad",
    "gradient_x_input",
)
REFERENCES = ("random", "segment_prior", "distance_prior")
METHODS = GRADIENT_METHODS + REFERENCES
# The tf-keras-vis methods; Grad-CAM (compiled here) and gradient x input need only TensorFlow.
NEEDS_EXTRA = ("gradcam_plus_plus", "saliency", "smoothgrad")
INSTALL_HINT = 'needs the baselines extra: pip install -e ".[baselines]"'
SEGMENT_SIGMA = 6.0
SMOOTH_SAMPLES = 20


def available() -> bool:
    try:
        import tf_keras_vis  # noqa: F401
    except ImportError:
        return False
    return True


def check_methods(methods: typing.Iterable[str], flag: str = "methods") -> list[str]:
    """The methods, checked: an unknown one, or a tf-keras-vis one without the extra, is an
    InputError naming it (and `flag`, the option that listed them)."""
    methods = list(methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise InputError(f"{flag}: unknown {unknown}; choose from {list(METHODS)}")
    if any(m in NEEDS_EXTRA for m in methods) and not available():
        raise InputError(
            f"{flag}: {', '.join(m for m in methods if m in NEEDS_EXTRA)} {INSTALL_HINT}"
        )
    return methods


def logits_model(graph: "ModelGraph") -> keras.Model:
    """A Keras model from the same inputs to the logits the unravel starts from (a final
    sigmoid or softmax left out), for gradients."""
    layer = graph.score_step.layer
    if graph.activation_inside:  # the score layer's own activation: a linear twin
        clone = keras.models.clone_model(graph.model)
        clone.set_weights(graph.model.get_weights())
        clone.get_layer(layer.name).activation = keras.activations.linear
        return keras.Model(clone.inputs, clone.get_layer(layer.name).output)
    try:
        return keras.Model(graph.model.inputs, layer.output)
    except ValueError as e:  # a score layer inside a nested model
        raise InputError(
            f"{layer.name}: the score layer must be a layer of the model itself for gradients"
        ) from e


def default_layer(graph: "ModelGraph") -> str:
    """The last Conv2D with a kernel wider than 1 x 1 among the layers the scores depend on."""
    for step in reversed(graph.steps):
        layer = step.layer
        if isinstance(layer, keras.layers.Conv2D) and max(layer.kernel_size) > 1:
            return layer.name
    raise InputError("gradcam: the model has no convolution wider than 1 x 1; pass a layer")


def _normalise(maps):
    maps = np.clip(np.asarray(maps, np.float32), 0, None)
    peak = maps.reshape(len(maps), -1).max(axis=1).reshape(-1, 1, 1)
    return np.divide(maps, peak, out=np.zeros_like(maps), where=peak > 0)


def _to_image(maps, height, width):
    maps = tf.convert_to_tensor(maps, tf.float32)[..., None]
    return tf.image.resize(maps, (height, width), method="bilinear")[..., 0].numpy()


def _region_scores(graph, classes, grid_labels):
    """tf-keras-vis scores: per class, the mean logit over its predicted region."""

    def make(cls):
        region = tf.constant(grid_labels == cls, tf.float32)[None]

        def score(output):
            logits = graph.class_scores(output)[..., cls]
            return tf.reduce_sum(logits * region, axis=[1, 2]) / tf.reduce_sum(region)

        return score

    return [make(c) for c in classes]


def predicted_regions(graph: "ModelGraph", image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labels on the score grid [h, w], labels at image size [H, W]): the network's own
    prediction, from one forward pass."""
    from tf_segunravel.grids import scores_at_size
    from tf_segunravel.unravel import ScoreMap

    scores, geometry = ScoreMap(graph)(tf.constant(image[None], tf.float32))
    full = scores_at_size(scores, image.shape[0], image.shape[1], geometry)
    return np.argmax(scores.numpy()[0], axis=-1), np.argmax(full.numpy()[0], axis=-1)


def explain(
    method: str,
    graph: "ModelGraph",
    image: np.ndarray,
    classes: typing.Sequence[int],
    *,
    layer: str | None = None,
    seed: int = 0,
    regions: tuple | None = None,
    reference: bool = False,
) -> np.ndarray:
    """float32 [len(classes), H, W]: `method`'s map of each class for one image [H, W, 3]
    (RGB 0..255), `graph` a `unravel.graph.ModelGraph` (its input settings apply).

    Grad-CAM and Score-CAM run compiled for every class at once (`compiled_gradcam`,
    `compiled_scorecam`); `reference` runs their references instead (tf-keras-vis' Gradcam,
    one class at a time; `scorecam_reference`'s loops), which the tests compare them with.

    `regions` = (labels on the score grid [h, w], labels at image size [H, W]) fixes the
    classes' regions (the randomisation check keeps the clean network's); by default they
    are the network's own prediction."""
    check_methods([method])
    height, width = image.shape[:2]
    batch = tf.constant(image[None], tf.float32)
    grid_labels, labels = regions if regions is not None else predicted_regions(graph, image)
    classes = [int(c) for c in classes]
    if method == "random":
        # One stream per (seed, class): a class's map does not depend on which other
        # classes are asked for, or in what order (tests/test_methods.py).
        return np.stack(
            [np.random.default_rng([seed, c]).random((height, width)) for c in classes]
        ).astype(np.float32)
    if method in ("segment_prior", "distance_prior"):
        masks = np.stack([labels == c for c in classes]).astype(np.float32)
        if method == "segment_prior":
            return _normalise(gaussian_blur(tf.constant(masks), SEGMENT_SIGMA).numpy())
        return _normalise(np.stack([1 / (1 + _distance(mask)) for mask in masks]))
    fed = graph.feed(batch)  # the model's own input: resized, input settings applied
    if method == "scorecam" or (method == "gradcam" and not reference):
        name = layer or default_layer(graph)
        regions_grid = np.stack([grid_labels == c for c in classes]).astype(np.float32)
        wanted = (fed, tf.constant(classes, tf.int32), tf.constant(regions_grid))
        if method == "gradcam":
            maps = compiled_gradcam(graph, name)(*wanted).numpy()
        elif reference:
            maps = scorecam_reference(graph, fed, classes, regions_grid, name)
        else:
            maps = compiled_scorecam(graph, name)(*wanted).numpy()
        if maps.shape[1:] != (height, width):
            maps = _to_image(maps, height, width)
        return _normalise(maps)
    model = logits_model(graph)
    scores_per_class = _region_scores(graph, classes, grid_labels)
    maps = np.stack(
        [_gradient_map(method, model, graph, fed, score, layer, seed) for score in scores_per_class]
    )
    if maps.shape[1:] != (height, width):
        maps = _to_image(maps, height, width)
    return _normalise(maps)


def compiled_gradcam(graph: "ModelGraph", layer: str) -> typing.Callable:
    """Grad-CAM of `graph` at `layer` as one compiled function for every class at once:
    `cams(fed [1, H, W, 3], classes int32 [K], regions float32 [K, h, w])` -> [K, H, W] at the
    model input's size, unnormalised. The image is repeated K times in the batch, item k
    scored by class k's mean logit over its region, so one backward pass gives every class's
    gradient. Its arithmetic is tf-keras-vis's Gradcam (the reference the tests hold it to):
    weights are the gradient's spatial mean, the map their ReLU'd sum over channels, resized
    with corners aligned as scipy's order-1 zoom does. Made once per layer and kept with the
    graph (`ModelGraph.baselines`), so it is traced once."""
    key = ("compiled_gradcam", layer)
    if key in graph.baselines:
        return graph.baselines[key]
    model, features = _feature_model(graph, layer)
    inner = keras.Model(model.inputs, [features.output, model.output])

    @tf.function(reduce_retracing=True)
    def cams(fed, classes, regions):
        batch = tf.repeat(fed, tf.shape(classes)[0], axis=0)
        with tf.GradientTape() as tape:
            maps, output = inner(batch, training=False)
            logits = tf.gather(graph.class_scores(output), classes, axis=-1, batch_dims=1)
            # An empty region scores 0, so its class's map is 0 (tf-keras-vis' would be NaN).
            scores = tf.math.divide_no_nan(
                tf.reduce_sum(logits * regions, axis=[1, 2]), tf.reduce_sum(regions, axis=[1, 2])
            )
        gradients = tape.gradient(scores, maps)  # item k's gradient is its own score's
        weights = tf.reduce_mean(gradients, axis=[1, 2], keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(maps * weights, axis=-1))
        # TensorFlow 1's aligned-corner bilinear is scipy's order-1 zoom, and takes the
        # input's size at run time (Resize2D needs it when built).
        size = tf.shape(fed)[1:3]
        return tf.compat.v1.image.resize_bilinear(cam[..., None], size, align_corners=True)[..., 0]

    graph.baselines[key] = cams
    return cams


def _feature_model(graph: "ModelGraph", layer: str) -> tuple[keras.Model, keras.Model]:
    """(the logits model, a model from the same input to `layer`'s map), or an InputError."""
    model = logits_model(graph)
    try:
        features = model.get_layer(layer).output
    except ValueError as e:
        raise InputError(f"gradcam_layer={layer}: no such layer in {graph.model.name}") from e
    if len(features.shape) != 4:
        raise InputError(f"gradcam_layer={layer}: not a feature map [B, h, w, C]")
    return model, keras.Model(model.inputs, features)


SCORECAM_BATCH = 16  # masked images per forward pass
# What Score-CAM's masks may hold: one float32 mask per channel at the input's size.
SCORECAM_MAX_BYTES = 2**30


def _check_scorecam_memory(graph, layer, channels, height, width):
    """Refuses a layer whose Score-CAM masks (channels x height x width float32) would pass
    SCORECAM_MAX_BYTES, naming the layer, its channels and the layers that fit."""
    needed = channels * height * width * 4
    if needed <= SCORECAM_MAX_BYTES:
        return
    most = SCORECAM_MAX_BYTES // (height * width * 4)
    fits = [
        step.layer.name
        for step in reversed(graph.steps)
        if isinstance(step.layer, keras.layers.Conv2D) and 0 < step.layer.filters <= most
    ][:3]
    instead = f" (here: {', '.join(fits)})" if fits else ""
    raise InputError(
        f"gradcam_layer={layer}: Score-CAM holds one mask per channel, {channels} of "
        f"{height} x {width} ({needed / 2**30:.1f} GiB, over its {SCORECAM_MAX_BYTES / 2**30:g} "
        f"GiB); pass a layer with at most {most} channels{instead}"
    )


def compiled_scorecam(graph: "ModelGraph", layer: str) -> typing.Callable:
    """Score-CAM of `graph` at `layer`, every class from the same masked images:
    `cams(fed [1, H, W, 3], classes int32 [K], regions float32 [K, h, w])` -> [K, H, W].

    Each channel k of the layer's map, resized to the input with corners aligned and scaled
    to [0, 1], masks the input; class c's weight for k is its mean probability (softmax over
    the classes) over its region in the masked image's prediction; the map is the ReLU of
    the weighted sum of the channels, resized as Grad-CAM's. tf-keras-vis' Scorecam scores
    classifiers only (it reshapes the prediction to [channels, samples, logits]), so the
    tests hold this one to a naive loop over channels and classes (`scorecam_reference`).
    One forward pass per channel for all classes, SCORECAM_BATCH at a time."""
    key = ("compiled_scorecam", layer)
    if key in graph.baselines:
        return graph.baselines[key]
    model, features = _feature_model(graph, layer)

    @tf.function(reduce_retracing=True)
    def masks_of(fed):
        maps = features(fed, training=False)  # [1, h, w, C]
        size = tf.shape(fed)[1:3]
        up = tf.compat.v1.image.resize_bilinear(maps, size, align_corners=True)[0]
        low = tf.reduce_min(up, axis=[0, 1], keepdims=True)
        high = tf.reduce_max(up, axis=[0, 1], keepdims=True)
        normalised = (up - low) / (high - low + keras.config.epsilon())  # [H, W, C]
        return maps[0], tf.transpose(normalised, [2, 0, 1])  # [h, w, C], [C, H, W]

    @tf.function(reduce_retracing=True)
    def weights_of(fed, masks, classes, regions):
        probabilities = tf.nn.softmax(graph.class_scores(model(fed * masks[..., None])), -1)
        chosen = tf.gather(probabilities, classes, axis=-1)  # [M, h, w, K]
        area = tf.reduce_sum(regions, axis=[1, 2])  # [K]
        inside = tf.einsum("mhwk,khw->mk", chosen, regions)
        return tf.math.divide_no_nan(inside, area[None, :])  # [M, K]

    def cams(fed, classes, regions):
        # Before any pass: the masks are made at once, one per channel.
        channels = int(features.output.shape[-1])
        _check_scorecam_memory(graph, layer, channels, int(fed.shape[1]), int(fed.shape[2]))
        maps, masks = masks_of(fed)
        weights = tf.concat(
            [
                weights_of(fed, masks[start : start + SCORECAM_BATCH], classes, regions)
                for start in range(0, int(masks.shape[0]), SCORECAM_BATCH)
            ],
            axis=0,
        )  # [C, K]
        cam = tf.nn.relu(tf.einsum("hwc,ck->khw", maps, weights))
        size = tf.shape(fed)[1:3]
        return tf.compat.v1.image.resize_bilinear(cam[..., None], size, align_corners=True)[..., 0]

    graph.baselines[key] = cams
    return cams


def scorecam_reference(
    graph: "ModelGraph",
    fed: tf.Tensor,
    classes: typing.Sequence[int],
    regions: np.ndarray,
    layer: str,
) -> np.ndarray:
    """Score-CAM as `compiled_scorecam` defines it, written as plain loops over channels and
    classes with numpy and scipy (its independent check): [K, H, W], unnormalised."""
    from scipy.ndimage import zoom

    model, features = _feature_model(graph, layer)
    fed = np.asarray(fed, np.float32)
    maps = np.asarray(features(fed))[0].astype(np.float64)  # [h, w, C]
    height, width = fed.shape[1:3]
    factor = (height / maps.shape[0], width / maps.shape[1])
    out = []
    for cls, region in zip(classes, regions, strict=True):
        total = np.zeros(maps.shape[:2])
        for k in range(maps.shape[-1]):
            mask = zoom(maps[..., k], factor, order=1, mode="nearest")
            mask = (mask - mask.min()) / (mask.max() - mask.min() + keras.config.epsilon())
            logits = graph.class_scores(model(fed * mask[None, ..., None].astype(np.float32)))
            probability = np.asarray(tf.nn.softmax(logits, -1))[0, ..., cls]
            weight = (probability * region).sum() / region.sum() if region.sum() else 0.0
            total += weight * maps[..., k]
        cam = np.maximum(total, 0)
        out.append(zoom(cam, (height / cam.shape[0], width / cam.shape[1]), order=1))
    return np.stack(out).astype(np.float32)


def _gradient_map(method, model, graph, fed, score, layer, seed):
    if method == "gradient_x_input":
        with tf.GradientTape() as tape:
            tape.watch(fed)
            value = score(model(fed, training=False))
        gradient = tape.gradient(value, fed)
        return np.abs(tf.reduce_sum(gradient * fed, axis=-1).numpy()[0])
    if method in ("gradcam", "gradcam_plus_plus"):
        from tf_keras_vis.gradcam import Gradcam
        from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus

        cls = Gradcam if method == "gradcam" else GradcamPlusPlus
        name = layer or default_layer(graph)
        try:
            model.get_layer(name)
        except ValueError as e:
            raise InputError(f"gradcam_layer={name}: no such layer in {graph.model.name}") from e
        if len(model.get_layer(name).output.shape) != 4:
            raise InputError(f"gradcam_layer={name}: not a feature map [B, h, w, C]")
        cam = cls(model, clone=False)(
            score,
            fed.numpy(),
            penultimate_layer=name,
            seek_penultimate_conv_layer=False,
            normalize_cam=False,
        )
        return np.asarray(cam)[0]
    from tf_keras_vis.saliency import Saliency

    samples = SMOOTH_SAMPLES if method == "smoothgrad" else 0
    # tf-keras-vis draws SmoothGrad's noise from numpy's global generator: seed it for this
    # call and restore it after. Not keras.utils.set_random_seed: resetting TensorFlow's
    # global seed changes tf.function's trace key, and every compiled unravel traced again
    # on its next call (seconds per image).
    state = np.random.get_state()  # noqa: NPY002 (the legacy generator is what it reads)
    np.random.seed(seed)  # noqa: NPY002
    try:
        saliency = Saliency(model, clone=False)(
            score, fed.numpy(), smooth_samples=samples, normalize_map=False
        )
    finally:
        np.random.set_state(state)  # noqa: NPY002
    return np.asarray(saliency)[0]


def _distance(mask):
    """Chebyshev distance in px from each pixel to the nearest pixel of `mask` (inf if none):
    grown one 3 x 3 max-pool step at a time, so TensorFlow alone computes it."""
    if not mask.any():
        return np.full(mask.shape, np.inf, np.float32)
    reached = tf.constant(mask, tf.float32)[None, ..., None]
    distance = np.where(mask, 0, np.inf).astype(np.float32)
    step = 0
    while np.isinf(distance).any():
        step += 1
        reached = tf.nn.max_pool2d(reached, 3, 1, "SAME")
        newly = (reached.numpy()[0, ..., 0] > 0) & np.isinf(distance)
        distance[newly] = step
    return distance
