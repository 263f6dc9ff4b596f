"""The segmentation scores: pixel counts against Keras' own confusion matrix."""

import keras
import numpy as np
import pytest

from tf_segunravel.data.labels import IGNORE_LABEL
from tf_segunravel.evaluation import confusion_counts, iou_scores


def test_confusion_counts_match_keras_mean_iou():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 5, (3, 17, 13))
    truth[rng.random(truth.shape) < 0.2] = IGNORE_LABEL
    predicted = rng.integers(0, 5, truth.shape)
    reference = keras.metrics.MeanIoU(5, ignore_class=IGNORE_LABEL)
    counts = np.zeros((5, 5), np.int64)
    for image_truth, image_predicted in zip(truth, predicted, strict=True):
        reference.update_state(image_truth, image_predicted)
        counts += confusion_counts(image_truth, image_predicted, 5)
    np.testing.assert_array_equal(counts, reference.total_cm.numpy())
    assert counts.dtype == np.int64 and counts.sum() == (truth != IGNORE_LABEL).sum()
    assert iou_scores(counts)["mean_iou"] == pytest.approx(float(reference.result()))


@pytest.mark.parametrize(
    ("truth", "predicted", "message"),
    [
        ([0, 7], [0, 1], "truth label 7 outside 0..4"),
        ([0, 1], [0, 5], "prediction label 5 outside 0..4"),
        ([0, -1], [0, 1], "truth label -1 outside 0..4"),
    ],
)
def test_labels_outside_the_classes_are_refused(truth, predicted, message):
    with pytest.raises(ValueError, match=message):
        confusion_counts(np.array(truth), np.array(predicted), 5)


def test_an_all_ignored_image_counts_nothing():
    truth = np.full((4, 4), IGNORE_LABEL)
    assert confusion_counts(truth, np.zeros((4, 4), int), 3).sum() == 0
