"""The folder dataset: matching by stem, image modes, and bad files named."""

import os

import numpy as np
import pytest
from PIL import Image

from tf_segunravel.data import folder
from tf_segunravel.data.folder import check_folder, folder_dataset
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
    # Up front, before any tf.data work, and never stamped.
    with pytest.raises(InputError, match=message):
        folder_dataset(str(root), num_classes=3)
    assert not (root / folder.STAMP_FILE).exists()


def test_a_checked_folder_is_stamped_and_rechecked_when_it_changes(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "d")
    assert check_folder(str(root), 3) is True
    assert (root / folder.STAMP_FILE).exists()
    reads = []
    original = folder.read_pair
    monkeypatch.setattr(folder, "read_pair", lambda *a: reads.append(a) or original(*a))
    assert check_folder(str(root), 3) is False and not reads
    assert check_folder(str(root), 4) is True  # another class count is another check
    assert len(reads) == 2
    # A file rewritten after the check (new size and time) is read again.
    mask = root / "masks" / "b.png"
    Image.fromarray(np.full((12, 10), 9, np.uint8), mode="L").save(mask)
    os.utime(mask, ns=(1, 1))
    with pytest.raises(InputError, match=r"b\.png: label values \[9\]"):
        check_folder(str(root), 3)
    # A read-only folder still works; it is just checked every time.
    monkeypatch.setattr(folder, "write_json", lambda *a: (_ for _ in ()).throw(OSError()))
    Image.fromarray(np.full((12, 10), 1, np.uint8), mode="L").save(mask)
    assert check_folder(str(root), 3) is True and check_folder(str(root), 3) is True
