"""The folder dataset: matching by stem, image modes, and bad files named."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tf_segunravel.data.folder import first_bad_file, folder_dataset
from tf_segunravel.errors import InputError


def make_folder(root, stems=("a", "b"), size=(12, 10)):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, stem in enumerate(stems):
        rgb = np.full((*size, 3), 10 * i, np.uint8)
        Image.fromarray(rgb).save(root / "images" / f"{stem}.png")
        mask = np.full(size, i % 3, np.uint8)
        mask[0, 0] = 255
        Image.fromarray(mask, mode="L").save(root / "masks" / f"{stem}.png")
    return root


def test_reads_matched_pairs_in_stem_order(tmp_path):
    root = make_folder(tmp_path / "d", stems=("b", "a", "c"))
    examples = list(folder_dataset(str(root), num_classes=3).as_numpy_iterator())
    assert [ex["filename"].decode() for ex in examples] == ["a", "b", "c"]
    assert examples[1]["image"].shape == (12, 10, 3)
    # make_folder labels the i-th stem given with class i % 3: "a" was given second.
    assert examples[0]["segmentation"][1, 1, 0] == 1
    assert examples[0]["segmentation"][0, 0, 0] == 255


def test_unmatched_files_are_listed(tmp_path):
    root = make_folder(tmp_path / "d")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "images" / "orphan.jpg")
    with pytest.raises(InputError, match=r"1 file.* without masks: orphan"):
        folder_dataset(str(root))


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "I;16"])
def test_image_modes_become_rgb(tmp_path, mode):
    root = make_folder(tmp_path / "d", stems=("a",))
    if mode == "I;16":
        image = Image.fromarray(np.full((12, 10), 65535, np.uint16))
    else:
        image = Image.fromarray(np.full((12, 10, 3), 200, np.uint8))
        image = (
            image.convert(mode, palette=Image.Palette.ADAPTIVE)
            if mode == "P"
            else image.convert(mode)
        )
    image.save(root / "images" / "a.png")
    (example,) = folder_dataset(str(root)).as_numpy_iterator()
    assert example["image"].shape == (12, 10, 3) and example["image"].dtype == np.uint8
    assert example["image"].max() == (255 if mode == "I;16" else 200)


@pytest.mark.parametrize(
    "damage, message",
    [
        ("corrupt", r"b\.png: not a readable image"),
        ("size", r"b\.png: image is 7x5 but its mask is 10x12"),
        ("label", r"b\.png: label values \[9\] outside 0\.\.2 and 255"),
    ],
)
def test_bad_files_are_named(tmp_path, damage, message):
    root = make_folder(tmp_path / "d")
    if damage == "corrupt":
        (root / "images" / "b.png").write_bytes(b"\x89PNG broken")
    elif damage == "size":
        Image.fromarray(np.zeros((5, 7, 3), np.uint8)).save(root / "images" / "b.png")
    else:
        Image.fromarray(np.full((12, 10), 9, np.uint8), mode="L").save(root / "masks" / "b.png")
    assert isinstance(first_bad_file(str(root), 3), InputError)
    assert message.split(":")[0].replace("\\", "") in str(first_bad_file(str(root), 3))
    with pytest.raises(tf.errors.OpError, match=message):
        list(folder_dataset(str(root), num_classes=3).as_numpy_iterator())


def test_good_folder_has_no_bad_file(tmp_path):
    assert first_bad_file(str(make_folder(tmp_path / "d")), 3) is None
