"""Fixations for image files: what `tools/fixations.py` writes for each image.

For an image `<stem>` the output dir receives, each written atomically:
  <stem>.npz   points int32 [N, 3] (class, y, x) sorted, counts int32 [N] (float64 path
               weights under --path_weight=contribution), labels int32
               [H, W] (prediction at image size), classes int32 [C], maps float32 [C, H, W]
  <stem>.png   the overlay figure
  <stem>.json  per class: seeds, fixation points, how many the heat map's outlier removal
               dropped, shares inside the predicted (and, with a mask, the ground-truth)
               segment, plain and count-weighted
  <stem>_flow.gif  with flow on: one frame per layer
"""

import dataclasses
import glob
import os
import typing
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
from PIL import Image

from tf_segunravel import methods
from tf_segunravel.atomic import check_output_dir, make_output_dir, save_atomically, write_json
from tf_segunravel.data.labels import class_name, read_image, read_label_png
from tf_segunravel.errors import InputError
from tf_segunravel.grids import first_argmax, scores_at_size
from tf_segunravel.loading import as_loaded
from tf_segunravel.unravel.graph import as_graph
from tf_segunravel.unravel.maps import heatmap_sigma, heatmaps, inlier_mask
from tf_segunravel.unravel.rules import UntraceableLayerError
from tf_segunravel.unravel.settings import FixationSettings
from tf_segunravel.unravel.tracer import MAX_COUNT, SegUnravel, UnravelResult

if typing.TYPE_CHECKING:
    from tf_segunravel.crf import CRFSettings
    from tf_segunravel.export import SavedModelReader
from tf_segunravel.viz import comparison_figure, flow_gif, overlay_figure

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


def expand_images(specs: Sequence[str]) -> list[str]:
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
            raise InputError(f"images={spec}: matches no image")
        paths += found
    return list(dict.fromkeys(paths))


def _share(inside, weights):
    return float(weights[inside].sum() / weights.sum()) if weights.sum() else 0.0


def class_statistics(
    classes: np.ndarray,
    seeds: typing.Any,
    points: np.ndarray,
    counts: np.ndarray,
    labels: np.ndarray,
    truth: np.ndarray | None = None,
    inliers: np.ndarray | None = None,
) -> dict[str, dict]:
    """Per class: seeds, fixation points, how many of them the heat map's outlier removal
    dropped (`inliers`, bool [N], when given), and shares of fixations inside its segments."""
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
        if inliers is not None:
            entry["outliers_dropped"] = int((~inliers[mine]).sum())
        if truth is not None:
            entry["inside_truth"] = _share(truth[ys, xs] == cls, np.ones_like(weights))
            entry["inside_truth_weighted"] = _share(truth[ys, xs] == cls, weights)
        stats[str(cls)] = entry
    return stats


class KerasFixations:
    """Fixations of a Keras model through the engine."""

    def __init__(
        self,
        model: typing.Any,
        settings: FixationSettings,
        flow: bool = False,
        name: str | None = None,
    ) -> None:
        """`name`: how an error names the model (its path, where it was loaded from one;
        else the Keras model's name)."""
        self._name = name or getattr(model, "name", None) or model.model.name  # model or graph
        try:
            # Without the flow, the graph's engine for these settings (`methods.engine_for`):
            # made once per graph, so writers and experiments handed one graph trace it once.
            self.engine = (
                SegUnravel(model, settings, keep_flow=True)
                if flow
                else methods.engine_for(as_graph(model, strict=False), settings)
            )
        except ValueError as e:  # a model or setting the engine cannot take
            raise InputError(f"{self._name}: {e}") from e

    def __call__(
        self,
        image: np.ndarray,
        seed_labels: np.ndarray | None = None,
        classes: typing.Any = None,
        probabilities: bool = False,
    ) -> tuple[UnravelResult, np.ndarray, np.ndarray | None]:
        """(`UnravelResult` of a batch of one, predicted labels [H, W], and with
        `probabilities` the softmax at image size [H, W, C], else None) for one image."""
        labels = None if seed_labels is None else seed_labels[None]
        try:
            result = self.engine(image[None], seed_labels=labels, classes=classes)
        except UntraceableLayerError as e:  # refused when traced (path_weight=contribution)
            raise InputError(f"{self._name}: {e}") from e
        full = scores_at_size(result.scores, image.shape[0], image.shape[1], result.geometry)[0]
        softmax = tf.nn.softmax(full, axis=-1).numpy() if probabilities else None
        return result, first_argmax(full, axis=-1).numpy().astype(np.int32), softmax


