"""Caffe's optimisation pieces: lr multipliers, coupled decay, schedules, freezing."""

import keras
import numpy as np
import pytest

from tf_segunravel.models import deeplab_largefov
from tf_segunravel.training.optim import (
    LinearWarmup,
    caffe_gradients,
    freeze_all_but_last,
    learning_rate_schedule,
    lr_multiplier,
)


def test_lr_multipliers_follow_deeplab():
    model = deeplab_largefov(num_classes=3, width=1 / 16)
    mults = {
        v.path.split("/")[-2] + "/" + v.path.split("/")[-1]: lr_multiplier(v)
        for v in model.trainable_variables
    }
    assert mults["conv1_1/kernel"] == 1 and mults["conv1_1/bias"] == 2
    assert mults["fc7/kernel"] == 1 and mults["fc7/bias"] == 2
    assert mults["fc8/kernel"] == 10 and mults["fc8/bias"] == 20


def test_decay_is_coupled_and_on_kernels_only():
    model = deeplab_largefov(num_classes=3, width=1 / 16)
    variables = model.trainable_variables
    ones = [np.ones(v.shape, np.float32) for v in variables]
    out = caffe_gradients(ones, variables, weight_decay=0.5, use_lr_multipliers=True)
    for g, v in zip(out, variables, strict=True):
        w = v.numpy()
        if v.path.endswith("kernel"):
            np.testing.assert_allclose(g, lr_multiplier(v) * (1 + 0.5 * w), rtol=1e-6)
        else:
            np.testing.assert_allclose(g, lr_multiplier(v) * np.ones_like(w))


def test_schedules_match_caffe_formulas():
    step = learning_rate_schedule("step", 1e-3, 6000, step_size=2000, gamma=0.1)
    for it in [0, 1999, 2000, 4500, 5999]:
        np.testing.assert_allclose(float(step(it)), 1e-3 * 0.1 ** (it // 2000), rtol=1e-6)
    poly = learning_rate_schedule("poly", 1e-3, 6000, power=0.9)
    for it in [0, 100, 3000, 5999, 6000]:
        np.testing.assert_allclose(
            float(poly(it)), 1e-3 * (1 - it / 6000) ** 0.9, rtol=2e-4, atol=1e-12
        )
    with pytest.raises(ValueError, match="lr policy"):
        learning_rate_schedule("cosine", 1e-3, 10)


@pytest.mark.parametrize("policy", ["poly", "step"])
def test_warmup_ramps_linearly_then_hands_over_to_the_policy(policy):
    plain = learning_rate_schedule(policy, 0.03, 2500, step_size=1000)
    warm = learning_rate_schedule(policy, 0.03, 2500, step_size=1000, warmup_steps=250)
    for it in [0, 1, 124, 248]:
        np.testing.assert_allclose(float(warm(it)), float(plain(it)) * (it + 1) / 250, rtol=1e-5)
    for it in [249, 250, 1000, 2499]:
        assert float(warm(it)) == float(plain(it))
    assert type(learning_rate_schedule(policy, 0.03, 2500)) is type(plain)
    assert isinstance(warm, LinearWarmup) and not isinstance(plain, LinearWarmup)


def test_warmup_schedule_round_trips_through_keras_serialisation():
    warm = learning_rate_schedule("poly", 0.03, 2500, warmup_steps=250)
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(warm))
    assert [float(again(it)) for it in (0, 100, 1000)] == [float(warm(it)) for it in (0, 100, 1000)]


def test_freeze_all_but_last_three():
    model = deeplab_largefov(num_classes=3, width=1 / 16)
    assert freeze_all_but_last(model, 3) == ["fc6", "fc7", "fc8"]
    assert len(model.trainable_variables) == 6
    with pytest.raises(ValueError, match="train_layers"):
        freeze_all_but_last(deeplab_largefov(num_classes=3, width=1 / 16), 17)
