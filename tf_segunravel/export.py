"""SavedModel export with segmentation and fixation signatures.

Signatures (all take uint8 RGB images of any size; preprocessing lives inside the graph):
  serving_default  images [N, H, W, 3] -> labels int32 [N, H, W], probabilities float32
                   [N, H, W, C] (DeepLab's x8 aligned-corner bilinear upsampling, softmax),
                   scores float32 [N, h, w, C] (stride-8, pre-softmax)
  fixations        images [N, H, W, 3] -> points int32 [P, 4] (image, class, y, x), counts
                   int64 [P], seeds int32 [N, C], maps float32 [N, C, H, W], labels;
                   contrastive when exported with a `contrast` setting
  serving_bytes    encoded JPEG/PNG strings [N] (same size) -> as serving_default
  metadata         () -> the unravel and input settings fixed at export time, the score
                   output, num_classes, class_names (a binary head's two) and, for a
                   one-channel head, binary_head (the layer it is split at, the per-element
                   layers seen through, the sign)

The settings are also written to `assets.extra/tf_segunravel.json`. The SavedModel needs
only TensorFlow to load and run. `SavedModelReader` reads one back as the fixation tool does
(`loading.load_model` picks it for a SavedModel directory).
"""

import json
import os
import shutil
import tempfile
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from tf_segunravel.atomic import make_output_dir
from tf_segunravel.errors import InputError
from tf_segunravel.grids import first_argmax, labels_at_size, scores_at_size
from tf_segunravel.unravel.geometry import ScoreMap
from tf_segunravel.unravel.graph import as_graph
from tf_segunravel.unravel.maps import fixation_maps, heatmap_sigma
from tf_segunravel.unravel.settings import FixationSettings
from tf_segunravel.unravel.tracer import SegUnravel, UnravelResult

METADATA_FILE = "tf_segunravel.json"


def _checked(images):
    """A runtime shape check at the signature's door. Signatures do not verify shapes, and a
    rank-3 or 4-channel tensor would otherwise abort the process inside a kernel; this fails
    with "Shape of tensor images [..] is not compatible with expected shape [?,?,?,3]"."""
    return tf.ensure_shape(images, [None, None, None, 3])


def build_archive(
    network: keras.Model, settings: FixationSettings | None = None, name: str | None = None
) -> tuple[keras.export.ExportArchive, dict]:
    """(A `keras.export.ExportArchive` holding every signature for `network`, the metadata
    dict); `settings` (a `FixationSettings`) are fixed into the `fixations` signature.

    `network` is a Keras model or a `graph.ModelGraph`; the graph's input settings, score
    output, stepped-over activation, binary head and fixed input size are baked into every
    signature, which take uint8 RGB images of any size as the tools do. `name`: how an error
    names the model (the path it was loaded from; by default the Keras model's name)."""
    settings = settings or FixationSettings()
    graph = as_graph(network, strict=False)
    try:
        # No held kernel tables: the SavedModel would carry two copies of every kernel.
        engine = SegUnravel(graph, settings, cache_kernels=False)
    except ValueError as error:  # a contrast this model's score layer cannot take, ...
        raise InputError(f"{name or graph.model.name}: {error}") from error
    score_map = ScoreMap(graph)
    num_classes = graph.num_classes
    images_spec = tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")

    def segment(images):
        images = _checked(images)
        height, width = tf.shape(images)[1], tf.shape(images)[2]
        scores, geometry = score_map(images)
        full = scores_at_size(scores, height, width, geometry)
        return {
            "labels": tf.cast(first_argmax(full, axis=-1), tf.int32),
            "probabilities": tf.nn.softmax(full, axis=-1),
            "scores": scores,
        }

    def fixations(images):
        images = _checked(images)
        height, width = tf.shape(images)[1], tf.shape(images)[2]
        result = engine.trace(images)
        return {
            "points": result.points,
            "counts": result.counts,
            "seeds": result.seeds,
            "maps": fixation_maps(result, height, width, settings),
            "labels": labels_at_size(result.scores, height, width, result.geometry),
        }

    def decode(encoded):
        return tf.map_fn(
            lambda data: tf.io.decode_image(data, channels=3, expand_animations=False),
            encoded,
            fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8),
        )

    recorded = {
        **settings.as_dict(),
        **{f"input_{name}": value for name, value in graph.input_settings.as_dict().items()},
        "output": graph.output_name,
        "num_classes": int(num_classes),
        "class_names": list(graph.class_names) if graph.class_names else None,
    }
    if graph.split is not None:  # where a one-channel head is split, and with which sign
        recorded["binary_head"] = graph.split.describe()

    def metadata():
        return {key: tf.constant(str(value)) for key, value in recorded.items()}

    archive = keras.export.ExportArchive()
    archive.track(graph.model)
    archive.add_endpoint("serving_default", segment, [images_spec])
    archive.add_endpoint("fixations", fixations, [images_spec])
    archive.add_endpoint(
        "serving_bytes",
        lambda encoded: segment(decode(encoded)),
        [tf.TensorSpec([None], tf.string, name="encoded")],
    )
    archive.add_endpoint("metadata", metadata, [])
    return archive, recorded


