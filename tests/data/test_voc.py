"""voc2012_segmentation from a fake VOC tree and a fake SBD set in the official layouts."""

import os
import tarfile

import numpy as np
import pytest
import scipy.io
import tensorflow_datasets as tfds
from PIL import Image

import tf_segunravel.data  # noqa: F401  (registers the builders)
from tf_segunravel.data.labels import voc_colormap

TRAIN, VAL = ["2007_000032", "2007_000039"], ["2007_000033", "2008_000002"]
SBD_TRAIN, SBD_VAL = ["2008_000003", "2007_000033"], ["2007_000039", "2009_000001"]


def fake_mask(seed, shape=(23, 31)):
    rng = np.random.default_rng(seed)
    mask = np.zeros(shape, np.uint8)
    cls = int(rng.integers(1, 21))
    mask[5:15, 8:20] = cls
    mask[4, 8:20] = mask[15, 8:20] = 255  # void band, as VOC draws it
    mask[0, 0] = int(rng.integers(1, 21))
    return mask


def write_palette_png(path, mask):
    image = Image.fromarray(mask, mode="P")
    image.putpalette(voc_colormap().ravel().tolist())
    image.save(path)


def make_voc_tree(root, bad_label=False):
    voc = os.path.join(root, "VOCdevkit", "VOC2012")
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        os.makedirs(os.path.join(voc, sub), exist_ok=True)
    truth = {}
    for i, image_id in enumerate(sorted(set(TRAIN + VAL + SBD_TRAIN + SBD_VAL))):
        rng = np.random.default_rng(i)
        Image.fromarray(rng.integers(0, 255, (23, 31, 3), dtype=np.uint8)).save(
            os.path.join(voc, "JPEGImages", f"{image_id}.jpg")
        )
    for i, image_id in enumerate(TRAIN + VAL):
        mask = fake_mask(i)
        if bad_label and i == 1:
            mask[2, 2] = 42
        write_palette_png(os.path.join(voc, "SegmentationClass", f"{image_id}.png"), mask)
        truth[image_id] = mask
    for name, ids in (("train", TRAIN), ("val", VAL)):
        with open(os.path.join(voc, "ImageSets", "Segmentation", f"{name}.txt"), "w") as f:
            f.write("\n".join(ids) + "\n")
    return truth


def make_sbd(root):
    dataset = os.path.join(root, "benchmark_RELEASE", "dataset")
    os.makedirs(os.path.join(dataset, "cls"))
    truth = {}
    for i, image_id in enumerate(SBD_TRAIN + SBD_VAL):
        mask = fake_mask(100 + i)
        mask[mask == 255] = 0  # SBD has no void band
        scipy.io.savemat(
            os.path.join(dataset, "cls", f"{image_id}.mat"),
            {"GTcls": {"Segmentation": mask, "Boundaries": np.zeros(1), "CategoriesPresent": 1}},
        )
        truth[image_id] = mask
    for name, ids in (("train", SBD_TRAIN), ("val", SBD_VAL)):
        with open(os.path.join(dataset, f"{name}.txt"), "w") as f:
            f.write("\n".join(ids) + "\n")
    return truth


def load(manual, data_dir, split):
    config = tfds.download.DownloadConfig(manual_dir=str(manual))
    dataset = tfds.load(
        "voc2012_segmentation",
        split=split,
        data_dir=str(data_dir),
        download_and_prepare_kwargs={"download_config": config},
    )
    return {ex["filename"].decode(): ex for ex in tfds.as_numpy(dataset)}


@pytest.mark.parametrize("archived", [False, True], ids=["extracted", "archives"])
def test_prepares_from_the_manual_dir_and_reads_back_class_ids(tmp_path, archived):
    source = tmp_path / "source"
    voc_truth = make_voc_tree(source)
    sbd_truth = make_sbd(source)
    manual = tmp_path / "manual"
    manual.mkdir()
    if archived:
        with tarfile.open(manual / "VOCtrainval_11-May-2012.tar", "w") as tar:
            tar.add(source / "VOCdevkit", arcname="VOCdevkit")
        with tarfile.open(manual / "benchmark.tgz", "w:gz") as tar:
            tar.add(source / "benchmark_RELEASE", arcname="benchmark_RELEASE")
    else:
        manual = source

    train = load(manual, tmp_path / "tfds", "train")
    val = load(manual, tmp_path / "tfds", "val")
    aug = load(manual, tmp_path / "tfds", "train_aug")
    assert sorted(train) == sorted(TRAIN) and sorted(val) == sorted(VAL)
    for image_id, example in {**train, **val}.items():
        np.testing.assert_array_equal(example["segmentation"][..., 0], voc_truth[image_id])
        assert example["image"].shape == (23, 31, 3)
    # train_aug = VOC train + SBD train/val - VOC val; VOC's annotation wins where both exist.
    expected = (set(TRAIN) | set(SBD_TRAIN) | set(SBD_VAL)) - set(VAL)
    assert set(aug) == expected
    for image_id, example in aug.items():
        want = voc_truth.get(image_id, sbd_truth.get(image_id))
        if image_id not in TRAIN:
            want = sbd_truth[image_id]
        np.testing.assert_array_equal(example["segmentation"][..., 0], want)


def test_bad_label_names_the_file(tmp_path):
    make_voc_tree(tmp_path / "manual", bad_label=True)
    make_sbd(tmp_path / "manual")
    with pytest.raises(Exception, match=r"2007_000039\.png: label values \[42\]"):
        load(tmp_path / "manual", tmp_path / "tfds", "train")
