"""DeepLab's fully connected CRF on the upsampled softmax (docs/method.md section 1, "Dense CRF").

Mean-field inference in Krähenbühl and Koltun's fully connected CRF with a Gaussian
(smoothness) and a bilateral (appearance) kernel, through `pydensecrf2`, the maintained
binding of their code; install it with `pip install -e ".[crf]"`. A C++ library does this
job and no TensorFlow op does, so it is called rather than rewritten.

DeepLab runs the CRF on the image area only: the unary is -log of the softmax at image size
(scores upsampled x8 and cropped back, `grids.scores_at_size`), never on the padding the
network saw, and void pixels are inferred like any other (they are only left out of scoring).
"""

import dataclasses
import itertools
import typing

import numpy as np

from tf_segunravel import flag_settings
from tf_segunravel.errors import InputError
from tf_segunravel.flag_settings import at_least_one, positive, setting

# The smallest probability the unary sees: -log stays finite where the softmax underflows.
PROBABILITY_FLOOR = 1e-8
INSTALL_HINT = 'needs the crf extra: pip install -e ".[crf]"'


@dataclasses.dataclass(frozen=True)
class CRFSettings:
    """The CRF's parameters. The defaults are DeepLab-LargeFOV's released test settings
    (its `test.prototxt` DenseCRF layer: bi_w 4, bi_xy_std 121, bi_rgb_std 5, pos_w 3,
    pos_xy_std 3, 10 mean-field iterations), found there by cross-validation on 100 VOC val
    images."""

    bilateral_weight: float = setting(
        4.0,
        "CRF: bilateral (appearance) kernel weight.",
        check=positive,
        requirement="must be > 0",
    )
    bilateral_xy_std: float = setting(
        121.0,
        "CRF: bilateral kernel's spatial std (px).",
        check=positive,
        requirement="must be > 0",
    )
    bilateral_rgb_std: float = setting(
        5.0, "CRF: bilateral kernel's colour std.", check=positive, requirement="must be > 0"
    )
    gaussian_weight: float = setting(
        3.0, "CRF: Gaussian (smoothness) kernel weight.", check=positive, requirement="must be > 0"
    )
    gaussian_xy_std: float = setting(
        3.0, "CRF: Gaussian kernel's spatial std (px).", check=positive, requirement="must be > 0"
    )
    iterations: int = setting(
        10, "CRF: mean-field iterations.", check=at_least_one, requirement="must be >= 1"
    )

    def __post_init__(self):
        flag_settings.validate(self)


DEEPLAB_LARGEFOV = CRFSettings()


def _densecrf():
    try:
        import pydensecrf.densecrf as densecrf
    except ImportError as e:
        raise InputError(f"crf=True {INSTALL_HINT}") from e
    return densecrf


def available() -> bool:
    """Whether the crf extra is installed."""
    try:
        _densecrf()
    except InputError:
        return False
    return True


def dense_crf(
    image: np.ndarray, probabilities: np.ndarray, crf_settings: "CRFSettings" = DEEPLAB_LARGEFOV
) -> np.ndarray:
    """Labels int32 [H, W] after mean-field inference.

    Args:
      image: uint8 RGB [H, W, 3], the image the network saw, without padding.
      probabilities: float [H, W, C], the network's softmax at image size.
      crf_settings: a `CRFSettings`.
    """
    densecrf = _densecrf()
    height, width, classes = probabilities.shape
    if image.shape[:2] != (height, width):
        raise ValueError(f"image {image.shape[:2]} and probabilities {(height, width)} differ")
    unary = -np.log(np.maximum(probabilities.astype(np.float32), PROBABILITY_FLOOR))
    crf = densecrf.DenseCRF2D(width, height, classes)
    crf.setUnaryEnergy(np.ascontiguousarray(unary.transpose(2, 0, 1).reshape(classes, -1)))
    crf.addPairwiseGaussian(sxy=crf_settings.gaussian_xy_std, compat=crf_settings.gaussian_weight)
    crf.addPairwiseBilateral(
        sxy=crf_settings.bilateral_xy_std,
        srgb=crf_settings.bilateral_rgb_std,
        rgbim=np.ascontiguousarray(image.astype(np.uint8)),
        compat=crf_settings.bilateral_weight,
    )
    marginals = np.array(crf.inference(crf_settings.iterations)).reshape(classes, height, width)
    return marginals.argmax(axis=0).astype(np.int32)  # numpy: the lowest index wins ties


def search_grid(
    weights: typing.Sequence[float],
    xy_stds: typing.Sequence[float],
    rgb_stds: typing.Sequence[float],
    base: "CRFSettings" = DEEPLAB_LARGEFOV,
) -> list["CRFSettings"]:
    """Every `CRFSettings` of the bilateral grid, the other parameters from `base`."""
    return [
        dataclasses.replace(base, bilateral_weight=w, bilateral_xy_std=xy, bilateral_rgb_std=rgb)
        for w, xy, rgb in itertools.product(weights, xy_stds, rgb_stds)
    ]
