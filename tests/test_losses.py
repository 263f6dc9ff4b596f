"""The losses against independent numpy computations written from docs/method.md section 3."""

import numpy as np
import pytest
import tensorflow as tf

from tf_segunravel.grids import shrink_labels
from tf_segunravel.losses import (
    class_templates,
    cross_entropy,
    template_similarities,
    template_similarity_loss,
)


def similarity_ref(a, b, kind):
    a, b = a.astype(np.float64), b.astype(np.float64)
    if kind == "correlation":
        a, b = a - a.mean(), b - b.mean()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return 0.0 if na == 0 or nb == 0 else float(a @ b / (na * nb))


def template_loss_ref(features, scores, labels, kind, selective, reduction):
    """Loops over labels and pixels, exactly as the method is stated."""
    f = features.reshape(-1, features.shape[-1])
    o = scores.reshape(-1, scores.shape[-1])
    y = labels.reshape(-1)
    valid = y != 255
    present = [c for c in range(o.shape[1]) if (valid & (y == c)).any()]
    if not present:
        return 0.0
    counted = valid & (o.argmax(1) != y) if selective else valid
    total = 0.0
    for c in present:
        members = np.where(valid & (y == c))[0]
        template = f[members[np.argmax(o[members, c])]]  # np.argmax: first of ties
        for p in np.where(counted)[0]:
            s = similarity_ref(f[p], template, kind)
            total += -s if y[p] == c else s
    loss = total / len(present)
    return loss / valid.sum() if reduction == "mean" else loss


def random_batch(seed, classes=4, depth=6, zero_pixels=3, void=4, label_set=None):
    rng = np.random.default_rng(seed)
    features = np.maximum(rng.normal(size=(2, 3, 4, depth)), 0).astype(np.float32)
    features.reshape(-1, depth)[rng.choice(24, zero_pixels, replace=False)] = 0
    scores = rng.normal(size=(2, 3, 4, classes)).astype(np.float32)
    labels = rng.choice(label_set or range(classes), size=(2, 3, 4)).astype(np.int32)
    labels.reshape(-1)[rng.choice(24, void, replace=False)] = 255
    return features, scores, labels


@pytest.mark.parametrize("kind", ["cosine", "correlation"])
@pytest.mark.parametrize("selective", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_template_loss_matches_numpy(kind, selective, reduction, seed):
    features, scores, labels = random_batch(seed)
    got = template_similarity_loss(features, scores, labels, kind, selective, reduction=reduction)
    want = template_loss_ref(features, scores, labels, kind, selective, reduction)
    np.testing.assert_allclose(float(got), want, rtol=1e-5, atol=1e-6)


def test_ties_pick_the_first_pixel():
    features, scores, labels = random_batch(3)
    scores[:] = 1.0  # every pixel ties for every class
    want = template_loss_ref(features, scores, labels, "cosine", False, "mean")
    got = template_similarity_loss(features, scores, labels)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)


@pytest.mark.parametrize("kind", ["cosine", "correlation"])
def test_one_label_only(kind):
    features, scores, labels = random_batch(4, label_set=[2])
    want = template_loss_ref(features, scores, labels, kind, False, "mean")
    got = template_similarity_loss(features, scores, labels, kind)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    assert want < 0  # only gains: every pixel is pulled towards its own template


def test_no_label_present_gives_zero():
    features, scores, labels = random_batch(5)
    labels[:] = 255
    assert float(template_similarity_loss(features, scores, labels)) == 0.0


@pytest.mark.parametrize("kind", ["cosine", "correlation"])
@pytest.mark.parametrize("selective", [False, True])
def test_gradients_are_finite_with_zero_vectors(kind, selective):
    features, scores, labels = random_batch(6, zero_pixels=10)
    features = tf.Variable(features)
    scores = tf.Variable(scores)
    with tf.GradientTape() as tape:
        loss = template_similarity_loss(features, scores, labels, kind, selective)
    grads = tape.gradient(loss, [features, scores])
    assert np.isfinite(grads[0].numpy()).all()
    assert np.abs(grads[0].numpy()).sum() > 0


def test_works_under_xla():
    features, scores, labels = random_batch(7)
    compiled = tf.function(
        lambda f, s, y: template_similarity_loss(f, s, y, "correlation", True), jit_compile=True
    )
    want = template_loss_ref(features, scores, labels, "correlation", True, "mean")
    np.testing.assert_allclose(float(compiled(features, scores, labels)), want, rtol=1e-5)


def test_rejects_unknown_options():
    features, scores, labels = random_batch(0)
    with pytest.raises(ValueError, match="similarity"):
        template_similarity_loss(features, scores, labels, similarity="dot")
    with pytest.raises(ValueError, match="reduction"):
        template_similarity_loss(features, scores, labels, reduction="max")


def test_cross_entropy_ignores_void_and_averages_valid_pixels():
    _, scores, labels = random_batch(8)
    flat_scores, flat_labels = scores.reshape(-1, 4).astype(np.float64), labels.reshape(-1)
    valid = flat_labels != 255
    log_probs = flat_scores - np.log(np.exp(flat_scores).sum(1, keepdims=True))
    want = -log_probs[valid, flat_labels[valid]].mean()
    np.testing.assert_allclose(float(cross_entropy(scores, labels)), want, rtol=1e-5)


def test_shrink_labels_samples_every_eighth_pixel():
    labels = np.arange(321 * 321).reshape(1, 321, 321) % 1000
    small = shrink_labels(tf.constant(labels), (41, 41)).numpy()
    np.testing.assert_array_equal(small, labels[:, ::8, ::8])
    assert shrink_labels(tf.constant(labels[:, :320, :320]), (41, 41)).shape == (1, 41, 41)


@pytest.mark.parametrize("kind", ["cosine", "correlation"])
def test_template_similarities_average_the_present_pairs(kind):
    features, scores, labels = random_batch(3, label_set=[0, 1, 3])  # class 2 absent
    *_, templates, present = class_templates(features, scores, labels)
    f, o, y = features.reshape(-1, 6), scores.reshape(-1, 4), labels.reshape(-1)
    chosen = {}
    for c in (0, 1, 3):
        members = np.where(y == c)[0]
        chosen[c] = f[members[np.argmax(o[members, c])]]
    np.testing.assert_array_equal(present.numpy(), [True, True, False, True])
    pairs = [(a, b) for a in chosen for b in chosen if a != b]
    want = np.mean([similarity_ref(chosen[a], chosen[b], kind) for a, b in pairs])
    got = template_similarities(templates, present, kind)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    one = tf.constant([True, False, False, False])
    assert float(template_similarities(templates, one, kind)) == 0.0
