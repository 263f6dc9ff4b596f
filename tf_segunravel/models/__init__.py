"""DeepLab-LargeFOV and its pretrained initialisations."""

from tf_segunravel.models.deeplab_largefov import (
    FEATURE_LAYER,
    OUTPUT_STRIDE,
    SCORE_LAYER,
    deeplab_largefov,
    with_features,
)
from tf_segunravel.models.layers import CaffePooling2D, CaffePreprocess
from tf_segunravel.models.weights import (
    convert_caffemodel,
    load_caffemodel_weights,
    load_vgg16_weights,
)

__all__ = [
    "FEATURE_LAYER",
    "OUTPUT_STRIDE",
    "SCORE_LAYER",
    "CaffePooling2D",
    "CaffePreprocess",
    "convert_caffemodel",
    "deeplab_largefov",
    "load_caffemodel_weights",
    "load_vgg16_weights",
    "with_features",
]
