"""Segmentation unravel: from each predicted segment back to the image pixels that drove it.

    unravel = SegUnravel(model, k=1, shift="partial")
    result = unravel(images)                 # uint8/float RGB [B, H, W, 3]
    result.points, result.counts             # [(image, class, y, x)], paths through each

One recorded forward pass (no gradients), then every point of every class of every image
moves through a layer in one vectorised step, from the score layer down to the image, with
identical points merged and their counts added after each layer.
"""

import dataclasses
import re
import typing

import keras
import numpy as np
import tensorflow as tf

from tf_segunravel.data.labels import IGNORE_LABEL
from tf_segunravel.grids import first_argmax, labels_at_size, shrink_labels
from tf_segunravel.unravel import graph
from tf_segunravel.unravel.geometry import image_geometry
from tf_segunravel.unravel.graph import Values
from tf_segunravel.unravel.rules import Moved, Points, kernel_rows, refuse
from tf_segunravel.unravel.rules.base import Size, as_map, concat_points
from tf_segunravel.unravel.rules.convolution import HELD_KERNELS
from tf_segunravel.unravel.settings import RUNNER_UP, FixationSettings, InputSettings


def merge(points: Points, sizes: typing.Sequence[Size], sort: bool = True) -> Points:
    """Merges identical (b, cls, y, x, ch) points, adding counts (or path weights); sorted by
    that key, or with
    `sort=False` in the order of each key's first occurrence.

    `sizes` = (B, classes, H, W, C) bound each field, so the five pack into one int64 key.
    """
    # Written as a few whole-tensor ops (not a loop over the fields): merge runs once per layer
    # and graph building costs per op, so this is a large share of tracing a deep network.
    sizes = tf.cast(tf.stack(sizes), tf.int64)
    strides = tf.math.cumprod(sizes, exclusive=True, reverse=True)  # product of later sizes
    fields = tf.stack([points.b, points.cls, points.y, points.x, points.ch], axis=1)
    key = tf.reduce_sum(tf.cast(fields, tf.int64) * strides, axis=1)
    unique, index = tf.unique(key)
    segments = tf.shape(unique)[0]
    if points.count.dtype.is_floating:  # path weights (`path_weight="contribution"`)
        counts = tf.math.unsorted_segment_sum(points.count, index, segments)
    else:
        counts = _saturating_sum(points.count, index, segments)
    # Each key's fields are read back from its first occurrence (decoding the int64 keys
    # by division cost more, in the walks of dense networks).
    first = tf.math.unsorted_segment_min(tf.range(tf.shape(key)[0]), index, segments)
    if sort:
        order = tf.argsort(unique)
        first, counts = tf.gather(first, order), tf.gather(counts, order)
    b, cls, y, x, ch = tf.unstack(tf.gather(fields, first), axis=1)
    return Points(b, cls, y, x, ch, counts)


MAX_COUNT = np.iinfo(np.int64).max
# Path weights are products of one share per weighing layer: float64, so that fifty layers
# of shares near 0.01 (1e-100) stay far above its smallest normal number (1e-308).
WEIGHT_DTYPE = tf.float64


