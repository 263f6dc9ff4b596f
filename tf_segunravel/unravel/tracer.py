"""Segmentation unravel: from each predicted segment back to the image pixels that drove it.

    unravel = SegUnravel(model, k=1, shift="partial")
    result = unravel(images)                 # uint8/float RGB [B, H, W, 3]
    result.points, result.counts             # [(image, class, y, x)], paths through each

One recorded forward pass (no gradients), then every point of every class of every image
moves through a layer in one vectorised step, from the score layer down to the image, with
identical points merged and their counts added after each layer.
"""

import dataclasses

import numpy as np
import tensorflow as tf

from tf_segunravel.losses import shrink_labels
from tf_segunravel.unravel import graph
from tf_segunravel.unravel.rules import (
    DENSE_RULES,
    SHIFTS,
    Points,
    UnravelConfig,
    first_argmax,
    rule_for,
)

IGNORE_LABEL = 255


def merge(points, sizes):
    """Merges identical (b, cls, y, x, ch) points, adding counts; sorted by that key.

    `sizes` = (B, classes, H, W, C) bound each field, so the five pack into one int64 key.
    """
    fields = [points.b, points.cls, points.y, points.x, points.ch]
    key = tf.zeros_like(points.b, tf.int64)
    for field, size in zip(fields, sizes, strict=True):
        key = key * tf.cast(size, tf.int64) + tf.cast(field, tf.int64)
    unique, index = tf.unique(key)
    counts = tf.math.unsorted_segment_sum(points.count, index, tf.shape(unique)[0])
    order = tf.argsort(unique)
    unique, counts = tf.gather(unique, order), tf.gather(counts, order)
    unpacked = []
    for size in reversed(sizes):
        unpacked.append(tf.cast(unique % tf.cast(size, tf.int64), tf.int32))
        unique //= tf.cast(size, tf.int64)
    b, cls, y, x, ch = reversed(unpacked)
    return Points(b, cls, y, x, ch, counts)


def seeds_from_labels(labels, classes=None):
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


def _sizes(tensor, num_classes):
    shape = tf.shape(tensor)
    if len(tensor.shape) == 4:
        return (shape[0], num_classes, shape[1], shape[2], shape[3])
    return (shape[0], num_classes, 1, 1, shape[1])


@dataclasses.dataclass
class UnravelResult:
    """Plain arrays for a batch.

    points: int32 [N, 4] rows (image index, class, y, x) in input pixel coordinates, sorted.
    counts: int64 [N], the number of seed paths through each point.
    labels: int32 [B, h, w], the predicted labels on the score grid.
    seeds: int32 [B, classes], how many seeds each class had in each image.
    scores: float32 [B, h, w, classes], the model's scores from the same forward pass.
    flow: when kept, [(layer name, (height, width), points [M, 4], counts [M])] from the
      scores down to the image: the points arriving at each layer's input, unmerged.
    """

    points: np.ndarray
    counts: np.ndarray
    labels: np.ndarray
    seeds: np.ndarray
    scores: np.ndarray
    flow: list | None = None

    def for_image(self, index):
        """(points [n, 3] rows (class, y, x), counts [n]) of one image."""
        mine = self.points[:, 0] == index
        return self.points[mine, 1:], self.counts[mine]


