"""`segunravel_shapes`: a generated, controlled-evidence scene set (no download).

Every image is one background scene (water, road, grass or wall) with up to four objects:

- intrinsic classes (ball, kite, crate) are recognisable from their own shape and colour and
  appear on any scene;
- the contextual pair (boat, car) is one and the same grey hull, drawn by the same code from
  the same distributions; it is a boat on water and a car on road, and appears nowhere else.
  Only the surrounding scene tells the two apart, so a faithful unravel must reach outside
  the object for them.

Masks carry a 1-pixel void band (255) on both sides of each object boundary, as VOC's do.
Generation is deterministic: example `i` of a split depends only on (seed, split, i).
"""

import io

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from tf_segunravel.data.labels import IGNORE_LABEL, segmentation_features

CLASS_NAMES = ("background", "boat", "car", "ball", "kite", "crate")
CLASS_KINDS = ("background", "contextual", "contextual", "intrinsic", "intrinsic", "intrinsic")
SCENES = ("water", "road", "grass", "wall")
# The hull's class on each scene that allows it.
HULL_CLASS_BY_SCENE = {"water": CLASS_NAMES.index("boat"), "road": CLASS_NAMES.index("car")}
INTRINSIC_CLASSES = tuple(i for i, kind in enumerate(CLASS_KINDS) if kind == "intrinsic")
IMAGE_SIZE = 129
SPLITS = {"train": 2000, "val": 500}
SEED = 20170516


# ------------------------------------------------------------------------------ scenes