def carry_weights(
    layer: typing.Any,
    kind: typing.Any,
    weights: tf.Tensor,
    moved: Points,
    channel_scores: tf.Tensor | None,
) -> Points:
    """`path_weight="contribution"` (docs/method.md, "Path weights"): the moved points of a
    rule called with each arriving point's index in `count` get their parent's weight
    (`weights` [N]) times, where the rule chose channels by `channel_scores` [N, C], the
    chosen channel's share of the parent's positive contribution: max(s_c, 0) / sum of
    max(s, 0) over the row. A parent with no positive contribution shares its weight
    equally among its children. A layer whose scores the kind cannot map to the moved
    points' channels (`LayerKind.channel_column`) is refused, naming it."""
    parents = tf.cast(moved.count, tf.int32)
    carried = tf.gather(weights, parents)
    if channel_scores is None:
        return moved.replace(count=carried)
    column = None if kind.channel_column is None else kind.channel_column(layer, moved.ch)
    if column is None or isinstance(column, str):
        why = column or "its rule scores something other than the input's channels"
        raise refuse(layer, f"path_weight=contribution cannot weigh its choice: {why}")
    positive = tf.maximum(tf.cast(channel_scores, WEIGHT_DTYPE), 0.0)
    total = tf.gather(tf.reduce_sum(positive, axis=1), parents)
    chosen = tf.gather_nd(positive, tf.stack([parents, tf.cast(column, tf.int32)], axis=1))
    siblings = tf.gather(
        tf.math.unsorted_segment_sum(tf.ones_like(carried), parents, tf.shape(channel_scores)[0]),
        parents,
    )
    share = tf.where(total > 0, tf.math.divide_no_nan(chosen, total), 1.0 / siblings)
    return moved.replace(count=carried * share)


def _saturating_sum(counts, index, segments):
    """Per-segment sums of int64 counts, saturating at MAX_COUNT instead of wrapping.

    With K > 1 every layer multiplies the paths by up to K (3^50 through MobileNetV2 at
    K = 3), past what int64 holds. Exact wherever the true sum fits; the float64 sum only
    tells which segments overflowed (it is at least 2^63 whenever the true sum is).
    """
    exact = tf.math.unsorted_segment_sum(counts, index, segments)
    approx = tf.math.unsorted_segment_sum(tf.cast(counts, tf.float64), index, segments)
    return tf.where(approx >= 2.0**63, tf.constant(MAX_COUNT, tf.int64), exact)


def seeds_from_labels(labels: tf.Tensor, classes: tf.Tensor | None = None) -> Points:
    """Seeds: every score position on the channel of its label. labels [B, h, w] int32;
    255 positions and classes outside `classes` (when given) are skipped."""
    keep = tf.not_equal(labels, IGNORE_LABEL)
    if classes is not None:
        wanted = tf.reduce_any(
            tf.equal(labels[..., None], tf.reshape(tf.cast(classes, labels.dtype), [-1])),
            axis=-1,
        )
        keep = keep & wanted
    where = tf.cast(tf.where(keep), tf.int32)
    label = tf.gather_nd(labels, where)
    count = tf.ones_like(label, tf.int64)
    return Points(where[:, 0], label, where[:, 1], where[:, 2], label, count)


def seeds_from_pixels(
    labels: tf.Tensor, grid_size: tf.Tensor, geometry: tf.Tensor, classes: tf.Tensor | None = None
) -> Points:
    """Seeds as Seg-Unravel's code takes them: every score position under at least one
    pixel of class c in `labels` [B, H, W] (the scores upsampled to the input, or given
    labels) seeds class c once. Pixel p lies under position floor((p - offset) / scale) of
    the map `geometry` (DeepLab-LargeFOV: floor(p / 8)), clamped to the grid. Near a class
    border a position can seed several classes: a superset of the grid's seeds."""
    labels = tf.cast(labels, tf.int32)
    keep = tf.not_equal(labels, IGNORE_LABEL)
    if classes is not None:
        wanted = tf.reshape(tf.cast(classes, labels.dtype), [-1])
        keep = keep & tf.reduce_any(tf.equal(labels[..., None], wanted), axis=-1)
    where = tf.cast(tf.where(keep), tf.int32)
    label = tf.gather_nd(labels, where)
    geometry = tf.cast(geometry, tf.float32)

    def cell(pixel, axis):
        position = (tf.cast(pixel, tf.float32) - geometry[axis, 1]) / geometry[axis, 0]
        return tf.clip_by_value(tf.cast(tf.floor(position), tf.int32), 0, grid_size[axis] - 1)

    points = Points(
        where[:, 0],
        label,
        cell(where[:, 1], 0),
        cell(where[:, 2], 1),
        label,
        tf.ones_like(label, tf.int64),
    )
    label_bound = IGNORE_LABEL + 1  # every label (and the seed's channel) is below it
    merged = merge(points, (tf.shape(labels)[0], label_bound, *tf.unstack(grid_size), label_bound))
    return merged.replace(count=tf.ones_like(merged.count))  # a set: one seed per position


