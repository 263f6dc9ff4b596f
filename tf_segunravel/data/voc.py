"""`voc2012_segmentation`: PASCAL VOC 2012 segmentation, with SBD for DeepLab's `train_aug`.

Splits: `train` (1,464), `val` (1,449) and `train_aug` (10,582 = VOC train + SBD train/val
- VOC val, DeepLab's list). Where an image has both a VOC and an SBD annotation, `train_aug`
uses VOC's, which has the void (255) boundary band; SBD-only images have no void pixels.

Sources, in order: TFDS's manual dir (`~/tensorflow_datasets/downloads/manual/` by default)
holding `VOCtrainval_11-May-2012.tar` or its extracted `VOCdevkit/`, plus for SBD
`benchmark.tgz`, its extracted `benchmark_RELEASE/` (or `dataset/`) folder, or a
`SegmentationClassAug/` folder of label PNGs; else the official archives are downloaded.
"""

import os

import numpy as np
import tensorflow_datasets as tfds

from tf_segunravel.data.labels import (
    VOC_CLASSES,
    check_example,
    read_image,
    read_label_png,
    segmentation_features,
)
from tf_segunravel.errors import InputError

VOC_TAR = "VOCtrainval_11-May-2012.tar"
SBD_TGZ = "benchmark.tgz"
VOC_URL = "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/" + VOC_TAR
SBD_URL = (
    "http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/" + SBD_TGZ
)

_INSTRUCTIONS = f"""
Put into the manual dir (`tfds.download.DownloadConfig(manual_dir=...)` or
`~/tensorflow_datasets/downloads/manual/`):
  - `{VOC_TAR}` or its extracted `VOCdevkit/` folder (needed for every split);
  - for `train_aug`: `{SBD_TGZ}`, its extracted `benchmark_RELEASE/` (or `dataset/`) folder,
    or a `SegmentationClassAug/` folder of label PNGs.
Without them the archives are downloaded.
"""


def _find(root, candidates):
    for relative in candidates:
        path = os.path.join(root, relative)
        if os.path.exists(path):
            return path
    return None


def _read_list(path):
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def read_sbd_mat(path: str) -> np.ndarray:
    """Class ids [H, W] from an SBD `cls/*.mat` file (MATLAB struct GTcls.Segmentation)."""
    import scipy.io

    try:
        gt = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)["GTcls"]
        return np.asarray(gt.Segmentation, np.uint8)
    except (OSError, KeyError, AttributeError, ValueError) as e:
        raise InputError(f"{path}: not an SBD class annotation (GTcls.Segmentation): {e}") from e


class Voc2012Segmentation(tfds.core.GeneratorBasedBuilder):
    """PASCAL VOC 2012 semantic segmentation (+ SBD train_aug)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS

    def _info(self):
        return self.dataset_info_from_configs(
            description=__doc__,
            features=segmentation_features(),
            supervised_keys=("image", "segmentation"),
            homepage="http://host.robots.ox.ac.uk/pascal/VOC/voc2012/",
            metadata=tfds.core.MetadataDict(class_names=list(VOC_CLASSES)),
        )

    def _manual_dir(self, dl_manager):
        try:
            return os.fspath(dl_manager.manual_dir)
        except (AssertionError, ValueError):
            return None

    def _voc_root(self, dl_manager, manual):
        found = manual and _find(manual, ["VOCdevkit/VOC2012", "VOC2012"])
        if not found:
            archive = manual and _find(manual, [VOC_TAR])
            extracted = dl_manager.extract(archive) if archive else None
            if extracted is None:
                extracted = dl_manager.download_and_extract(VOC_URL)
            found = _find(os.fspath(extracted), ["VOCdevkit/VOC2012", "VOC2012"])
        if not found:
            raise InputError(f"no VOCdevkit/VOC2012 folder found; {_INSTRUCTIONS}")
        return found

    def _sbd_labels(self, dl_manager, manual):
        """{image id: label source} from SBD: a `.mat` path or a SegmentationClassAug PNG."""
        aug = manual and _find(manual, ["SegmentationClassAug"])
        if aug:
            return {os.path.splitext(n)[0]: os.path.join(aug, n) for n in os.listdir(aug)}
        roots = ["benchmark_RELEASE/dataset", "dataset"]
        dataset = manual and _find(manual, roots)
        if not dataset:
            archive = manual and _find(manual, [SBD_TGZ])
            extracted = dl_manager.extract(archive) if archive else None
            if extracted is None:
                extracted = dl_manager.download_and_extract(SBD_URL)
            dataset = _find(os.fspath(extracted), roots)
        if not dataset:
            raise InputError(f"no SBD dataset/cls folder found; {_INSTRUCTIONS}")
        ids = _read_list(os.path.join(dataset, "train.txt"))
        ids += _read_list(os.path.join(dataset, "val.txt"))
        return {i: os.path.join(dataset, "cls", f"{i}.mat") for i in ids}

    def _split_generators(self, dl_manager):
        manual = self._manual_dir(dl_manager)
        voc = self._voc_root(dl_manager, manual)
        lists = os.path.join(voc, "ImageSets", "Segmentation")
        train, val = _read_list(f"{lists}/train.txt"), _read_list(f"{lists}/val.txt")
        voc_label = {i: os.path.join(voc, "SegmentationClass", f"{i}.png") for i in train + val}
        splits = {
            "train": self._generate_examples(voc, [(i, voc_label[i]) for i in train]),
            "val": self._generate_examples(voc, [(i, voc_label[i]) for i in val]),
        }
        sbd = self._sbd_labels(dl_manager, manual)
        aug_ids = sorted((set(train) | set(sbd)) - set(val))
        pairs = [(i, voc_label.get(i) or sbd[i]) for i in aug_ids]
        splits["train_aug"] = self._generate_examples(voc, pairs)
        return splits

    def _generate_examples(self, voc, pairs):
        num_classes = len(VOC_CLASSES)
        for image_id, label_path in pairs:
            image_path = os.path.join(voc, "JPEGImages", f"{image_id}.jpg")
            image = read_image(image_path, image_path)
            if label_path.endswith(".mat"):
                mask = read_sbd_mat(label_path)
            else:
                mask = read_label_png(label_path, label_path)
            check_example(image, mask, num_classes, label_path)
            yield image_id, {"image": image, "segmentation": mask[..., None], "filename": image_id}
