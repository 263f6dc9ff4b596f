"""Caffe's optimisation for DeepLab: SGD with momentum, lr multipliers, L2 decay, schedules.

Keras' SGD with momentum updates v = m*v - lr*g, w += v, which is Caffe's SGDSolver. What
Keras does not have is Caffe's per-blob `lr_mult` and coupled L2 `weight_decay` (added to the
gradient before the learning rate, unlike AdamW-style decoupled decay), so those two are
applied to the gradients here.
"""

import typing

import keras
import tensorflow as tf

from tf_segunravel.models.deeplab_largefov import SCORE_LAYER

LR_POLICIES = ("step", "poly")


def learning_rate_schedule(
    policy: str,
    base_lr: float,
    max_steps: int,
    step_size: int = 2000,
    gamma: float = 0.1,
    power: float = 0.9,
    warmup_steps: int = 0,
) -> keras.optimizers.schedules.LearningRateSchedule:
    """Caffe's "step" (base * gamma^floor(step / step_size)) or "poly" (base * (1 -
    step / max_steps)^power) policy, as Keras schedules, after `warmup_steps` of linear
    warm-up (`LinearWarmup`; 0: none, Caffe's behaviour)."""
    if policy == "step":
        schedule = keras.optimizers.schedules.ExponentialDecay(
            base_lr, decay_steps=step_size, decay_rate=gamma, staircase=True
        )
    elif policy == "poly":
        schedule = keras.optimizers.schedules.PolynomialDecay(
            base_lr, decay_steps=max_steps, end_learning_rate=0.0, power=power
        )
    else:
        raise ValueError(f"lr policy must be one of {LR_POLICIES}, got {policy!r}")
    return LinearWarmup(schedule, warmup_steps) if warmup_steps else schedule


@keras.saving.register_keras_serializable(package="tf_segunravel")
class LinearWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """`schedule(step) * (step + 1) / warmup_steps` for the first `warmup_steps` steps, then
    `schedule(step)` (the policy keeps counting from step 0: the ramp scales its first steps
    rather than delaying it).

    Written here because only Keras' `CosineDecay` has a warm-up; the Caffe policies do not.
    The first step already trains (at base_lr / warmup_steps), so no step is wasted at 0.
    """

    def __init__(
        self, schedule: keras.optimizers.schedules.LearningRateSchedule, warmup_steps: int
    ) -> None:
        if warmup_steps < 1:
            raise ValueError(f"warmup_steps must be >= 1, got {warmup_steps}")
        self.schedule = schedule
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step: tf.Tensor) -> tf.Tensor:
        rate = self.schedule(step)
        ramp = (tf.cast(step, rate.dtype) + 1.0) / float(self.warmup_steps)
        return rate * tf.minimum(ramp, 1.0)

    def get_config(self) -> dict:
        return {
            "schedule": keras.saving.serialize_keras_object(self.schedule),
            "warmup_steps": self.warmup_steps,
        }

    @classmethod
    def from_config(cls, config: dict) -> "LinearWarmup":
        schedule = keras.saving.deserialize_keras_object(config["schedule"])
        return cls(schedule, config["warmup_steps"])


def lr_multiplier(variable: keras.Variable, score_layer: str = SCORE_LAYER) -> float:
    """DeepLab's lr_mult: 1 for kernels and 2 for biases, 10 and 20 in the score layer."""
    is_bias = variable.path.endswith("bias")
    in_score_layer = variable.path.split("/")[-2] == score_layer
    return (20.0 if is_bias else 10.0) if in_score_layer else (2.0 if is_bias else 1.0)


def caffe_gradients(
    gradients: typing.Sequence[tf.Tensor | None],
    variables: typing.Sequence[keras.Variable],
    weight_decay: float = 5e-4,
    use_lr_multipliers: bool = True,
) -> list:
    """g' = lr_mult * (g + weight_decay * w) for kernels, lr_mult * g for biases."""
    out: list = []
    for gradient, variable in zip(gradients, variables, strict=True):
        if gradient is None:
            out.append(None)
            continue
        if variable.path.endswith("kernel"):
            gradient = gradient + weight_decay * tf.cast(variable.value, gradient.dtype)
        if use_lr_multipliers:
            gradient = gradient * lr_multiplier(variable)
        out.append(gradient)
    return out


def freeze_all_but_last(network: keras.Model, train_layers: int) -> list[str]:
    """Freezes every weight layer but the last `train_layers` (0 keeps all trainable).

    The dissertation fine-tunes fc6, fc7 and fc8 only: `train_layers=3`.
    """
    weighted = [layer for layer in network.layers if layer.weights]
    if not 0 <= train_layers <= len(weighted):
        raise ValueError(f"train_layers must be in 0..{len(weighted)}, got {train_layers}")
    if train_layers:
        for layer in weighted[:-train_layers]:
            layer.trainable = False
    return [layer.name for layer in weighted if layer.trainable]
