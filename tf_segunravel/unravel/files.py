"""Fixations for image files: what `tools/fixations.py` writes for each image.

For an image `<stem>` the output dir receives, each written atomically:
  <stem>.npz   points int32 [N, 3] (class, y, x) sorted, counts int32 [N], labels int32
               [H, W] (prediction at image size), classes int32 [C], maps float32 [C, H, W]
  <stem>.png   the overlay figure
  <stem>.json  per class: seeds, fixation points, shares inside the predicted (and, with a
               mask, the ground-truth) segment, plain and count-weighted
  <stem>_flow.gif  with flow on: one frame per layer
"""

import glob
import os

import numpy as np
import tensorflow as tf
from PIL import Image

from tf_segunravel.atomic import save_atomically, write_json
from tf_segunravel.data.labels import read_image, read_label_png
from tf_segunravel.errors import InputError
from tf_segunravel.evaluation import scores_at_size
from tf_segunravel.unravel import maps as heat
from tf_segunravel.unravel.rules import first_argmax
from tf_segunravel.unravel.tracer import SegUnravel
from tf_segunravel.viz import flow_gif, overlay_figure

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


def expand_images(specs):
    """Files, globs and directories -> sorted unique image paths. Missing specs are errors."""
    paths = []
    for spec in specs:
        if os.path.isdir(spec):
            found = [
                os.path.join(spec, n)
                for n in sorted(os.listdir(spec))
                if os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS
            ]
        elif any(ch in spec for ch in "*?["):
            found = sorted(glob.glob(spec))
        else:
            found = [spec]  # a missing or unreadable file is reported when it is read
        if not found:
            raise InputError(f"--images={spec}: matches no image")
        paths += found
    return list(dict.fromkeys(paths))


def labels_at_image_size(scores, height, width):
    """Predicted labels [H, W] by DeepLab's protocol: x8 aligned-corner upsampling, crop."""
    full = scores_at_size(tf.convert_to_tensor(scores[None]), height, width)[0]
    return first_argmax(full, axis=-1).numpy().astype(np.int32)


def _share(inside, weights):
    return float(weights[inside].sum() / weights.sum()) if weights.sum() else 0.0


def class_statistics(classes, seeds, points, counts, labels, truth=None):
    """Per class: seeds, fixation points, and shares of fixations inside its segments."""
    stats = {}
    for cls in classes:
        mine = points[:, 0] == cls
        ys, xs, weights = points[mine, 1], points[mine, 2], counts[mine].astype(np.float64)
        entry = {
            "seeds": int(seeds[cls]),
            "fixation_points": int(mine.sum()),
            "inside_predicted": _share(labels[ys, xs] == cls, np.ones_like(weights)),
            "inside_predicted_weighted": _share(labels[ys, xs] == cls, weights),
        }
        if truth is not None:
            entry["inside_truth"] = _share(truth[ys, xs] == cls, np.ones_like(weights))
            entry["inside_truth_weighted"] = _share(truth[ys, xs] == cls, weights)
        stats[str(cls)] = entry
    return stats


class KerasFixations:
    """Fixations of a Keras model through the engine."""

    def __init__(self, model, k=1, mass=None, shift="partial", flow=False):
        self.engine = SegUnravel(model, k=k, mass=mass, shift=shift, keep_flow=flow)

    def __call__(self, image, seed_mask=None, classes=None):
        """(points [n, 3], counts [n], seeds [C], labels [H, W], flow) for one image."""
        masks = None if seed_mask is None else seed_mask[None]
        result = self.engine(image[None], masks=masks, classes=classes)
        points, counts = result.for_image(0)
        labels = labels_at_image_size(result.scores[0], image.shape[0], image.shape[1])
        return points, counts, result.seeds[0], labels, result.flow


class SavedModelFixations:
    """Fixations from an exported SavedModel's `fixations` signature (settings fixed there)."""

    def __init__(self, path):
        try:
            self._loaded = tf.saved_model.load(path)  # keeps the variables alive
            self.signature = self._loaded.signatures["fixations"]
        except (OSError, ValueError, KeyError) as e:
            raise InputError(f"{path}: not a SavedModel with a 'fixations' signature") from e

    def __call__(self, image, seed_mask=None, classes=None):
        if seed_mask is not None:
            raise InputError("seeding from masks needs a Keras model, not a SavedModel")
        out = self.signature(images=tf.constant(image[None], tf.uint8))
        points, counts = out["points"].numpy(), out["counts"].numpy()
        seeds = out["seeds"].numpy()[0]
        if classes is not None:  # each class's points come from its own seeds only
            keep = np.isin(points[:, 1], classes)
            points, counts = points[keep], counts[keep]
            seeds = np.where(np.isin(np.arange(seeds.size), classes), seeds, 0)
        return points[:, 1:], counts, seeds, out["labels"].numpy()[0], None


