"""Pretrained initialisations for DeepLab-LargeFOV: Keras' VGG-16 and the released caffemodels.

Colour order: both sources expect BGR-minus-mean input (Keras' VGG-16 weights were converted
from Caffe and use `preprocess_input(mode="caffe")`), which is what the model's own
`CaffePreprocess` layer produces from RGB pixels. conv1_1 is therefore copied unchanged.
"""

import zipfile

import keras
import numpy as np

from tf_segunravel.errors import InputError
from tf_segunravel.models import caffe_proto
from tf_segunravel.models.deeplab_largefov import (
    FC_CHANNELS,
    SCORE_LAYER,
    VGG_BLOCKS,
    deeplab_largefov,
)

CONV_LAYERS = tuple(
    f"conv{block}_{i}" for block, convs, _, _ in VGG_BLOCKS for i in range(1, convs + 1)
)
WEIGHT_LAYERS = (*CONV_LAYERS, "fc6", "fc7", SCORE_LAYER)


def assign_kernel_and_bias(
    model: keras.Model, layer_name: str, kernel: np.ndarray, bias: np.ndarray, source: str
) -> None:
    """Sets a conv layer's kernel (HWIO) and bias after checking both shapes.

    Raises:
      InputError: naming the layer, the source, and the expected and actual shapes.
    """
    layer = model.get_layer(layer_name)
    expected = [tuple(v.shape) for v in layer.weights]
    actual = [tuple(np.shape(kernel)), tuple(np.shape(bias))]
    if expected != actual:
        raise InputError(
            f"{source}: layer {layer_name}: expected kernel/bias shapes {expected[0]} / "
            f"{expected[1]}, got {actual[0]} / {actual[1]}"
        )
    layer.set_weights([np.asarray(kernel, np.float32), np.asarray(bias, np.float32)])


# ----------------------------------------------------------------------------- VGG-16 (Keras)


def _keras_vgg16(source):
    import keras

    if isinstance(source, keras.Model):
        return source, "VGG16 model"
    try:
        vgg = keras.applications.VGG16(include_top=True, weights=source)
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        raise InputError(f"{source}: cannot load VGG16 (include_top=True) weights: {e}") from e
    return vgg, str(source)


def load_vgg16_weights(model: keras.Model, source: str = "imagenet") -> keras.Model:
    """Initialises conv1_1..fc7 of a width-1 LargeFOV from Keras' VGG-16 with its top.

    conv layers are copied; fc6 and fc7 are subsampled from VGG's fc1/fc2 as DeepLab did:
    fc6 keeps every 3rd spatial tap of the 7x7 kernel and every 4th of the 4096 filters
    (7x7x512x4096 -> 3x3x512x1024), fc7 every 4th input and output (4096x4096 -> 1024x1024).
    fc8 keeps its N(0, 0.01) initialisation.

    Args:
      model: a `deeplab_largefov(width=1.0)` model.
      source: "imagenet" (Keras downloads the weights when online), the path of a VGG16
        weights file (`.h5` / `.weights.h5`, with the top), or a `keras.applications.VGG16`
        model with `include_top=True`.
    """
    vgg, name = _keras_vgg16(source)
    for layer_name in CONV_LAYERS:
        block, i = layer_name[4:].split("_")
        kernel, bias = vgg.get_layer(f"block{block}_conv{i}").get_weights()
        assign_kernel_and_bias(model, layer_name, kernel, bias, name)
    fc1_kernel, fc1_bias = vgg.get_layer("fc1").get_weights()
    fc2_kernel, fc2_bias = vgg.get_layer("fc2").get_weights()
    # Flatten in channels_last order is (7, 7, 512); reshape restores the conv kernel layout.
    fc6_kernel = fc1_kernel.reshape(7, 7, 512, 4 * FC_CHANNELS)[::3, ::3, :, ::4]
    assign_kernel_and_bias(model, "fc6", fc6_kernel, fc1_bias[::4], name)
    fc7_kernel = fc2_kernel[::4, ::4].reshape(1, 1, FC_CHANNELS, FC_CHANNELS)
    assign_kernel_and_bias(model, "fc7", fc7_kernel, fc2_bias[::4], name)
    return model


# -------------------------------------------------------------------- DeepLab caffemodels


def _caffe_layer_name(blobs, layer_name, path):
    """The caffemodel layer for one of ours; fc8 may carry a dataset suffix (`fc8_voc12`)."""
    if layer_name in blobs:
        return layer_name
    if layer_name == SCORE_LAYER:
        candidates = [name for name in blobs if name.startswith(SCORE_LAYER)]
        if len(candidates) == 1:
            return candidates[0]
        if candidates:
            raise InputError(f"{path}: several score layers {candidates}, expected one fc8*")
    raise InputError(
        f"{path}: missing layer {layer_name!r} (layers with weights: {', '.join(blobs)})"
    )


def _caffe_kernel_and_bias(name, layer_blobs, path):
    if len(layer_blobs) != 2:
        raise InputError(
            f"{path}: layer {name!r}: expected 2 blobs (weights, bias), got {len(layer_blobs)}"
        )
    kernel, bias = layer_blobs
    if kernel.ndim == 2:  # InnerProduct (out, in): a 1x1 convolution.
        kernel = kernel[:, :, None, None]
    if kernel.ndim != 4:
        raise InputError(f"{path}: layer {name!r}: expected a 4-D kernel, got {kernel.shape}")
    # Caffe stores OIHW; Keras Conv2D wants HWIO. Legacy biases are (1, 1, 1, out).
    return kernel.transpose(2, 3, 1, 0), bias.reshape(-1)


def load_caffemodel_weights(model: keras.Model, path: str) -> keras.Model:
    """Loads every weight of a LargeFOV model from a DeepLab-LargeFOV `.caffemodel`."""
    blobs = caffe_proto.read_caffemodel(path)
    for layer_name in WEIGHT_LAYERS:
        caffe_name = _caffe_layer_name(blobs, layer_name, path)
        kernel, bias = _caffe_kernel_and_bias(caffe_name, blobs[caffe_name], path)
        source = path if caffe_name == layer_name else f"{path} (layer {caffe_name!r})"
        assign_kernel_and_bias(model, layer_name, kernel, bias, source)
    return model


def convert_caffemodel(path: str, num_classes: int | None = None) -> keras.Model:
    """Builds a LargeFOV model shaped like the caffemodel and loads its weights.

    The width multiplier is read off conv1_1 (64 filters at width 1) and the class count off
    fc8. Passing `num_classes` checks the file against it (a VOC model has 21).
    """
    blobs = caffe_proto.read_caffemodel(path)
    conv1_1 = _caffe_layer_name(blobs, "conv1_1", path)
    fc8 = _caffe_layer_name(blobs, SCORE_LAYER, path)
    width = blobs[conv1_1][0].shape[0] / 64
    file_classes = blobs[fc8][0].shape[0]
    if num_classes is not None and num_classes != file_classes:
        raise InputError(
            f"{path}: layer {fc8!r} scores {file_classes} classes, expected {num_classes}"
        )
    model = deeplab_largefov(num_classes=file_classes, width=width)
    return load_caffemodel_weights(model, path)
