"""The model zoo: which architectures the unravel traces, and its cost next to a forward pass.

    python3 -m bench.zoo [--size=224 --repeats=3 --models=ResNet50,MobileNetV2]

Every network is built as a user would (`keras.applications.<Name>(weights=None)`, the
ImageNet classifier on top, random weights) at --size x --size, plus two segmentation
networks built here: a U-Net (Conv2DTranspose with skip concatenations) and a DeepLabV3+
head on ResNet50 (ASPP with dilations, image pooling with keepdims, bilinear UpSampling),
and keras-hub's SegFormer-B0 (the keras-hub extra), the B0 configuration with random weights.
For each: `traced` (yes, or the error), `forward_s` (compiled forward pass, one image) and
`unravel_s` (the engine's walk from the scores to the image on the recorded activations,
default settings), medians of --repeats. One `name: value` line per figure; the ratios come
last.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags

from bench.timing import median_seconds
from tf_segunravel.unravel import SegUnravel

flags.DEFINE_integer("size", 224, "Square image side.")
flags.DEFINE_integer("repeats", 3, "Timed runs per network.")
flags.DEFINE_list("models", None, "Only these rows (default: all).")
FLAGS = flags.FLAGS

A = keras.applications
L = keras.layers

APPLICATIONS = {
    "VGG16": A.VGG16,
    "VGG19": A.VGG19,
    "ResNet50": A.ResNet50,
    "ResNet101": A.ResNet101,
    "ResNet152": A.ResNet152,
    "ResNet50V2": A.ResNet50V2,
    "ResNet101V2": A.ResNet101V2,
    "ResNet152V2": A.ResNet152V2,
    "InceptionV3": A.InceptionV3,
    "InceptionResNetV2": A.InceptionResNetV2,
    "Xception": A.Xception,
    "MobileNet": A.MobileNet,
    "MobileNetV2": A.MobileNetV2,
    "MobileNetV3Small": A.MobileNetV3Small,
    "MobileNetV3Large": A.MobileNetV3Large,
    "DenseNet121": A.DenseNet121,
    "EfficientNetB0": A.EfficientNetB0,
    "EfficientNetV2B0": A.EfficientNetV2B0,
    "ConvNeXtTiny": A.ConvNeXtTiny,
    "NASNetMobile": A.NASNetMobile,
}


def unet(size, classes=21, base=16):
    """A small U-Net: strided encoder, Conv2DTranspose decoder, skip concatenations."""
    inp = keras.Input((size, size, 3))
    skips, x = [], inp
    for level in range(4):
        x = L.Conv2D(base * 2**level, 3, padding="same", activation="relu")(x)
        x = L.Conv2D(base * 2**level, 3, padding="same", activation="relu")(x)
        skips.append(x)
        x = L.MaxPooling2D(2)(x)
    x = L.Conv2D(base * 16, 3, padding="same", activation="relu")(x)
    for level in reversed(range(4)):
        x = L.Conv2DTranspose(base * 2**level, 2, strides=2)(x)
        x = L.Concatenate()([x, skips[level]])
        x = L.Conv2D(base * 2**level, 3, padding="same", activation="relu")(x)
    return keras.Model(inp, L.Conv2D(classes, 1)(x), name="unet")


def deeplabv3_plus(size, classes=21):
    """DeepLabV3+ on ResNet50: ASPP (1x1, three dilated 3x3, image pooling with keepdims),
    bilinear upsampling, the low-level skip, and the decoder."""
    backbone = A.ResNet50(weights=None, include_top=False, input_shape=(size, size, 3))
    high = backbone.get_layer("conv4_block6_out").output  # stride 16
    low = backbone.get_layer("conv2_block3_out").output  # stride 4
    branches = [L.Conv2D(256, 1, activation="relu")(high)]
    for rate in (6, 12, 18):
        branches.append(
            L.Conv2D(256, 3, padding="same", dilation_rate=rate, activation="relu")(high)
        )
    pooled = L.GlobalAveragePooling2D(keepdims=True)(high)
    pooled = L.Conv2D(256, 1, activation="relu")(pooled)
    branches.append(L.UpSampling2D(size // 16, interpolation="bilinear")(pooled))
    x = L.Conv2D(256, 1, activation="relu")(L.Concatenate()(branches))
    x = L.UpSampling2D(4, interpolation="bilinear")(x)
    low = L.Conv2D(48, 1, activation="relu")(low)
    x = L.Concatenate()([x, low])
    x = L.Conv2D(256, 3, padding="same", activation="relu")(x)
    x = L.Conv2D(classes, 1)(x)
    scores = L.UpSampling2D(4, interpolation="bilinear")(x)
    return keras.Model(backbone.input, scores, name="deeplabv3_plus")


def segformer_b0(size, classes=150):
    """keras-hub's SegFormerImageSegmenter with MiT-B0's configuration (ADE20K's 150
    classes), as `SegFormerImageSegmenter.from_preset("segformer_b0_ade20k_512")` builds it
    but with random weights: presets download, which a benchmark must not need."""
    import keras_hub

    from tf_segunravel.models.segformer import segformer_b0_backbone

    backbone = segformer_b0_backbone(size)
    return keras_hub.models.SegFormerImageSegmenter(backbone=backbone, num_classes=classes)


def build(name, size):
    if name == "U-Net":
        return unet(size)
    if name == "SegFormer-B0":
        return segformer_b0(size)
    if name == "DeepLabV3+ (ResNet50)":
        return deeplabv3_plus(size)
    return APPLICATIONS[name](weights=None, input_shape=(size, size, 3))


def measure(name, size, repeats):
    """(traced, forward_s, unravel_s); traced is 'yes' or the first line of the error."""
    keras.utils.set_random_seed(0)
    model = build(name, size)
    image = tf.constant(np.random.default_rng(0).uniform(0, 255, (1, size, size, 3)), tf.float32)
    forward = tf.function(lambda x: model(x, training=False))
    forward_s = median_seconds(lambda: forward(image).numpy(), repeats)
    try:
        engine = SegUnravel(model)
    except (ValueError, NotImplementedError) as e:
        return str(e).splitlines()[0], forward_s, None
    record = tf.function(lambda x: {str(k): v for k, v in engine.record(x).items()})
    walk = tf.function(lambda values: engine.walk({int(k): v for k, v in values.items()}))
    values = record(image)
    unravel_s = median_seconds(lambda: walk(values).counts.numpy(), repeats)
    result = walk(values).numpy()
    assert result.counts.sum() == result.seeds.sum(), name  # no path lost
    return "yes", forward_s, unravel_s


def main(_):
    names = FLAGS.models or [*APPLICATIONS, "U-Net", "DeepLabV3+ (ResNet50)", "SegFormer-B0"]
    print(f"cpu_cores: {os.cpu_count()}")
    print(f"size: {FLAGS.size}")
    ratios = {}
    for name in names:
        traced, forward_s, unravel_s = measure(name, FLAGS.size, FLAGS.repeats)
        key = name.lower().replace(" ", "_").replace("(", "").replace(")", "").replace("+", "plus")
        key = key.replace("-", "_")
        print(f"{key}_traced: {traced}")
        print(f"{key}_forward_s: {forward_s:.3f}")
        if unravel_s is not None:
            print(f"{key}_unravel_s: {unravel_s:.3f}")
            ratios[f"{key}_unravel_over_forward"] = unravel_s / forward_s
        keras.backend.clear_session()
    for key, value in ratios.items():
        print(f"{key}: {value:.3f}")


if __name__ == "__main__":
    app.run(main)
