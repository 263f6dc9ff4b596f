"""SegFormer (Xie et al., NeurIPS 2021) for training here: keras-hub's MiT encoder and all-MLP
decoder (`SegFormerBackbone`), our dropout and 1x1 classifier on top, scores at stride 4.

keras-hub's own `SegFormerImageSegmenter` ends in a resize of the scores to the image; this
network stops at the decoder's 1/4 grid, as DeepLab-LargeFOV stops at its 1/8 grid, so that
training, evaluation and the unravel read its scores as they read LargeFOV's (the labels
shrunk to the grid for the loss, the scores placed on the image by the score geometry). The
encoder and decoder are keras-hub's layers unchanged, so the unravel traces what keras-hub
ships (`unravel/rules/segformer.py`).

keras-hub is the optional `keras-hub` extra; it is imported only when a SegFormer is built.
"""

import typing

import keras

from tf_segunravel.errors import InputError

# MiT-B0's stages (the SegFormer paper's Table 6): channels, blocks, heads, sequence
# reduction, patch size and stride; its decoder projects every stage to 256 channels.
B0: dict[str, typing.Any] = {
    "hidden_dims": [32, 64, 160, 256],
    "layerwise_depths": [2, 2, 2, 2],
    "layerwise_num_heads": [1, 2, 5, 8],
    "layerwise_sr_ratios": [8, 4, 2, 1],
    "layerwise_patch_sizes": [7, 3, 3, 3],
    "layerwise_strides": [4, 2, 2, 2],
    "projection_filters": 256,
}
# The layer whose output the template loss compares (the classifier's input) and the
# classifier, as in `deeplab_largefov`'s FEATURE_LAYER and SCORE_LAYER.
FEATURE_LAYER = "head_dropout"
SCORE_LAYER = "classifier"
OUTPUT_STRIDE = 4
# The encoder's total stride: keras-hub's MiT reshapes each stage's tokens to
# image_size / stride, so the image side must be a multiple of it.
TOTAL_STRIDE = 32


def _scaled(channels: int, heads: int, width: float) -> int:
    """`channels` x `width`, rounded to a multiple of `heads` (at least one per head)."""
    return max(heads, round(channels * width / heads) * heads)


def segformer_b0_backbone(
    image_size: int, width: float = 1.0, drop_path_rate: float = 0.1
) -> keras.Model:
    """keras-hub's `SegFormerBackbone` (MiT-B0 encoder, all-MLP decoder) with every channel
    count multiplied by `width` (rounded to a multiple of the stage's heads)."""
    try:
        import keras_hub
    except ImportError as e:
        raise InputError(
            f"architecture=segformer_b0 needs keras-hub: pip install 'tf-segunravel[keras-hub]' "
            f"({e})"
        ) from e
    heads = B0["layerwise_num_heads"]
    dims = [_scaled(c, h, width) for c, h in zip(B0["hidden_dims"], heads, strict=True)]
    encoder = keras_hub.models.MiTBackbone(
        layerwise_depths=B0["layerwise_depths"],
        num_layers=len(dims),
        layerwise_num_heads=heads,
        layerwise_sr_ratios=B0["layerwise_sr_ratios"],
        max_drop_path_rate=drop_path_rate,
        layerwise_patch_sizes=B0["layerwise_patch_sizes"],
        layerwise_strides=B0["layerwise_strides"],
        image_shape=(image_size, image_size, 3),
        hidden_dims=dims,
    )
    return keras_hub.models.SegFormerBackbone(
        image_encoder=encoder,
        projection_filters=max(1, round(B0["projection_filters"] * width)),
    )


def segformer_b0(
    num_classes: int,
    width: float = 1.0,
    dropout: float = 0.1,
    image_size: int = 129,
    drop_path_rate: float = 0.1,
) -> keras.Model:
    """SegFormer-B0 for `num_classes` classes on square `image_size` images, every channel
    count multiplied by `width` (heads kept, channels rounded to a multiple of them).

    keras-hub's MiT reads its token count as a square grid of a size fixed when it is built,
    so the network takes images of `image_size` x `image_size` (a multiple of 32); other
    sizes are resized to it by the unravel and the tools (`ModelGraph.feed`).
    """
    if image_size % TOTAL_STRIDE:
        raise InputError(
            f"crop_size={image_size}: segformer_b0 needs a multiple of {TOTAL_STRIDE} (its "
            f"encoder's stages halve the grid down to 1/{TOTAL_STRIDE}), for example "
            f"{max(TOTAL_STRIDE, image_size // TOTAL_STRIDE * TOTAL_STRIDE)}"
        )
    backbone = segformer_b0_backbone(image_size, width, drop_path_rate)
    images = keras.Input((image_size, image_size, 3), name="images")
    features = keras.layers.Dropout(dropout, name=FEATURE_LAYER)(backbone(images))
    scores = keras.layers.Conv2D(num_classes, 1, name=SCORE_LAYER)(features)
    return keras.Model(images, scores, name="segformer_b0")
