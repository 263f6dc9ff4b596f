"""Losses on the score grid: softmax cross-entropy with ignore, and the template-similarity loss.

Both return a replica's *share* of the global loss: the local sum divided by global counts
(all-reduced across replicas). Summed over replicas, as Keras' optimizers sum gradients under
`tf.distribute`, this gives exactly the single-device loss and gradient on the same global
batch; a per-replica mean would weight replicas with fewer valid pixels more heavily.
"""

import tensorflow as tf

from tf_segunravel.data.labels import IGNORE_LABEL

SIMILARITIES = ("cosine", "correlation")
REDUCTIONS = ("mean", "sum")
_EPSILON = 1e-12


def _global_sum(value):
    """Sum over replicas inside a `tf.distribute` replica context; identity elsewhere."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_reduce(tf.distribute.ReduceOp.SUM, value)


def _all_gather(value):
    """Concatenation over replicas (in replica order) along axis 0; identity elsewhere."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_gather(value, axis=0)


def cross_entropy(
    scores: tf.Tensor, labels: tf.Tensor, ignore_label: int = IGNORE_LABEL
) -> tf.Tensor:
    """Softmax cross-entropy averaged over the (global) non-ignored pixels, as Caffe's."""
    labels = tf.cast(labels, tf.int32)
    valid = tf.not_equal(labels, ignore_label)
    safe_labels = tf.where(valid, labels, 0)
    per_pixel = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=safe_labels, logits=tf.cast(scores, tf.float32)
    )
    local_sum = tf.reduce_sum(tf.where(valid, per_pixel, 0.0))
    count = _global_sum(tf.reduce_sum(tf.cast(valid, tf.float32)))
    return tf.math.divide_no_nan(local_sum, count)


def _first_true(flags, length):
    """Per column of a boolean [length, C], the first row that is true (else `length`).

    Written out because `tf.argmax` leaves the winner among ties unspecified.
    """
    rows = tf.range(length)[:, None]
    return tf.reduce_min(tf.where(flags, rows, length), axis=0)


def _normalise(vectors, centre):
    vectors = tf.cast(vectors, tf.float32)
    if centre:  # Pearson correlation is the cosine of the mean-centred vectors.
        vectors -= tf.reduce_mean(vectors, axis=-1, keepdims=True)
    # An all-zero vector (common after ReLU) stays zero, so its similarity with anything is 0;
    # the floor inside the square root also keeps the gradient finite there.
    squared = tf.reduce_sum(tf.square(vectors), axis=-1, keepdims=True)
    return vectors / tf.sqrt(tf.maximum(squared, _EPSILON))


def class_templates(
    features: tf.Tensor, scores: tf.Tensor, labels: tf.Tensor, ignore_label: int = IGNORE_LABEL
) -> tuple[tf.Tensor, ...]:
    """Each class's template: the feature vector at its best-scoring labelled pixel.

    Args as `template_similarity_loss`. Returns (features [P, D], scores [P, C], labels [P],
    valid [P], member [P, C], templates [C, D] without gradient, present [C]): the flattened
    inputs, and per class its template and whether any replica's batch holds the class.
    Under `tf.distribute` templates and presence are global (docs/method.md section 3).
    """
    num_classes = scores.shape[-1]
    depth = features.shape[-1]
    features = tf.reshape(tf.cast(features, tf.float32), [-1, depth])
    scores = tf.reshape(tf.cast(scores, tf.float32), [-1, num_classes])
    labels = tf.reshape(tf.cast(labels, tf.int32), [-1])
    valid = tf.not_equal(labels, ignore_label)
    # member[p, c]: pixel p is labelled c.
    member = tf.logical_and(
        tf.equal(labels[:, None], tf.range(num_classes)[None, :]), valid[:, None]
    )

    # Per class, the best-scoring member pixel of this replica, then over replicas.
    masked = tf.where(member, scores, float("-inf"))
    best = tf.reduce_max(masked, axis=0)  # [C]
    pixels = tf.shape(scores)[0]
    hits = tf.logical_and(member, tf.equal(masked, best[None, :]))
    first = _first_true(hits, pixels)  # [C]; `pixels` where the class is absent
    local_templates = tf.gather(features, tf.minimum(first, pixels - 1))
    all_best = _all_gather(best[None, :])  # [R, C]
    all_templates = _all_gather(local_templates[None])  # [R, C, D]
    # The first replica holding the global maximum wins: replica order is batch order.
    replicas = tf.shape(all_best)[0]
    winner = tf.minimum(
        _first_true(tf.equal(all_best, tf.reduce_max(all_best, axis=0, keepdims=True)), replicas),
        replicas - 1,
    )
    templates = tf.gather(
        tf.transpose(all_templates, [1, 0, 2]), winner[:, None], axis=1, batch_dims=1
    )[:, 0]
    templates = tf.stop_gradient(templates)
    present = _global_sum(tf.reduce_sum(tf.cast(member, tf.float32), axis=0)) > 0  # [C]
    return features, scores, labels, valid, member, templates, present