def rescale_points(
    result: UnravelResult, from_size: tuple[int, int], to_size: tuple[int, int]
) -> UnravelResult:
    """`result` with its points moved from an image of `from_size` to one of `to_size`
    (pixel centres scaled), identical points merged and their counts added; its geometry,
    where it has one, placed on the new size's pixels."""
    (from_h, from_w), (to_h, to_w) = from_size, to_size
    if (from_h, from_w) == (to_h, to_w):
        return result
    points = result.points.copy()
    points[:, 2] = np.minimum(np.floor((points[:, 2] + 0.5) * to_h / from_h), to_h - 1)
    points[:, 3] = np.minimum(np.floor((points[:, 3] + 0.5) * to_w / from_w), to_w - 1)
    keys, inverse = np.unique(points, axis=0, return_inverse=True)
    # bincount sums in float64: exact to 2^53 paths; beyond int64 the sum saturates at
    # int64's largest, as the engine's counts do (a plain cast would wrap to negative).
    sums = np.bincount(inverse.ravel(), weights=result.counts, minlength=len(keys))
    if np.issubdtype(np.asarray(result.counts).dtype, np.floating):  # path weights: sums
        geometry = _rescaled_geometry(result.geometry, from_size, to_size)
        return result._replace(points=keys.astype(np.int32), counts=sums, geometry=geometry)
    fits = np.minimum(sums, np.nextafter(2.0**63, 0)).astype(np.int64)
    counts = np.where(sums >= 2.0**63, MAX_COUNT, fits)
    geometry = _rescaled_geometry(result.geometry, from_size, to_size)
    return result._replace(points=keys.astype(np.int32), counts=counts, geometry=geometry)


def _rescaled_geometry(geometry, from_size, to_size):
    """A score grid's geometry on the pixels of `to_size` instead of `from_size`'s."""
    if geometry is None:
        return None
    # score i over small pixel s i + o: over big (s i + o + 0.5) r - 0.5
    ratio = np.array([to_size[0] / from_size[0], to_size[1] / from_size[1]], np.float32)
    geometry = np.asarray(geometry, np.float32)
    return np.stack([geometry[:, 0] * ratio, (geometry[:, 1] + 0.5) * ratio - 0.5], 1)