class FixationWriter:
    """Unravels image files one by one and writes their fixation files.

    `model` is a Keras model, or the path of a SavedModel with a `fixations` signature
    (whose K and shift were fixed at export).
    """

    def __init__(
        self,
        model,
        output_dir,
        k=1,
        mass=None,
        shift="partial",
        sigma=20.0,
        outlier_radius=0.02,
        weighted=True,
        classes=None,
        class_names=None,
        max_side=None,
        flow=False,
        seed_from_masks=False,
    ):
        if isinstance(model, str):
            if flow:
                raise InputError("--flow needs a Keras model, not a SavedModel")
            self.fixations = SavedModelFixations(model)
        else:
            self.fixations = KerasFixations(model, k, mass, shift, flow)
        self.output_dir = output_dir
        self.sigma, self.outlier_radius, self.weighted = sigma, outlier_radius, weighted
        self.classes = classes
        self.class_names = class_names
        self.max_side = max_side
        self.flow = flow
        self.seed_from_masks = seed_from_masks
        os.makedirs(output_dir, exist_ok=True)

    def _prepare(self, image):
        height, width = image.shape[:2]
        if self.max_side and max(height, width) > self.max_side:
            scale = self.max_side / max(height, width)
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
        return image

    def process(self, image_path, mask_path=None):
        """Writes the files of one image; returns its per-class statistics."""
        image = read_image(image_path, image_path)
        truth = None
        if mask_path is not None:
            truth = read_label_png(mask_path, mask_path)
            if truth.shape != image.shape[:2]:
                raise InputError(
                    f"{mask_path}: mask is {truth.shape[1]}x{truth.shape[0]} but the image "
                    f"is {image.shape[1]}x{image.shape[0]}"
                )
        height, width = image.shape[:2]
        small = self._prepare(image)
        seed_mask = None
        if self.seed_from_masks and truth is not None:
            seed_mask = np.asarray(
                Image.fromarray(truth).resize(small.shape[1::-1], Image.Resampling.NEAREST)
            )
        points, counts, seeds, labels, flow = self.fixations(small, seed_mask, self.classes)
        scale_y, scale_x = height / small.shape[0], width / small.shape[1]
        if (scale_y, scale_x) != (1.0, 1.0):  # map coordinates back to the original image
            points = points.copy()
            points[:, 1] = np.minimum(np.floor((points[:, 1] + 0.5) * scale_y), height - 1)
            points[:, 2] = np.minimum(np.floor((points[:, 2] + 0.5) * scale_x), width - 1)
            keys, inverse = np.unique(points, axis=0, return_inverse=True)
            counts = np.bincount(inverse.ravel(), weights=counts).astype(np.int64)
            points = keys
        if labels.shape != (height, width):
            labels = np.asarray(
                Image.fromarray(labels).resize((width, height), Image.Resampling.NEAREST)
            )
        classes = np.flatnonzero(seeds).astype(np.int32)
        batch_points = np.concatenate([np.zeros((len(points), 1), np.int32), points], axis=1)
        all_maps = heat.heatmaps(
            batch_points,
            counts,
            1,
            seeds.shape[0],
            height,
            width,
            self.sigma,
            self.outlier_radius,
            self.weighted,
        ).numpy()[0]
        class_maps = all_maps[classes]

        stem = os.path.splitext(os.path.basename(image_path))[0]
        base = os.path.join(self.output_dir, stem)
        stats = class_statistics(classes, seeds, points, counts, labels, truth)
        if counts.size and counts.max() > np.iinfo(np.int32).max:
            raise InputError(f"{image_path}: path counts overflow int32; use a smaller --k")
        arrays = {
            "points": points.astype(np.int32),
            "counts": counts.astype(np.int32),
            "labels": labels.astype(np.int32),
            "classes": classes,
            "maps": class_maps.astype(np.float32),
        }
        save_atomically(base + ".npz", lambda p: np.savez_compressed(p, **arrays))
        overlay_figure(
            image, labels, classes, class_maps, points, counts, self.class_names, base + ".png"
        )
        if self.flow:
            flow_gif(small, flow, base + "_flow.gif")
        summary = {"image": image_path, "height": height, "width": width, "classes": stats}
        if self.class_names:
            for key, entry in stats.items():
                entry["name"] = self._name(int(key))
        write_json(base + ".json", summary)
        return summary

    def _name(self, cls):
        names = self.class_names
        return names[cls] if cls < len(names) else str(cls)