def template_similarities(
    templates: tf.Tensor, present: tf.Tensor, similarity: str = "cosine"
) -> tf.Tensor:
    """The mean similarity between the templates of every two present classes (0 with fewer
    than two): a collapse of the features shows as templates that all look alike."""
    centre = similarity == "correlation"
    normalised = _normalise(templates, centre)
    sim = tf.matmul(normalised, normalised, transpose_b=True)
    pair = tf.cast(present[:, None] & present[None, :], tf.float32)
    pair *= 1.0 - tf.eye(tf.shape(templates)[0])
    return tf.math.divide_no_nan(tf.reduce_sum(sim * pair), tf.reduce_sum(pair))


def template_similarity_loss(
    features: tf.Tensor,
    scores: tf.Tensor,
    labels: tf.Tensor,
    similarity: str = "cosine",
    selective: bool = False,
    ignore_label: int = IGNORE_LABEL,
    reduction: str = "mean",
) -> tf.Tensor:
    """The per-pixel template-similarity loss of Seg-Unravel (docs/method.md section 3).

    For each label c present in the batch's ground truth, the template t_c is the feature
    vector at the pixel labelled c with the highest score for c (ties: the first pixel in
    batch, row, column order). Every valid pixel adds sim(F_p, t_c) when its label is not c
    (a cost) and subtracts it when it is c (a gain). The loss is the sum over labels divided
    by the number of labels present, and with `reduction="mean"` also by the number of
    non-ignored pixels (selective variants included).

    Templates are treated as constants within a step (no gradient flows into the template
    pixel through its role as template): our choice, as for the targets of a contrastive loss.

    Args:
      features: [B, h, w, D] float, the input of the final 1x1 classifier.
      scores: [B, h, w, C] float, the pre-softmax scores.
      labels: [B, h, w] int, on the score grid; `ignore_label` pixels are left out.
      similarity: "cosine" or "correlation" (Pearson, over the D entries).
      selective: only misclassified pixels (argmax of scores differs from the label) count.
      ignore_label: label value to leave out.
      reduction: "mean" (default) or "sum" (the dissertation's).

    Returns:
      A float32 scalar; 0 when no label is present. Under `tf.distribute` the templates and
      counts are global, and each replica returns its share of the global loss.
    """
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    features, scores, labels, valid, member, templates, present = class_templates(
        features, scores, labels, ignore_label
    )
    centre = similarity == "correlation"
    sim = tf.matmul(_normalise(features, centre), _normalise(templates, centre), transpose_b=True)
    sign = tf.where(member, -1.0, 1.0)  # gain for the own label, cost for the others
    counted = valid
    if selective:
        predicted = tf.argmax(scores, axis=-1, output_type=tf.int32)
        counted = tf.logical_and(valid, tf.not_equal(predicted, labels))
    weight = tf.cast(counted[:, None], tf.float32) * tf.cast(present[None, :], tf.float32)
    local_sum = tf.reduce_sum(sign * sim * weight)
    num_present = tf.reduce_sum(tf.cast(present, tf.float32))
    loss = tf.math.divide_no_nan(local_sum, num_present)
    if reduction == "mean":
        num_valid = _global_sum(tf.reduce_sum(tf.cast(valid, tf.float32)))
        loss = tf.math.divide_no_nan(loss, num_valid)
    return loss
