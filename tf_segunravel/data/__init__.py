"""Datasets and input pipelines. Importing this module registers the TFDS builders
`voc2012_segmentation` and `segunravel_shapes` with `tfds.load`."""

from tf_segunravel.data import shapes, voc  # noqa: F401  (registers the TFDS builders)
from tf_segunravel.data.folder import folder_dataset
from tf_segunravel.data.labels import IGNORE_LABEL, VOC_CLASSES, voc_colormap
from tf_segunravel.data.pipeline import eval_pipeline, load_split, train_pipeline

__all__ = [
    "IGNORE_LABEL",
    "VOC_CLASSES",
    "eval_pipeline",
    "folder_dataset",
    "load_split",
    "train_pipeline",
    "voc_colormap",
]