def export_saved_model(
    network: keras.Model,
    export_dir: str,
    settings: FixationSettings | None = None,
    overwrite: bool = False,
    name: str | None = None,
) -> dict:
    """Writes the SavedModel to `export_dir` atomically (a temporary dir moved into place);
    `name` as for `build_archive`."""
    export_dir = os.path.abspath(export_dir)
    if os.path.exists(export_dir) and not overwrite:
        raise InputError(f"{export_dir}: already exists; pass overwrite=True to replace it")
    parent = os.path.dirname(export_dir)
    # Built first: a model the unravel refuses leaves no directory behind.
    archive, recorded = build_archive(network, settings, name)
    make_output_dir(parent, "export_dir", shown=export_dir)
    staging = tempfile.mkdtemp(prefix=".export-", dir=parent)
    try:
        archive.write_out(staging, verbose=False)
        extra = os.path.join(staging, "assets.extra")
        os.makedirs(extra, exist_ok=True)
        with open(os.path.join(extra, METADATA_FILE), "w") as f:
            json.dump(recorded, f, indent=2)
        if os.path.exists(export_dir):
            old = tempfile.mkdtemp(prefix=".replaced-", dir=parent)
            os.replace(export_dir, os.path.join(old, "model"))
            os.replace(staging, export_dir)
            shutil.rmtree(old)
        else:
            os.replace(staging, export_dir)
    finally:
        if os.path.exists(staging):
            shutil.rmtree(staging)
    return recorded


def is_saved_model(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "saved_model.pb"))


def saved_model_metadata(path: str) -> dict:
    """The settings and class count recorded in an exported SavedModel."""
    try:
        with open(os.path.join(path, "assets.extra", METADATA_FILE)) as f:
            recorded = json.load(f)
        int(recorded["num_classes"])
        return recorded
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{path}: SavedModel lacks assets.extra/{METADATA_FILE}") from e


class SavedModelReader:
    """An exported SavedModel read back: its recorded settings, and fixations from its
    `fixations` signature (the unravel and input settings fixed there at export)."""

    def __init__(self, path: str):
        self.path = path
        self.metadata = saved_model_metadata(path)
        self.num_classes = int(self.metadata["num_classes"])
        self.class_names = self.metadata.get("class_names")
        try:
            self._loaded = tf.saved_model.load(path)  # keeps the variables alive
            self.signature = self._loaded.signatures["fixations"]
        except (OSError, ValueError, KeyError) as e:
            raise InputError(f"{path}: not a SavedModel with a 'fixations' signature") from e

    def __call__(
        self,
        image: np.ndarray,
        seed_labels: np.ndarray | None = None,
        classes: Sequence[int] | None = None,
        probabilities: bool = False,
    ) -> tuple[UnravelResult, np.ndarray, np.ndarray | None]:
        """As `fixation_files.KerasFixations`: (`UnravelResult` of a batch of one, labels
        [H, W], softmax [H, W, C] with `probabilities`, else None)."""
        if seed_labels is not None:
            raise InputError("seeding from masks needs a Keras model, not a SavedModel")
        sigma = self.metadata.get("sigma")
        if self.metadata.get("sigma_unit", "pixels") == "pixels" and isinstance(sigma, int | float):
            # The signature draws its own maps and asserts this (`heatmap_sigma`'s rule, run
            # in the graph); the same rule here says it in one line, naming the export.
            height, width = image.shape[:2]
            try:
                heatmap_sigma(FixationSettings(sigma=float(sigma)), None, height, width)
            except InputError:
                raise InputError(
                    f"{self.path}: exported with sigma={sigma:g} px, a heat-map blur wider "
                    f"than this {height} x {width} image; export it again with a smaller --sigma"
                ) from None
        out = {k: v.numpy() for k, v in self.signature(images=tf.constant(image[None])).items()}
        points, counts, seeds = out["points"], out["counts"], out["seeds"]
        if classes is not None:  # each class's points come from its own seeds only
            keep = np.isin(points[:, 1], classes)
            points, counts = points[keep], counts[keep]
            seeds = np.where(np.isin(np.arange(seeds.shape[1]), classes), seeds, 0)
        result = UnravelResult(points, counts, labels=None, seeds=seeds, scores=None)
        softmax = None
        if probabilities:  # the fixations signature has labels only; one more forward pass
            segment = self._loaded.signatures["serving_default"]
            softmax = segment(images=tf.constant(image[None]))["probabilities"].numpy()[0]
        return result, out["labels"][0], softmax