class SegUnravel:
    """Segmentation fixations for any Keras functional CNN that maps images to scores.

    Args:
      model: a functional or Sequential Keras model, images [B, H, W, 3] -> per-pixel class
        scores [B, h, w, C] (nested models are flattened).
      k: channels kept per unit (branching when > 1; each child keeps its parent's count).
      mass: instead of a fixed K, the fewest channels whose contributions reach this
        fraction of the unit's positive total (at most `max_k`).
      shift: "partial" (default; full shift where dilation is 1, none where it is larger),
        "full" or "none".
      dense_rule: "topk" or "positive" (CNN-Fixations' rule for Dense layers).
      keep_flow: also return the points at every layer (for flow figures).
    """

    def __init__(
        self, model, k=1, mass=None, max_k=16, shift="partial", dense_rule="topk", keep_flow=False
    ):
        if shift not in SHIFTS:
            raise ValueError(f"shift must be one of {SHIFTS}, got {shift!r}")
        if dense_rule not in DENSE_RULES:
            raise ValueError(f"dense_rule must be one of {DENSE_RULES}, got {dense_rule!r}")
        if mass is None and (not isinstance(k, (int, np.integer)) or k < 1):
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if mass is not None and not 0 < mass <= 1:
            raise ValueError(f"mass must be in (0, 1], got {mass!r}")
        self.model = model
        self.config = UnravelConfig(int(k), mass, int(max_k), shift, dense_rule)
        self.keep_flow = keep_flow
        self.steps, self.input_id, outputs = graph.flatten_graph(model)
        if len(outputs) != 1:
            raise ValueError(f"unravel needs a model with one score output, got {len(outputs)}")
        self.output_id = outputs[0]
        self.rules = {id(step): rule_for(step.layer) for step in self.steps}
        self.num_classes = model.outputs[0].shape[-1]
        self._traced = tf.function(self.trace, reduce_retracing=True)

    def trace(self, images, seed_labels=None, classes=None):
        """The graph-mode core: tensors in, tensors out (works inside `tf.function`).

        Args:
          images: [B, H, W, 3] float or uint8 RGB pixels.
          seed_labels: optional [B, H, W] int ground-truth labels to seed from (255 skipped);
            by default the model's own prediction seeds.
          classes: optional int [n], only these classes are unravelled.

        Returns:
          dict: points int32 [N, 4] (b, class, y, x), counts int64 [N], labels int32
          [B, h, w], seeds int32 [B, classes], and per layer `flow/<i>` entries when kept.
        """
        images = tf.cast(images, tf.float32)
        return self.walk(self.record(images), seed_labels, classes)

    def record(self, images):
        """The recorded forward pass: {tensor id: value} for every tensor of the graph."""
        return graph.record(self.steps, self.input_id, tf.cast(images, tf.float32))

    def walk(self, values, seed_labels=None, classes=None):
        """The unravel proper on recorded values (see `trace`); no forward computation."""
        images = values[self.input_id]
        scores = values[self.output_id]
        if len(scores.shape) == 2:  # a classifier: one "pixel" per image
            scores = scores[:, None, None, :]
        labels = tf.cast(first_argmax(scores, axis=-1), tf.int32)
        if seed_labels is not None:
            seed_grid = shrink_labels(tf.cast(seed_labels, tf.int32), tf.shape(scores)[1:3])
        else:
            seed_grid = labels
        points = seeds_from_labels(seed_grid, classes)
        seeds = tf.math.bincount(
            points.b * self.num_classes + points.cls,
            minlength=tf.shape(images)[0] * self.num_classes,
            maxlength=tf.shape(images)[0] * self.num_classes,
        )
        seeds = tf.reshape(seeds, [-1, self.num_classes])

        pending = {self.output_id: [points]}
        flow = {}
        for index in range(len(self.steps) - 1, -1, -1):
            step = self.steps[index]
            arrived = pending.pop(step.outputs[0], None)
            if not arrived:
                continue
            output = values[step.outputs[0]]
            points = merge(_concat(arrived), _sizes(output, self.num_classes))
            rule, multi = self.rules[id(step)]
            inputs = [values[i] for i in step.inputs]
            moved = rule(step.layer, inputs if multi else inputs[0], output, points, self.config)
            for j, (key, part) in enumerate(zip(step.inputs, moved, strict=True)):
                pending.setdefault(key, []).append(part)
                if self.keep_flow:
                    flow[f"flow/{index}/{j}"] = (part, _spatial_size(values[key]))
        # The image's colour channel is not a location: one merge over it gives the result.
        final = _concat(pending[self.input_id])
        at_image = merge(
            final.replace(ch=tf.zeros_like(final.ch)), (*_sizes(images, self.num_classes)[:4], 1)
        )
        result = {
            "points": tf.stack([at_image.b, at_image.cls, at_image.y, at_image.x], axis=1),
            "counts": at_image.count,
            "labels": labels,
            "seeds": seeds,
            "scores": scores,
        }
        for key, (part, size) in flow.items():
            result[key + "/points"] = tf.stack([part.b, part.cls, part.y, part.x], axis=1)
            result[key + "/counts"] = part.count
            result[key + "/size"] = size
        return result

    def __call__(self, images, masks=None, classes=None):
        """Unravels a batch; returns an `UnravelResult` of numpy arrays."""
        images = tf.convert_to_tensor(images)
        if len(images.shape) != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be [B, H, W, 3], got shape {images.shape}")
        args = [images, None if masks is None else tf.convert_to_tensor(masks)]
        args.append(None if classes is None else tf.constant(list(classes), tf.int32))
        out = {key: value.numpy() for key, value in self._traced(*args).items()}
        flow = None
        if self.keep_flow:
            flow = []
            for index in range(len(self.steps) - 1, -1, -1):
                for j in range(len(self.steps[index].inputs)):
                    key = f"flow/{index}/{j}"
                    if key + "/points" in out:
                        flow.append(
                            (
                                self.steps[index].layer.name,
                                tuple(out[key + "/size"].tolist()),
                                out[key + "/points"],
                                out[key + "/counts"],
                            )
                        )
        return UnravelResult(
            out["points"].astype(np.int32),
            out["counts"],
            out["labels"],
            out["seeds"],
            out["scores"],
            flow,
        )


def _spatial_size(tensor):
    if len(tensor.shape) == 4:
        return tf.shape(tensor)[1:3]
    return tf.ones([2], tf.int32)


def _concat(parts):
    if len(parts) == 1:
        return parts[0]
    return Points(*(tf.concat(fields, axis=0) for fields in zip(*parts, strict=True)))
