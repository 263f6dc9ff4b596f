"""DeepLab-LargeFOV (VGG-16), Chen et al., ICLR 2015, as a Keras 3 functional model.

Layer names are Caffe's (`conv1_1` ... `fc8`) so that the VGG-16 and the released DeepLab
weights map onto the model by name, and so that unravel figures speak the paper's language.
"""

import keras

from tf_segunravel.models.layers import (
    AtrousConv2D,
    CaffePooling2D,
    CaffePreprocess,
    KeyedDropout,
)

# (block, number of 3x3 convs, channels at width 1, dilation) for conv1..conv5.
VGG_BLOCKS = ((1, 2, 64, 1), (2, 2, 128, 1), (3, 3, 256, 1), (4, 3, 512, 1), (5, 3, 512, 2))
# Stride of pool1..pool5: pool4 and pool5 keep the resolution, giving an output stride of 8.
POOL_STRIDES = (2, 2, 2, 1, 1)
FC_CHANNELS = 1024
FC6_DILATION = 12
OUTPUT_STRIDE = 8
FEATURE_LAYER = "drop7"
PIXEL_STD = 60.0
SCORE_LAYER = "fc8"


def scaled_channels(channels: int, width: float) -> int:
    """Channel count of a layer at a width multiplier (at least one channel)."""
    return max(1, round(channels * width))


def deeplab_largefov(
    num_classes: int = 21,
    width: float = 1.0,
    input_shape: tuple = (None, None, 3),
    dropout: float = 0.5,
    name: str = "deeplab_largefov",
    direct_dilation: bool = False,
) -> keras.Model:
    """Builds DeepLab-LargeFOV mapping RGB pixels (0..255) to pre-softmax scores at stride 8.

    Args:
      num_classes: channels of the score layer `fc8` (21 for PASCAL VOC).
      width: multiplier on every channel count; 1.0 is the published network, small values
        give tiny models for tests and CPU experiments.
      input_shape: (height, width, 3); `None` sizes accept any image size.
      dropout: rate of `drop6` and `drop7`.
      direct_dilation: build conv5 and fc6 as `AtrousConv2D` (TensorFlow's one dilated op,
        the main job's train step 28 -> 20 ms), not Keras' `Conv2D`. Off by default: the same
        sums in another order, and with oneDNN kept to AVX2 kernels the main job's baseline
        trained with it scored 4.7 points below the documented figure (docs/benchmarks.md).
      name: the model's name.

    Returns:
      A functional `keras.Model`; its output is `fc8`'s scores, [N, h, w, num_classes] with
      h = ceil(H / 8) for odd H (321 -> 41, 513 -> 65), following Caffe's pooling arithmetic.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width}")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")

    # ReLU convs start from He initialisation when trained from scratch; in practice their
    # weights are replaced by VGG-16 or DeepLab weights (`tf_segunravel.models.weights`).
    def conv(x, name, channels, kernel, dilation=1, relu=True, init="he_normal"):
        # Dilated convolutions as one op where TensorFlow can (`AtrousConv2D`), if asked.
        layer = AtrousConv2D if dilation > 1 and direct_dilation else keras.layers.Conv2D
        return layer(
            channels,
            kernel,
            padding="same",
            dilation_rate=dilation,
            activation="relu" if relu else None,
            kernel_initializer=init,
            name=name,
        )(x)

    images = keras.Input(shape=input_shape, name="image")
    x = CaffePreprocess(name="preprocess")(images)
    for (block, convs, channels, dilation), stride in zip(VGG_BLOCKS, POOL_STRIDES, strict=True):
        for i in range(1, convs + 1):
            # He initialisation assumes unit-variance inputs; the mean-subtracted pixels have
            # a standard deviation of about 60, so conv1_1 starts 60x smaller to keep every
            # later activation (and the initial scores) at unit scale.
            init = "he_normal"
            if (block, i) == (1, 1):  # built here, not at import, so the global seed applies
                init = keras.initializers.VarianceScaling(2.0 / PIXEL_STD**2, "fan_in")
            x = conv(
                x, f"conv{block}_{i}", scaled_channels(channels, width), 3, dilation, init=init
            )
        x = CaffePooling2D("max", 3, stride, 1, name=f"pool{block}")(x)
    x = CaffePooling2D("avg", 3, 1, 1, name="pool5a")(x)

    fc_channels = scaled_channels(FC_CHANNELS, width)
    x = conv(x, "fc6", fc_channels, 3, FC6_DILATION)
    x = KeyedDropout(dropout, name="drop6")(x)
    x = conv(x, "fc7", fc_channels, 1)
    x = KeyedDropout(dropout, name="drop7")(x)
    fc8_init = keras.initializers.RandomNormal(stddev=0.01)
    # Scores stay float32 under mixed precision: the losses and the softmax need the range.
    scores = keras.layers.Conv2D(
        num_classes, 1, kernel_initializer=fc8_init, dtype="float32", name=SCORE_LAYER
    )(x)
    return keras.Model(images, scores, name=name)


def with_features(model: keras.Model, feature_layer: str = FEATURE_LAYER) -> keras.Model:
    """A model sharing `model`'s weights that returns {"features", "scores"} in one pass.

    `features` is the output of `feature_layer`; by default `drop7`, the input of the final
    1x1 classifier (fc7 after its ReLU and dropout, as Caffe's in-place blob `fc7` holds it),
    which the template-similarity loss compares against per-class templates.
    """
    return keras.Model(
        model.input,
        {"features": model.get_layer(feature_layer).output, "scores": model.outputs[0]},
        name=f"{model.name}_with_features",
    )
