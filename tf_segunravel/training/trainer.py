"""The training model: cross-entropy plus the template-similarity loss, Caffe-style updates.

`SegmentationTrainer` wraps a segmentation network (fc8 scores, and the features that feed
fc8) and overrides `train_step` / `test_step` the way Keras' own TensorFlow trainer is written,
so `fit`, `evaluate`, callbacks, `tf.distribute` and mixed precision all work as usual.
"""

import typing

import keras
import tensorflow as tf

from tf_segunravel.data.labels import IGNORE_LABEL
from tf_segunravel.grids import shrink_labels
from tf_segunravel.losses import (
    class_templates,
    cross_entropy,
    template_similarities,
    template_similarity_loss,
)
from tf_segunravel.models.deeplab_largefov import FEATURE_LAYER, with_features
from tf_segunravel.models.layers import example_keys
from tf_segunravel.training.optim import caffe_gradients


class SegmentationTrainer(keras.Model):
    """Trains `network` on (images [B, H, W, 3] RGB 0..255, labels [B, H, W] int) batches.

    Labels are shrunk to the score grid by nearest sampling. The loss is
    `cross_entropy + template_weight * template_similarity_loss`; the logged metrics are
    `loss`, `cross_entropy`, `template_loss`, `pixel_accuracy`, `mean_iou` (on the score grid),
    `learning_rate`, and two signs of collapsing features, logged with or without the template
    loss: `dead_features`, the share of fc8's input vectors that are all zero (dead ReLUs),
    and `template_similarity`, the mean similarity between the class templates (1 when
    every class's best pixel has the same feature direction).
    """

    def __init__(
        self,
        network: keras.Model,
        num_classes: int,
        template_weight: float = 0.0,
        similarity: str = "cosine",
        selective: bool = False,
        template_reduction: str = "mean",
        weight_decay: float = 5e-4,
        use_lr_multipliers: bool = True,
        feature_layer: str = FEATURE_LAYER,
        ignore_label: int = IGNORE_LABEL,
        dropout_seed: int | None = None,
        **kwargs: typing.Any,
    ) -> None:
        super().__init__(**kwargs)
        self.dropout_seed = dropout_seed
        self.network = network
        self.features_and_scores = with_features(network, feature_layer)
        self.num_classes = num_classes
        self.template_weight = float(template_weight)
        self.similarity = similarity
        self.selective = selective
        self.template_reduction = template_reduction
        self.weight_decay = weight_decay
        self.use_lr_multipliers = use_lr_multipliers
        self.ignore_label = ignore_label
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.cross_entropy_tracker = keras.metrics.Mean(name="cross_entropy")
        self.template_tracker = keras.metrics.Mean(name="template_loss")
        self.dead_tracker = keras.metrics.Mean(name="dead_features")
        self.template_similarity_tracker = keras.metrics.Mean(name="template_similarity")
        self.accuracy = keras.metrics.SparseCategoricalAccuracy(name="pixel_accuracy")
        self.mean_iou = keras.metrics.MeanIoU(
            num_classes, name="mean_iou", ignore_class=ignore_label
        )

    @property
    def metrics(self) -> list:
        return [
            self.loss_tracker,
            self.cross_entropy_tracker,
            self.template_tracker,
            self.dead_tracker,
            self.template_similarity_tracker,
            self.accuracy,
            self.mean_iou,
        ]

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Skipped under MultiWorkerMirroredStrategy: Keras 3 first averages one batch over
        the replicas with `strategy.reduce` to build the model symbolically, and that
        strategy cannot reduce a tuple of per-replica batches ("Attempt to convert a value
        (PerReplica...) to a Tensor"). The run needs nothing from that build there (the
        trackers are built when made, `compile` gets no losses or metrics, and `train`
        builds the optimizer under the strategy's scope); every other strategy keeps it."""
        if isinstance(self.distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy):
            return None
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def call(self, images: tf.Tensor, training: bool = False) -> tf.Tensor:
        return self.network(images, training=training)

    def _compute_losses(self, images, labels, training):
        outputs = self.features_and_scores(images, training=training)
        scores = outputs["scores"]
        labels = shrink_labels(labels, tf.shape(scores)[1:3])
        ce = cross_entropy(scores, labels, self.ignore_label)
        if self.template_weight:
            template = template_similarity_loss(
                outputs["features"],
                scores,
                labels,
                self.similarity,
                self.selective,
                self.ignore_label,
                self.template_reduction,
            )
        else:
            template = tf.zeros([], tf.float32)
        self._update_diagnostics(outputs["features"], scores, labels)
        return ce + self.template_weight * template, ce, template, scores, labels

    def _update_diagnostics(self, features, scores, labels):
        features = tf.stop_gradient(tf.cast(features, tf.float32))
        dead = tf.reduce_all(tf.equal(features, 0.0), axis=-1)
        self.dead_tracker.update_state(tf.reduce_mean(tf.cast(dead, tf.float32)))
        *_, templates, present = class_templates(
            features, tf.stop_gradient(scores), labels, self.ignore_label
        )
        self.template_similarity_tracker.update_state(
            template_similarities(templates, present, self.similarity)
        )

    def _update_metrics(self, total, ce, template, scores, labels):
        # The losses are each replica's share of the global loss (see `losses`); summed over
        # replicas they are the global value, which is what the trackers should average.
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            total, ce, template = context.all_reduce("sum", [total, ce, template])
        self.loss_tracker.update_state(total)
        self.cross_entropy_tracker.update_state(ce)
        self.template_tracker.update_state(template)
        valid = tf.not_equal(labels, self.ignore_label)
        safe = tf.where(valid, labels, 0)
        self.accuracy.update_state(safe, scores, sample_weight=tf.cast(valid, tf.float32))
        self.mean_iou.update_state(labels, tf.argmax(scores, axis=-1, output_type=tf.int32))
        logs = {m.name: m.result() for m in self.metrics}
        learning_rate = self.optimizer.learning_rate
        logs["learning_rate"] = tf.cast(learning_rate, tf.float32)
        return logs

    def _dropout_keys(self, index):
        """int64 [B, 2] (seed, global example index) per example, or None: batches with the
        stream's example indices (`train_pipeline(with_index=True)`) and a `dropout_seed`
        draw their dropout masks per example (`KeyedDropout`), so a cluster, one process
        and a resumed run drop the same units."""
        if not index or self.dropout_seed is None:
            return None
        index = tf.cast(index[0], tf.int64)
        return tf.stack(
            [tf.fill(tf.shape(index), tf.constant(self.dropout_seed, tf.int64)), index], 1
        )

    def train_step(self, data: tuple) -> dict:
        images, labels, *index = data
        variables = self.network.trainable_variables
        with tf.GradientTape() as tape, example_keys(self._dropout_keys(index)):
            total, ce, template, scores, small_labels = self._compute_losses(images, labels, True)
            scaled = self.optimizer.scale_loss(total)
        gradients = tape.gradient(scaled, variables)
        # Under mixed precision the gradients are still multiplied by the loss scale here
        # (the LossScaleOptimizer divides it out in `apply`), so the decay term is too.
        loss_scale = tf.cast(getattr(self.optimizer, "dynamic_scale", 1.0), tf.float32)
        # Each replica's gradient is its share of the global one and the replicas' gradients
        # are summed, so each adds its share of the decay too.
        context = tf.distribute.get_replica_context()
        replicas = context.num_replicas_in_sync if context is not None else 1
        gradients = caffe_gradients(
            gradients,
            variables,
            self.weight_decay * loss_scale / replicas,
            self.use_lr_multipliers,
        )
        self.optimizer.apply(gradients, variables)
        return _per_worker(self._update_metrics(total, ce, template, scores, small_labels))

    def test_step(self, data: tuple) -> dict:
        images, labels, *_ = data
        total, ce, template, scores, small_labels = self._compute_losses(images, labels, False)
        return _per_worker(self._update_metrics(total, ce, template, scores, small_labels))


def _per_worker(logs):
    """The logs as Keras' multi-worker reduction expects them.

    Under MultiWorkerMirroredStrategy Keras 3 averages each replica's logs with
    `strategy.reduce("MEAN", value, axis=0)`, which refuses scalars; a [1] vector per replica
    reduces to the scalar mean over the replicas. The losses are global already (summed over
    replicas in `_update_metrics`), so their mean is the global value; accuracy and mIoU are
    each replica's, averaged. Elsewhere the logs stay scalars.
    """
    if isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
        return {name: tf.reshape(value, [1]) for name, value in logs.items()}
    return logs
