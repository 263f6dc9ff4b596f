"""Users' own data: `images/` and `masks/` directories matched by file stem.

    root/images/street_01.jpg   root/masks/street_01.png   (class ids, palette or grey PNG)

Images may be JPEG, PNG or BMP, in any mode (grey, palette, RGBA and 16-bit are converted to
RGB). Every file is checked when read: unreadable images, image/mask size mismatches and label
values outside 0..num_classes-1 and 255 stop the pipeline with a message naming the file.
"""

import os

import tensorflow as tf

from tf_segunravel.data.labels import check_example, read_image, read_label_png
from tf_segunravel.errors import InputError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


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


def match_folder(root):
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


def read_pair(image_path, mask_path, num_classes):
    """(uint8 [H, W, 3], uint8 [H, W, 1]) of one checked example."""
    image = read_image(image_path, image_path)
    mask = read_label_png(mask_path, mask_path)
    check_example(image, mask, num_classes, mask_path)
    return image, mask[..., None]


def folder_dataset(root, num_classes=None):
    """A `tf.data.Dataset` of {"image", "segmentation", "filename"} examples, in stem order.

    Args:
      root: directory holding `images/` and `masks/`.
      num_classes: labels must be < num_classes or 255; None accepts any value.
    """
    pairs = match_folder(root)
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


def first_bad_file(root, num_classes):
    """Reads every pair eagerly; returns None or the `InputError` of the first bad file.

    Tools call this before training so that a bad file fails fast with a one-line error
    instead of mid-run inside a tf.data worker.
    """
    for _, image_path, mask_path in match_folder(root):
        try:
            read_pair(image_path, mask_path, num_classes)
        except InputError as e:
            return e
    return None