def _scene(kind, size, rng):
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    noise = rng.normal(0, 1, (size, size, 1)).astype(np.float32)
    if kind == "water":
        phase, period = rng.uniform(0, 2 * np.pi), rng.uniform(6, 12)
        waves = np.sin(yy / period * 2 * np.pi + np.sin(xx / 17.0) + phase)[..., None]
        image = np.array([30, 90, 170]) + 25 * waves * np.array([0.5, 0.8, 1.0]) + 8 * noise
    elif kind == "road":
        image = np.array([62, 62, 66]) + 10 * noise
        lane = np.abs(yy - size / 2 + rng.uniform(-8, 8)) < 1.5
        dashes = ((xx + rng.uniform(0, 20)) % 20) < 11
        image = np.where((lane & dashes)[..., None], np.array([235, 235, 225]), image)
    elif kind == "grass":
        blades = np.sin(xx * 1.7 + rng.uniform(0, 6)) * np.sin(yy * 0.6)
        image = np.array([55, 135, 45]) + 18 * blades[..., None] + 20 * noise
    else:  # wall: bricks with mortar lines
        row = (yy // 10).astype(int)
        shifted = xx + (row % 2) * 10
        mortar = ((yy % 10) < 1.5) | ((shifted % 20) < 1.5)
        brick = np.array([150, 70, 50]) + 12 * noise
        image = np.where(mortar[..., None], np.array([200, 195, 185]) + 5 * noise, brick)
    return image


# ----------------------------------------------------------------------------- objects


def _hull(size, rng):
    """The shared boat/car body: a tapered hull with a cabin; grey, same law for both."""
    h, w = int(rng.integers(18, 26)), int(rng.integers(30, 42))
    yy, xx = np.mgrid[0:h, 0:w]
    body_top = h // 2
    taper = (yy - body_top) * 0.6
    body = (yy >= body_top) & (xx >= taper) & (xx < w - taper)
    cabin = (yy >= 2) & (yy < body_top) & (xx >= w // 4) & (xx < 3 * w // 4)
    mask = body | cabin
    grey = rng.uniform(120, 175)
    colour = np.full((h, w, 3), grey) + rng.normal(0, 6, (h, w, 1))
    colour[cabin & ~body] -= 35  # darker windows on the cabin
    return mask, colour


def _ball(size, rng):
    d = int(rng.integers(16, 28))
    yy, xx = np.mgrid[0:d, 0:d] - (d - 1) / 2
    mask = yy**2 + xx**2 <= (d / 2) ** 2
    shade = 1.0 - 0.3 * (np.hypot(yy + d / 5, xx + d / 5) / d)
    colour = np.array([205, 35, 35]) * shade[..., None] + rng.normal(0, 5, (d, d, 1))
    return mask, colour


def _kite(size, rng):
    s = int(rng.integers(18, 30))
    yy, xx = np.mgrid[0:s, 0:s]
    mask = np.abs(xx - (s - 1) / 2) <= yy / 2  # upward-pointing triangle
    colour = np.full((s, s, 3), [235, 205, 40]) + rng.normal(0, 6, (s, s, 1))
    return mask, colour


def _crate(size, rng):
    s = int(rng.integers(16, 26))
    yy, xx = np.mgrid[0:s, 0:s]
    mask = np.ones((s, s), bool)
    cross = (np.abs(yy - xx) < 2) | (np.abs(yy + xx - (s - 1)) < 2)
    frame = (yy < 2) | (xx < 2) | (yy >= s - 2) | (xx >= s - 2)
    colour = np.full((s, s, 3), [200, 120, 40]) + rng.normal(0, 6, (s, s, 1))
    colour[cross | frame] = [110, 60, 20]
    return mask, colour


_DRAWERS = {"boat": _hull, "car": _hull, "ball": _ball, "kite": _kite, "crate": _crate}


def _shift(mask, dy, dx):
    out = np.zeros_like(mask)
    h, w = mask.shape
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = mask[
        max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def boundary_band(mask: np.ndarray) -> np.ndarray:
    """Pixels within one step (8-neighbourhood) of the boundary of a boolean mask."""
    dilated = np.zeros_like(mask)
    eroded = np.ones_like(mask)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            dilated |= _shift(mask, dy, dx)
            eroded &= _shift(mask, dy, dx)
    return dilated & ~eroded


def generate_example(
    split: str, index: int, size: int = IMAGE_SIZE, seed: int = SEED
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Example `index` of `split`: (image uint8 [H, W, 3], mask uint8 [H, W], truth dict).

    `truth` lists the scene and, per object, its class, top-left corner and own pixel mask,
    so tests can check the stored labels against what was drawn.
    """
    rng = np.random.default_rng([seed, list(SPLITS).index(split), index])
    scene = SCENES[int(rng.integers(len(SCENES)))]
    image = _scene(scene, size, rng)
    labels = np.zeros((size, size), np.uint8)
    void = np.zeros((size, size), bool)
    occupied = np.zeros((size, size), bool)

    classes = []
    if scene in HULL_CLASS_BY_SCENE and rng.uniform() < 0.85:
        classes.append(HULL_CLASS_BY_SCENE[scene])
    classes += [int(c) for c in rng.choice(INTRINSIC_CLASSES, int(rng.integers(0, 3)))]

    objects = []
    for cls in classes:
        mask, colour = _DRAWERS[CLASS_NAMES[cls]](size, rng)
        h, w = mask.shape
        for _ in range(20):  # rejection sampling for a free spot, 2 px apart from the others
            y, x = int(rng.integers(2, size - h - 2)), int(rng.integers(2, size - w - 2))
            if not occupied[y - 2 : y + h + 2, x - 2 : x + w + 2].any():
                break
        else:
            continue
        placed = np.zeros((size, size), bool)
        placed[y : y + h, x : x + w] = mask
        occupied |= placed
        image[placed] = colour[mask]
        labels[placed] = cls
        void |= boundary_band(placed)
        objects.append({"class": cls, "top_left": (y, x), "mask": placed})
    labels[void] = IGNORE_LABEL
    image = np.clip(image + 0.5, 0, 255).astype(np.uint8)
    return image, labels, {"scene": scene, "objects": objects}


class SegunravelShapes(tfds.core.GeneratorBasedBuilder):
    """Controlled-evidence scenes with intrinsic and contextual classes, VOC-style masks."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def _info(self):
        return self.dataset_info_from_configs(
            description=__doc__,
            features=segmentation_features(),
            supervised_keys=("image", "segmentation"),
            metadata=tfds.core.MetadataDict(
                class_names=list(CLASS_NAMES),
                class_kinds=list(CLASS_KINDS),
                scenes=list(SCENES),
                image_size=IMAGE_SIZE,
                seed=SEED,
            ),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download: every example is generated.
        return {split: self._generate_examples(split, count) for split, count in SPLITS.items()}

    def _generate_examples(self, split, count):
        for index in range(count):
            image, labels, _ = generate_example(split, index)
            filename = f"{split}_{index:05d}"
            yield (
                filename,
                {
                    "image": _png(image),
                    "segmentation": _png(labels),
                    "filename": filename,
                },
            )


def _png(array):
    """PNG bytes of a uint8 [H, W] or [H, W, 3] array. Lossless, like TFDS's own encoding of
    an array, but a third of its time (zlib level 1), which is most of preparing the data."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