def contrast_seeds(
    points: Points, scores: tf.Tensor, contrast: str | int
) -> tuple[Points, tf.Tensor]:
    """The seeds of a contrastive unravel and the class each one is contrasted with.

    `contrast` is "runner_up" (the highest-scoring class other than the seed's own at its
    position, lowest index on ties) or a class id; seeds of that class itself have no margin
    and are dropped. Returns (points, against [N] int32).
    """
    if contrast == RUNNER_UP:
        at_seed = tf.gather_nd(scores, tf.stack([points.b, points.y, points.x], axis=-1))
        own = tf.one_hot(points.cls, tf.shape(scores)[-1], on_value=True, off_value=False)
        against = first_argmax(tf.where(own, float("-inf"), at_seed))
        return points, tf.cast(against, tf.int32)
    points = points.where(tf.not_equal(points.cls, contrast))
    return points, tf.fill(tf.shape(points.cls), tf.constant(contrast, tf.int32))


def margin_kernel(
    kernel: tf.Tensor, classes: tf.Tensor, against: tf.Tensor, axis: int = -1
) -> tf.Tensor:
    """The score layer's kernel as the contrastive unravel sees it: filter p is the margin
    between the classes of pair p, w_c - w_c'. Only the pairs the seeds use are built (a
    1000-class head would need 10^6 filters for every pair); the biases cancel in a
    difference of contributions. The layer's usual rule then runs on it unchanged
    (docs/method.md, "Contrastive unravel"). `axis`: the kernel's output-channel axis."""
    kernel = tf.convert_to_tensor(kernel)
    return tf.gather(kernel, classes, axis=axis) - tf.gather(kernel, against, axis=axis)


class Seeds(typing.NamedTuple):
    """Where a walk starts: the seed points on the score grid, how many each class has per
    image (int32 [B, classes]), and the score layer's kernel as the walk reads it: the margin
    kernel of a contrastive walk, a binary head's two filters, or None (the layer's own)."""

    points: Points
    per_class: typing.Any
    kernel: typing.Any = None


def _sizes(tensor, num_classes):
    shape = tf.unstack(tf.shape(as_map(tensor)), num=4)
    return (shape[0], num_classes, shape[1], shape[2], shape[3])


class FlowStep(typing.NamedTuple):
    """The points arriving at one layer's input, unmerged (for flow figures).

    layer: the layer's name (a string tensor inside `tf.function`).
    size: int32 [2], the input's (height, width); (1, 1) for vectors, (1, N) for N tokens.
    points: int32 [M, 4] rows (image, class, y, x); counts: int64 [M].
    """

    layer: typing.Any
    size: typing.Any
    points: typing.Any
    counts: typing.Any


class ChannelScores(typing.NamedTuple):
    """A channel-choosing layer's scores: float32 [N, C_in], one row per point it received."""

    layer: typing.Any
    scores: typing.Any


