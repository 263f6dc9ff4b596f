"""Label conventions shared by every dataset: VOC classes, the VOC colour map, validation."""

import io
import typing

import numpy as np
from PIL import Image

from tf_segunravel.errors import InputError

if typing.TYPE_CHECKING:
    import tensorflow_datasets as tfds

IGNORE_LABEL = 255

VOC_CLASSES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)


def class_name(class_names: typing.Sequence[str] | None, cls: int) -> str:
    """The name of class id `cls`, or the id as text when there are no names for it."""
    cls = int(cls)
    return class_names[cls] if class_names and 0 <= cls < len(class_names) else str(cls)


def segmentation_features() -> "tfds.features.FeaturesDict":
    """The TFDS features every segmentation dataset here shares (VOC's layout)."""
    import tensorflow_datasets as tfds

    return tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=(None, None, 3)),
            "segmentation": tfds.features.Image(shape=(None, None, 1)),
            "filename": tfds.features.Text(),
        }
    )


def voc_colormap(size: int = 256) -> np.ndarray:
    """The PASCAL VOC palette: [size, 3] uint8, class id -> RGB (bit-interleaved, as VOCdevkit)."""
    colormap = np.zeros((size, 3), np.uint8)
    for index in range(size):
        value, r, g, b = index, 0, 0, 0
        for bit in range(8):
            r |= ((value >> 0) & 1) << (7 - bit)
            g |= ((value >> 1) & 1) << (7 - bit)
            b |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        colormap[index] = (r, g, b)
    return colormap


def read_image(source: typing.Any, name: str) -> np.ndarray:
    """Decodes an image file (path or bytes) to uint8 RGB [H, W, 3].

    Grey, palette, RGBA and 16-bit files are converted to 8-bit RGB (16-bit by scaling, not
    clipping). Raises `InputError` naming `name` when the file is missing or not an image.
    """
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            image.load()
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                array = np.asarray(image, np.float64)
                peak = 65535.0 if image.mode.startswith("I;16") else max(array.max(), 1.0)
                grey = np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
                return np.repeat(grey[..., None], 3, axis=-1)
            return np.asarray(image.convert("RGB"), np.uint8)
    except FileNotFoundError as e:
        raise InputError(f"{name}: no such file") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(f"{name}: not a readable image ({e})") from e


def read_label_png(source: typing.Any, name: str) -> np.ndarray:
    """Decodes a label PNG to uint8 class ids [H, W].

    Palette PNGs (VOC's) are read as palette indices, never as colours; grey PNGs as values.
    """
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            image.load()
            if image.mode not in ("P", "L"):
                raise InputError(
                    f"{name}: label image must be a palette or grey PNG of class ids, "
                    f"got mode {image.mode}"
                )
            return np.asarray(image, np.uint8)
    except FileNotFoundError as e:
        raise InputError(f"{name}: no such file") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(f"{name}: not a readable label image ({e})") from e


def check_example(image: np.ndarray, mask: np.ndarray, num_classes: int, name: str) -> None:
    """Raises `InputError` naming `name` unless image and mask agree and labels are valid."""
    if image.shape[:2] != mask.shape[:2]:
        raise InputError(
            f"{name}: image is {image.shape[1]}x{image.shape[0]} but its mask is "
            f"{mask.shape[1]}x{mask.shape[0]} (width x height)"
        )
    values = np.unique(mask)
    bad = values[(values >= num_classes) & (values != IGNORE_LABEL)]
    if bad.size:
        raise InputError(
            f"{name}: label values {bad.tolist()} outside 0..{num_classes - 1} and {IGNORE_LABEL}"
        )
