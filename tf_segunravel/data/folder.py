"""Users' own data: `images/` and `masks/` directories matched by file stem.

    root/images/street_01.jpg   root/masks/street_01.png   (class ids, palette or grey PNG)

Images may be JPEG, PNG or BMP, in any mode (grey, palette, RGBA and 16-bit are converted to
RGB). The whole folder is checked once, in Python, before a dataset is built: an unreadable
image, an image/mask size mismatch or a label value outside 0..num_classes-1 and 255 is an
`InputError` naming the file, before any tf.data work starts (an error raised inside a tf.data
worker comes wrapped in a traceback, and can leave the iterator's destructor waiting). A
passed check is stamped in `<root>/.tf_segunravel_checked.json`, keyed on every file's path,
size and modification time and on num_classes, so an unchanged folder is not read twice.
"""

import hashlib
import json
import os

import numpy as np
import tensorflow as tf

from tf_segunravel.atomic import write_json
from tf_segunravel.data.labels import check_example, read_image, read_label_png
from tf_segunravel.errors import InputError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
STAMP_FILE = ".tf_segunravel_checked.json"


def _by_stem(directory, extensions):
    if not os.path.isdir(directory):
        raise InputError(f"{directory}: no such directory")
    files = {}
    for name in sorted(os.listdir(directory)):
        stem, ext = os.path.splitext(name)
        if ext.lower() in extensions:
            if stem in files:
                raise InputError(f"{directory}: two files with the stem {stem!r}")
            files[stem] = os.path.join(directory, name)
    return files


def match_folder(root: str) -> list[tuple[str, str, str]]:
    """[(stem, image path, mask path)] sorted by stem; unmatched files are an `InputError`."""
    images = _by_stem(os.path.join(root, "images"), IMAGE_EXTENSIONS)
    masks = _by_stem(os.path.join(root, "masks"), (".png",))
    problems = []
    for label, missing in (("masks", images.keys() - masks), ("images", masks.keys() - images)):
        if missing:
            shown = ", ".join(sorted(missing)[:5]) + (" ..." if len(missing) > 5 else "")
            problems.append(f"{len(missing)} file(s) without {label}: {shown}")
    if problems:
        raise InputError(f"{root}: " + "; ".join(problems))
    if not images:
        raise InputError(f"{root}: no images in {os.path.join(root, 'images')}")
    return [(stem, images[stem], masks[stem]) for stem in sorted(images)]


def read_pair(image_path: str, mask_path: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 [H, W, 3], uint8 [H, W, 1]) of one checked example."""
    image = read_image(image_path, image_path)
    mask = read_label_png(mask_path, mask_path)
    check_example(image, mask, num_classes, mask_path)
    return image, mask[..., None]


def _fingerprint(pairs, limit):
    digest = hashlib.sha256(f"num_classes={limit}\n".encode())
    for _, image_path, mask_path in pairs:
        for path in (image_path, mask_path):
            status = os.stat(path)
            digest.update(f"{path}\0{status.st_size}\0{status.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def check_folder(
    root: str, num_classes: int | None = None, pairs: list[tuple[str, str, str]] | None = None
) -> bool:
    """Reads every pair of `root` once and raises the `InputError` of the first bad file.

    Returns True when the files were read, False when the stamp of an earlier check of the
    same files (and class count) made that unnecessary. A folder that cannot take the stamp
    (read-only) is simply read again next time.
    """
    pairs = pairs if pairs is not None else match_folder(root)
    limit = 256 if num_classes is None else num_classes
    stamp = os.path.join(root, STAMP_FILE)
    fingerprint = _fingerprint(pairs, limit)
    try:
        with open(stamp) as f:
            if json.load(f).get("fingerprint") == fingerprint:
                return False
    except (OSError, ValueError, AttributeError):
        pass  # no stamp, or an unreadable one: check
    for _, image_path, mask_path in pairs:
        read_pair(image_path, mask_path, limit)
    try:
        write_json(stamp, {"fingerprint": fingerprint, "pairs": len(pairs), "num_classes": limit})
    except OSError:
        pass
    return True


def folder_dataset(root: str, num_classes: int | None = None) -> tf.data.Dataset:
    """A `tf.data.Dataset` of {"image", "segmentation", "filename"} examples, in stem order.

    The folder is checked first (`check_folder`), so bad files fail here, not mid-run.

    Args:
      root: directory holding `images/` and `masks/`.
      num_classes: labels must be < num_classes or 255; None accepts any value.
    """
    pairs = match_folder(root)
    check_folder(root, num_classes, pairs)
    limit = 256 if num_classes is None else num_classes

    def read(image_path, mask_path):
        return read_pair(image_path.decode(), mask_path.decode(), limit)

    def load(stem, image_path, mask_path):
        image, mask = tf.numpy_function(read, [image_path, mask_path], [tf.uint8, tf.uint8])
        return {
            "image": tf.ensure_shape(image, [None, None, 3]),
            "segmentation": tf.ensure_shape(mask, [None, None, 1]),
            "filename": stem,
        }

    stems, image_paths, mask_paths = (list(column) for column in zip(*pairs, strict=True))
    dataset = tf.data.Dataset.from_tensor_slices((stems, image_paths, mask_paths))
    return dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