class UnravelResult(typing.NamedTuple):
    """An unravelled batch: tensors from `SegUnravel.trace`, numpy arrays from `__call__`.

    points: int32 [N, 4] rows (image index, class, y, x) in input pixel coordinates, sorted.
    counts: int64 [N], the number of seed paths through each point (saturating at
      `MAX_COUNT`, int64's largest, when K > 1 makes more paths than that).
    labels: int32 [B, h, w], the predicted labels on the score grid.
    seeds: int32 [B, classes], how many seeds each class had in each image.
    scores: float32 [B, h, w, classes], the model's scores from the same forward pass.
    geometry: float32 [2, 2], rows (height, width) of (scale, offset): score position i sits
      over image pixel scale * i + offset (`unravel.geometry`).
    flow: with `keep_flow`, a tuple of `FlowStep` from the scores down to the image.
    channel_scores: with `keep_channel_scores`, a tuple of `ChannelScores`, one per
      channel-choosing layer (convolutions, Dense) in the order the walk met them.
    """

    points: typing.Any
    counts: typing.Any
    labels: typing.Any
    seeds: typing.Any
    scores: typing.Any
    geometry: typing.Any = None
    flow: tuple | None = None
    channel_scores: tuple | None = None

    def for_image(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(points [n, 3] rows (class, y, x), counts [n]) of one image."""
        mine = self.points[:, 0] == index
        return self.points[mine, 1:], self.counts[mine]

    def numpy(self) -> "UnravelResult":
        """The same result with every tensor as a numpy array (layer names as str)."""

        def convert(value):
            if not isinstance(value, tf.Tensor):
                return value
            array = value.numpy()
            return array.decode() if isinstance(array, bytes) else array

        return tf.nest.map_structure(convert, self)


class SegUnravel:
    """Segmentation fixations for a Keras functional or Sequential CNN that maps images to
    scores, built from the layers in `unravel/rules/` (docs/unravel.md's coverage table lists the
    keras.applications families traced) and any registered with `register_rule`.

        engine = SegUnravel(model, FixationSettings(k=3))   # or SegUnravel(model, k=3)
        result = engine(images)

    Args:
      model: a functional or Sequential Keras model, images [B, H, W, 3] -> per-pixel class
        scores [B, h, w, C] (nested models are flattened).
      settings: a `FixationSettings` (default: its defaults); keyword arguments named after
        its fields replace single fields.
      keep_flow: also return the points arriving at every layer (for flow figures).
      keep_channel_scores: also return every channel-choosing layer's channel scores (for
        the K analysis); works in graph mode too.
      class_names: names by class id, for a `contrast` given as a class name.
      input: an `InputSettings`, how RGB 0..255 pixels become the model's input.
      output: the score output of a multi-output model (an output's or a layer's name).
      cache_kernels: keep each convolution's kernel transposed between walks
        (`rules/kernel_rows.py`: two extra copies of every kernel, checked bit for bit
        against the weights on every walk, so results never change). Default: on where
        the scores are a map wider than one position.

    `model` may also be a `graph.ModelGraph` (then `input` and `output` are its own). The
    unravel starts from the logits: a final sigmoid or softmax is stepped over; a one-channel
    head is unravelled as two classes, and a fixed-size model's points and geometry are
    mapped back onto the images' own pixels (`graph.ModelGraph` says how).

    With `contrast` ("runner_up" or a class; a `FixationSettings` field), each seed unravels
    the margin of its class's score over the other class's: at the score layer (the model's
    output layer, which must then be a Conv2D or Dense) channels are chosen by their
    contribution to s_c - s_c', and every layer below by its usual rule.
    """

    def __init__(
        self,
        model: keras.Model,
        settings: FixationSettings | None = None,
        *,
        keep_flow: bool = False,
        keep_channel_scores: bool = False,
        class_names: typing.Sequence[str] | None = None,
        input: InputSettings | None = None,
        output: str | None = None,
        cache_kernels: bool | None = None,
        **fields: typing.Any,
    ) -> None:
        settings = settings or FixationSettings()
        self.settings = dataclasses.replace(settings, **fields) if fields else settings
        self.graph = graph.as_graph(model, input=input, output=output, strict=True)
        self.model = self.graph.model
        self.num_classes = self.graph.num_classes
        class_names = class_names or self.graph.class_names
        self.contrast = self.settings.contrast_class(class_names, self.num_classes)
        self.keep_flow = keep_flow
        self.keep_channel_scores = keep_channel_scores
        # Every rule moves each point on its own and counts add exactly, so the order in
        # which points reach a layer changes nothing but the order of its outputs; only the
        # image's merge (`finish`) sorts. The flow and channel scores list points in arrival
        # order, so when they are kept every merge sorts, as it always did.
        self._sort_every_merge = keep_flow or keep_channel_scores
        if self.contrast is not None:
            self._check_contrast()
        if cache_kernels is None:  # worth its memory where many points reach each layer
            cache_kernels = self._score_map_is_spatial()
        self.cache_kernels = bool(cache_kernels)
        if self.cache_kernels:
            self._hold_kernels()
        self._traced = tf.function(self.trace, reduce_retracing=True)

    def _score_map_is_spatial(self):
        """Whether the scores are a map with more than one position (segmentation): a
        classifier's one seed per image never reads a kernel by rows."""
        step = self.graph.score_step
        shape = step.shapes[step.outputs.index(self.graph.output_id)]
        return len(shape) == 4 and tuple(shape[1:3]) != (1, 1)

    def _hold_kernels(self):
        """Makes the transposed kernel tables (`kernel_rows`) of every convolution the walk
        reads by rows, before any trace. The kernel step's own kernel is not read where a
        margin or binary kernel replaces it."""
        replaced = self.contrast is not None or self.graph.binary
        for step in self.graph.steps:
            kind = self.graph.kind(step)
            for name in HELD_KERNELS.get(kind.rule, ()) if kind else ():
                if not (replaced and step is self.graph.kernel_step and name == kind.kernel):
                    kernel_rows.hold(step.layer, name)

    def _check_contrast(self):
        """The margin kernel replaces the kernel step's. A one-channel head's split layer
        takes it wherever it takes the split (the margin is s w, the foreground's own
        ranking); a multi-class score layer must be a Conv2D (groups=1) or Dense, the kinds
        the margin is checked for against the naive reference."""
        layer = self.graph.kernel_step.layer
        multi_class = isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)) and (
            getattr(layer, "groups", 1) == 1
        )
        if not (self.graph.binary or multi_class) or self.graph.kernel_kind().kernel is None:
            raise ValueError(
                f"contrast needs the model's output layer to be the score layer, a Conv2D "
                f"(groups=1) or Dense; {layer.name!r} is a {type(layer).__name__}"
            )
        if self.num_classes < 2:
            raise ValueError("contrast needs a model with at least 2 classes")

    # The walk's loops and branches run over the (static) layer graph, never over tensor
    # values, so AutoGraph has nothing to convert: skipping it saves seconds per trace, in our
    # tf.function and in any a caller wraps around this method.
    @tf.autograph.experimental.do_not_convert
    def trace(
        self,
        images: tf.Tensor,
        seed_labels: tf.Tensor | None = None,
        classes: tf.Tensor | None = None,
    ) -> UnravelResult:
        """The graph-mode core: tensors in, an `UnravelResult` of tensors out (works inside
        `tf.function`).

        Args:
          images: [B, H, W, 3] float or uint8 RGB pixels.
          seed_labels: optional [B, H, W] int labels to seed from (255 skipped), for example
            the ground truth; by default the model's own prediction seeds.
          classes: optional int [n], only these classes are unravelled.
        """
        images = tf.cast(images, tf.float32)
        return self.walk(self.record(images), seed_labels, classes)

    @tf.autograph.experimental.do_not_convert  # as `trace`
    def record(self, images: tf.Tensor) -> Values:
        """The recorded forward pass: {tensor id: value} for every tensor of the graph."""
        return self.graph.record(images)

    @tf.autograph.experimental.do_not_convert  # as `trace`
    def walk(
        self, values: Values, seed_labels: tf.Tensor | None = None, classes: tf.Tensor | None = None
    ) -> UnravelResult:
        """The unravel proper on recorded values (see `trace`); no forward computation:
        seeding on the score grid, propagation down the layers, then the image's points."""
        scores = self.graph.scores(values)
        labels = tf.cast(first_argmax(scores, axis=-1), tf.int32)
        geometry = image_geometry(self.graph, values)
        seeds = self.seed(values, scores, labels, geometry, seed_labels, classes)
        at_input, flow, channel_scores = self.propagate(values, seeds)
        points = self.finish(values, at_input)
        return UnravelResult(
            points=_rows(points),
            counts=points.count,
            labels=labels,
            seeds=seeds.per_class,
            scores=scores,
            geometry=geometry,
            flow=tuple(flow) if self.keep_flow else None,
            channel_scores=tuple(channel_scores) if self.keep_channel_scores else None,
        )

    def seed(
        self,
        values: Values,
        scores: tf.Tensor,
        labels: tf.Tensor,
        geometry: tf.Tensor,
        seed_labels: tf.Tensor | None = None,
        classes: tf.Tensor | None = None,
    ) -> Seeds:
        """The walk's start (`Seeds`): every score position on its label's channel, from the
        predicted `labels` or from `seed_labels` at image size; with `contrast`, each seed's
        channel becomes the index of its (class, against) pair in the margin kernel."""
        if self.settings.seeding == "upsampled":  # every position under a pixel of the class
            if seed_labels is None:
                size = tf.shape(values[graph.IMAGES])[1:3]
                seed_labels = labels_at_size(scores, size[0], size[1], geometry)
            points = seeds_from_pixels(seed_labels, tf.shape(scores)[1:3], geometry, classes)
        elif seed_labels is not None:  # each score position takes the label under its centre
            seed_grid = shrink_labels(
                tf.cast(seed_labels, tf.int32), tf.shape(scores)[1:3], geometry
            )
            points = seeds_from_labels(seed_grid, classes)
        else:
            points = seeds_from_labels(labels, classes)
        kernel = self.graph.score_kernel()
        if self.contrast is not None:
            points, against = contrast_seeds(points, scores, self.contrast)
            pairs, pair_index = tf.unique(points.cls * self.num_classes + against)
            kind = self.graph.kernel_kind()
            assert kind.kernel is not None  # the graph refuses a head without one
            own = getattr(self.graph.kernel_step.layer, kind.kernel) if kernel is None else kernel
            kernel = margin_kernel(
                own, pairs // self.num_classes, pairs % self.num_classes, kind.kernel_axis
            )
            points = points.replace(ch=pair_index)
        if self.settings.path_weight == "contribution":
            points = points.replace(count=tf.cast(points.count, WEIGHT_DTYPE))
        batch = tf.shape(values[self.graph.input_id])[0]
        per_class = tf.math.bincount(
            points.b * self.num_classes + points.cls,
            minlength=batch * self.num_classes,
            maxlength=batch * self.num_classes,
        )
        return Seeds(points, tf.reshape(per_class, [-1, self.num_classes]), kernel)

    def propagate(
        self, values: Values, seeds: Seeds
    ) -> tuple[list[Points], list[FlowStep], list[ChannelScores]]:
        """Moves the seeds through every layer from the scores down to the image, merging the
        points that reach a tensor before its layer's rule runs. Returns (the unmerged parts
        that reached the image, flow steps, channel scores)."""
        # pending: tensor id -> [(points, already merged)], the parts that reached it.
        with kernel_rows.enabled(self.cache_kernels):
            return self._propagate(values, seeds)

    def _propagate(self, values, seeds):
        pending = {self.graph.output_id: [(seeds.points, False)]}
        flow, channel_scores = [], []
        weighing = self.settings.path_weight == "contribution"
        # Where a kernel replaces the kernel step's, the points from the scores down to it
        # carry that kernel's channels (a binary head's two classes, a margin's pairs).
        head = {id(step) for step in self.graph.head_steps} if seeds.kernel is not None else ()
        if head:
            head_channels = tf.shape(seeds.kernel)[self.graph.kernel_kind().kernel_axis]
        for step in reversed(self.graph.steps):
            arrived = pending.pop(step.outputs[0], None)
            if not arrived:
                continue
            output = values[step.outputs[0]]
            sizes = _sizes(output, self.num_classes)
            extra = {}
            if id(step) in head:
                sizes = (*sizes[:4], head_channels)
            if seeds.kernel is not None and step is self.graph.kernel_step:
                extra = {"kernel": seeds.kernel}
            # One name scope per layer (its merge and rule): profiles and op counts of the
            # compiled walk attribute every op to its layer (bench/profile_unravel.py).
            with tf.name_scope(_scope_name(step.layer.name)):
                if len(arrived) == 1 and arrived[0][1]:
                    points = arrived[0][0]  # distinct already: merging changes nothing
                else:
                    parts = concat_points([part for part, _ in arrived])
                    points = merge(parts, sizes, sort=self._sort_every_merge)
                kind = self.graph.kind(step)
                inputs = [values[i] for i in step.inputs]
                x = inputs if kind.multi_input else inputs[0]
                arriving = points
                if weighing:  # each point's index rides in `count`: its children's parent
                    points = points.replace(count=tf.range(tf.size(points.b, tf.int64)))
                moved = kind.rule(step.layer, x, output, points, self.settings, **extra)
                scored = moved.channel_scores if isinstance(moved, Moved) else None
                if isinstance(moved, Moved):
                    moved = moved.points
                if weighing:
                    moved = [
                        carry_weights(step.layer, kind, arriving.count, part, scored)
                        for part in moved
                    ]
            if self.keep_channel_scores and scored is not None:
                channel_scores.append(ChannelScores(tf.constant(step.layer.name), scored))
            for key, part in zip(step.inputs, moved, strict=True):
                pending.setdefault(key, []).append((part, kind.keeps_merged))
                if self.keep_flow:
                    flow.append(
                        FlowStep(
                            tf.constant(step.layer.name),
                            _spatial_size(values[key]),
                            _rows(part),
                            part.count,
                        )
                    )
        return [part for part, _ in pending[self.graph.input_id]], flow, channel_scores

    def finish(self, values: Values, parts: list[Points]) -> Points:
        """The image's points: the colour channel is not a location, so one merge over it
        gives the sorted, distinct (image, class, y, x) points with their path counts. A
        fixed-size model's points are moved from its input's pixels to the images' own
        (pixel centres scaled), and merged again."""
        final = concat_points(parts)
        final = final.replace(ch=tf.zeros_like(final.ch))
        if self.graph.input_size is not None:
            fed, size = self.graph.fed_size(values), self.graph.image_size(values)
            final = final.replace(y=_rescale(final.y, fed[0], size[0]))
            final = final.replace(x=_rescale(final.x, fed[1], size[1]))
        images = values[graph.IMAGES]
        return merge(final, (*_sizes(images, self.num_classes)[:4], 1))

    def __call__(
        self,
        images: typing.Any,
        seed_labels: typing.Any = None,
        classes: typing.Iterable[int] | None = None,
    ) -> UnravelResult:
        """Unravels a batch (see `trace`); returns an `UnravelResult` of numpy arrays."""
        images = tf.convert_to_tensor(images)
        if len(images.shape) != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be [B, H, W, 3], got shape {images.shape}")
        seed_labels = None if seed_labels is None else tf.convert_to_tensor(seed_labels)
        classes = None if classes is None else tf.constant(list(classes), tf.int32)
        return self._traced(images, seed_labels, classes).numpy()


def _rescale(positions, from_size, to_size):
    """Pixel positions on an axis of `from_size` moved to one of `to_size` (centres scaled)."""
    moved = tf.floor(
        (tf.cast(positions, tf.float32) + 0.5)
        * tf.cast(to_size, tf.float32)
        / tf.cast(from_size, tf.float32)
    )
    return tf.minimum(tf.cast(moved, tf.int32), to_size - 1)


def _scope_name(name):
    """A layer's name as a valid name scope (Keras allows characters TensorFlow's scopes
    refuse)."""
    name = re.sub(r"[^A-Za-z0-9_.\-]", "_", name)
    return name if re.match(r"[A-Za-z0-9.]", name) else "layer_" + name


def _rows(points):
    """Points -> int32 [N, 4] rows (image, class, y, x)."""
    return tf.stack([points.b, points.cls, points.y, points.x], axis=1)


def _spatial_size(tensor):
    return tf.shape(as_map(tensor))[1:3]
