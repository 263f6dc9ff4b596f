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


def _examples(count, num_classes=4):
    """`count` examples of different sizes (so each is padded differently)."""
    import tensorflow as tf

    rng = np.random.default_rng(1)
    sizes = [(23 - 2 * (i % 3), 19 + i) for i in range(count)]

    def generate():
        for height, width in sizes:
            yield {
                "image": rng.integers(0, 256, (height, width, 3)).astype(np.uint8),
                "segmentation": rng.integers(0, num_classes, (height, width, 1)).astype(np.uint8),
            }

    spec = {
        "image": tf.TensorSpec([None, None, 3], tf.uint8),
        "segmentation": tf.TensorSpec([None, None, 1], tf.uint8),
    }
    return tf.data.Dataset.from_generator(generate, output_signature=spec).cache(), sizes


def test_batched_predictions_are_the_single_image_ones_in_order(tmp_path):
    from tests.helpers import save_tiny_largefov
    from tf_segunravel.evaluation import evaluate, predictions

    network = save_tiny_largefov(tmp_path / "net.keras", 4)
    examples, sizes = _examples(5)
    list(examples)  # fills the cache: both passes read the same examples
    alone = list(predictions(network, examples, pad_size=25))
    batched = list(predictions(network, examples, pad_size=25, batch_size=2))  # 2, 2, then 1
    assert [tuple(scores.shape[:2]) for _, scores, _ in batched] == sizes
    assert len(batched) == len(alone) == 5
    for (image, scores, truth), (image_b, scores_b, truth_b) in zip(alone, batched, strict=True):
        np.testing.assert_array_equal(image.numpy(), image_b.numpy())
        np.testing.assert_array_equal(truth.numpy(), truth_b.numpy())
        # Bit for bit with oneDNN's AVX-512 kernels; with its AVX2 ones a batch rounds
        # differently (up to 3e-5 on the main job's networks, whose labels stay the same).
        np.testing.assert_allclose(scores.numpy(), scores_b.numpy(), rtol=1e-5, atol=1e-4)
        np.testing.assert_array_equal(np.argmax(scores, -1), np.argmax(scores_b, -1))
    one, three = (evaluate(network, examples, 4, 25, batch_size=b) for b in (1, 3))
    assert one == three and one["images"] == 5


def test_the_crf_search_scores_the_same_in_batches(tmp_path):
    from tests.helpers import save_tiny_largefov
    from tf_segunravel import crf
    from tf_segunravel.evaluation import crf_search

    if not crf.available():
        pytest.skip('the crf extra: pip install ".[crf]"')
    network = save_tiny_largefov(tmp_path / "net.keras", 4)
    examples, _ = _examples(3)
    list(examples)  # fills the cache: both passes read the same examples
    grid = [crf.CRFSettings(iterations=2), crf.CRFSettings(bilateral_weight=6.0, iterations=2)]
    alone = crf_search(network, examples, 4, grid, pad_size=25)
    batched = crf_search(network, examples, 4, grid, pad_size=25, batch_size=2)
    assert [row["mean_iou"] for row in batched] == [row["mean_iou"] for row in alone]