class FixationWriter:
    """Unravels image files one by one and writes their fixation files.

    `model` is a `loading.LoadedModel`, a Keras model or `ModelGraph`, or a path
    `loading.load_model` reads (a SavedModel's settings were fixed at export; then only
    `settings`' heat-map fields apply).
    """

    def __init__(
        self,
        model: typing.Any,
        output_dir: str,
        settings: FixationSettings | None = None,
        *,
        classes: Sequence[int] | None = None,
        class_names: Sequence[str] | None = None,
        max_side: int | None = None,
        flow: bool = False,
        seed_from_masks: bool = False,
        crf_settings: "CRFSettings | None" = None,
        compare: Sequence[str] = (),
        gradcam_layer: str | None = None,
    ) -> None:
        self.settings = settings or FixationSettings()
        self.compare = tuple(compare)
        self.gradcam_layer = gradcam_layer
        self.crf_settings = crf_settings
        loaded = as_loaded(model)
        self.fixations: SavedModelReader | KerasFixations
        if loaded.saved_model is not None:
            if flow:
                raise InputError("flow=True needs a Keras model, not a SavedModel")
            self.fixations = loaded.saved_model
        else:
            self.fixations = KerasFixations(loaded.graph, self.settings, flow, loaded.path)
        if self.compare:
            loaded.keras("compare")  # a SavedModel keeps no gradients
            methods.check(self.compare, flag="compare")
        self.output_dir = output_dir
        self.classes = classes
        self.class_names = class_names or loaded.class_names
        self.max_side = max_side
        self.flow = flow
        self.seed_from_masks = seed_from_masks
        check_output_dir(output_dir)  # made at the first image written, not before
        self._output_made = False

    def _prepare(self, image):
        height, width = image.shape[:2]
        if self.max_side and max(height, width) > self.max_side:
            scale = self.max_side / max(height, width)
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
        return image

    def process(self, image_path: str, mask_path: str | None = None) -> dict:
        """Writes the files of one image; returns its per-class statistics."""
        return self.write(self.compute(image_path, mask_path))

    def compute(self, image_path: str, mask_path: str | None = None) -> "ImageFixations":
        """Everything about one image file, computed and held in memory; nothing written.
        The same for a Keras model and a SavedModel."""
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
        seed_labels = None
        if self.seed_from_masks and truth is not None:
            seed_labels = np.asarray(
                Image.fromarray(truth).resize(small.shape[1::-1], Image.Resampling.NEAREST)
            )
        use_crf = self.crf_settings is not None
        result, labels, probabilities = self.fixations(
            small, seed_labels, self.classes, probabilities=use_crf
        )
        if use_crf:  # the labels drawn and scored; the seeds stay the network's
            from tf_segunravel.crf import dense_crf

            assert probabilities is not None and self.crf_settings is not None
            labels = dense_crf(small, probabilities, self.crf_settings)
        flow = result.flow
        result = rescale_points(result, small.shape[:2], (height, width))
        if labels.shape != (height, width):
            labels = np.asarray(
                Image.fromarray(labels).resize((width, height), Image.Resampling.NEAREST)
            )
        seeds = result.seeds[0]
        points, counts = result.for_image(0)
        weights = np.issubdtype(counts.dtype, np.floating)  # path_weight=contribution
        if not weights and counts.size and counts.max() > np.iinfo(np.int32).max:
            raise InputError(f"{image_path}: path counts overflow int32; use a smaller k=")
        classes = np.flatnonzero(seeds).astype(np.int32)
        # The outlier removal runs once: its mask both draws the maps (as `fixation_maps`
        # would) and counts what it dropped for the statistics.
        rows = np.concatenate([np.zeros((len(points), 1), np.int32), points], axis=1)
        inliers = np.ones(len(points), bool)
        if self.settings.outlier_radius > 0 and len(points):
            inliers = inlier_mask(rows, height, width, self.settings.outlier_radius).numpy()
        sigma = heatmap_sigma(self.settings, result.geometry, height, width)
        class_maps = heatmaps(
            rows[inliers],
            counts[inliers],
            batch=1,
            num_classes=len(seeds),
            height=height,
            width=width,
            sigma=sigma,
            outlier_radius=0,
            weighted=self.settings.weighted,
            ranking=self.settings.ranking,
            labels=labels[None],
        ).numpy()[0][classes]
        compared = {}
        if self.compare:
            from tf_segunravel.baselines import predicted_regions

            assert isinstance(self.fixations, KerasFixations)  # compare= needs one
            regions = predicted_regions(self.fixations.engine.graph, small)  # once, every method
            compared = {
                method: self._baseline_maps(method, small, classes, (height, width), regions)
                for method in self.compare
            }
        stats = class_statistics(classes, seeds, points, counts, labels, truth, inliers)
        if self.class_names:
            for key, entry in stats.items():
                entry["name"] = class_name(self.class_names, int(key))
        return ImageFixations(
            path=image_path,
            image=image,
            fed=small,
            labels=labels.astype(np.int32),
            classes=classes,
            points=points.astype(np.int32),
            counts=counts,
            maps=class_maps.astype(np.float32),
            statistics=stats,
            flow=flow if self.flow else None,
            compared=compared,
        )

    def _baseline_maps(self, method, fed, classes, size, regions):
        """A method's maps of `classes` [C, H, W] on the image's own pixels (an entry of
        `methods`): computed on the pixels the model saw, the regions from the same network,
        resized bilinearly."""
        graph = self.fixations.engine.graph
        options = methods.MethodOptions(self.settings, self.gradcam_layer)
        batch = (regions[0][None], regions[1][None])
        classes = [int(c) for c in classes]
        try:
            maps = methods.get(method).maps(graph, fed[None], classes, batch, 0, options)[0]
        except UntraceableLayerError as e:  # refused only when traced (path_weight=contribution)
            raise InputError(f"--compare={method}: {e}") from e
        if maps.shape[1:] != size:
            maps = tf.image.resize(maps[..., None], size, method="bilinear").numpy()[..., 0]
        return maps.astype(np.float32)

    def write(self, fixations: "ImageFixations") -> dict:
        """Writes one image's files (`<stem>.npz`, `.png`, `.json`, `_flow.gif` with flow),
        each atomically; returns the JSON summary."""
        stem = os.path.splitext(os.path.basename(fixations.path))[0]
        base = os.path.join(self.output_dir, stem)
        if not self._output_made:
            make_output_dir(self.output_dir)
            self._output_made = True
        arrays = {
            "points": fixations.points,
            # Path counts as int32, or path weights (path_weight=contribution) as float64.
            "counts": fixations.counts.astype(
                np.float64 if np.issubdtype(fixations.counts.dtype, np.floating) else np.int32
            ),
            "labels": fixations.labels,
            "classes": fixations.classes,
            "maps": fixations.maps,
            **{f"compare_{method}": maps for method, maps in fixations.compared.items()},
        }
        save_atomically(base + ".npz", lambda p: np.savez_compressed(p, **arrays))
        if fixations.compared:
            comparison_figure(
                fixations.image,
                fixations.classes,
                {"fixations": fixations.maps, **fixations.compared},
                self.class_names,
                base + "_compare.png",
            )
        overlay_figure(
            fixations.image,
            fixations.labels,
            fixations.classes,
            fixations.maps,
            fixations.points,
            fixations.counts,
            self.class_names,
            base + ".png",
        )
        if fixations.flow is not None:
            flow_gif(fixations.fed, fixations.flow, base + "_flow.gif")
        height, width = fixations.labels.shape
        summary = {
            "image": fixations.path,
            "height": height,
            "width": width,
            "classes": fixations.statistics,
        }
        write_json(base + ".json", summary)
        return summary


@dataclasses.dataclass
class ImageFixations:
    """One image's fixations, computed by `FixationWriter.compute` (nothing written yet).

    path: the image file; image: its RGB pixels [H, W, 3] uint8; fed: the pixels the model
    saw (resized by `max_side`); labels int32 [H, W] (after the CRF when on); classes int32
    [C] the classes with seeds; points int32 [N, 3] (class, y, x) and counts int64 [N] in
    the image's own pixels; maps float32 [C, H, W], the heat maps of `classes`; statistics
    the per-class numbers the JSON holds; flow the flow steps (with flow=True); compared
    {method: float32 [C, H, W]}, the baselines' maps of `classes` (with compare=).
    """

    path: str
    image: np.ndarray
    fed: np.ndarray
    labels: np.ndarray
    classes: np.ndarray
    points: np.ndarray
    counts: np.ndarray
    maps: np.ndarray
    statistics: dict
    flow: tuple | None = None
    compared: dict = dataclasses.field(default_factory=dict)
