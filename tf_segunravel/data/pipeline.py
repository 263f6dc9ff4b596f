"""tf.data input pipelines: DeepLab's training augmentation and test-time padding.

Examples everywhere are TFDS-style dicts {"image": uint8 [H, W, 3], "segmentation": uint8
[H, W, 1], "filename"}. Image and mask always get the same geometric transform; masks are
resized with nearest neighbour only, so no invented class ids appear.

Randomness is stateless and keyed on (seed, example index), so a seeded pipeline produces the
same batches whatever the parallelism, and a deterministic one in the same order too.
"""

import os

import tensorflow as tf
import tensorflow_datasets as tfds

from tf_segunravel.data.labels import IGNORE_LABEL
from tf_segunravel.errors import InputError
from tf_segunravel.models.layers import CAFFE_MEAN_BGR

MEAN_RGB = tuple(reversed(CAFFE_MEAN_BGR))
FOLDER_PREFIX = "folder:"


def _unknown_dataset(dataset, error):
    return InputError(
        f"dataset={dataset}: not a registered TFDS dataset nor folder:<dir> "
        f"({str(error).splitlines()[0]})"
    )


def dataset_metadata(dataset: str, data_dir: str | None = None) -> dict:
    """The TFDS metadata of `dataset` (class_names, class_kinds, ...); {} for folders."""
    from tf_segunravel.data import shapes, voc  # noqa: F401  (registers the TFDS builders)

    if dataset.startswith(FOLDER_PREFIX):
        return {}
    try:
        builder = tfds.builder(dataset, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise _unknown_dataset(dataset, e) from e
    return dict(builder.info.metadata or {})


def dataset_classes(
    dataset: str, data_dir: str | None = None, num_classes: int | None = None
) -> tuple[list[str] | None, list[str] | None]:
    """(class names, class kinds) from the dataset's TFDS metadata, each None when absent.

    With `num_classes`, a dataset that names another number of classes is an InputError.
    """
    metadata = dataset_metadata(dataset, data_dir)
    names, kinds = metadata.get("class_names"), metadata.get("class_kinds")
    if names and num_classes is not None and len(names) != num_classes:
        raise InputError(
            f"dataset={dataset} has {len(names)} classes, the model scores {num_classes}"
        )
    return (list(names) if names else None), (list(kinds) if kinds else None)


# Every dataset here runs without tf.data's autotuning, at fixed parallelism (a map's calls
# on every core, two batches prefetched). With autotuning on, an iterator's destructor joins
# the autotuner's thread, and mid-optimisation that took 2-36 s after the main job's
# training ended (its `fit` returned only once its iterator was gone; seen in native
# stacks, docs/benchmarks.md). A fixed setting keeps two cores busy as well.
PARALLEL_CALLS = os.cpu_count() or 1
PREFETCH_BATCHES = 2


def without_autotune(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """`dataset` with tf.data's autotuning off (see `PARALLEL_CALLS`)."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


def load_split(
    dataset: str, split: str, data_dir: str | None = None, num_classes: int | None = None
) -> tf.data.Dataset:
    """A dataset split as TFDS-style examples.

    `dataset` is a registered TFDS name (`segunravel_shapes`, `voc2012_segmentation`, ...) or
    `folder:<dir>` for a directory with `images/` and `masks/` (then `split` names a
    sub-directory of `<dir>` when it has one, and `num_classes` bounds the label values).
    """
    from tf_segunravel.data import shapes, voc  # noqa: F401  (registers the TFDS builders)

    if dataset.startswith(FOLDER_PREFIX):
        from tf_segunravel.data.folder import folder_dataset

        root = dataset[len(FOLDER_PREFIX) :]
        split_root = tf.io.gfile.join(root, split)
        return without_autotune(
            folder_dataset(split_root if tf.io.gfile.isdir(split_root) else root, num_classes)
        )
    try:
        return without_autotune(
            tfds.load(dataset, split=split, data_dir=data_dir, shuffle_files=False)
        )
    except tfds.core.registered.DatasetNotFoundError as e:
        raise _unknown_dataset(dataset, e) from e
    except ValueError as e:
        if "split" not in str(e).lower():
            raise
        raise InputError(f"split={split}: {str(e).splitlines()[0]} ({dataset})") from e


def _pad_to(image, label, height, width):
    """Pads bottom/right to at least (height, width): image with the mean colour, label 255."""
    pad_h = tf.maximum(height - tf.shape(image)[0], 0)
    pad_w = tf.maximum(width - tf.shape(image)[1], 0)
    mean = tf.constant(MEAN_RGB, tf.float32)
    image = tf.pad(image - mean, [[0, pad_h], [0, pad_w], [0, 0]]) + mean
    label = tf.pad(label, [[0, pad_h], [0, pad_w], [0, 0]], constant_values=IGNORE_LABEL)
    return image, label


def random_scale_crop_flip(
    image: tf.Tensor,
    label: tf.Tensor,
    seed: tf.Tensor,
    crop_size: int,
    scale_range: tuple[float, float] = (0.5, 1.5),
    mirror: bool = True,
) -> tuple[tf.Tensor, tf.Tensor]:
    """DeepLab's training augmentation of one example.

    Args:
      image: uint8 or float [H, W, 3] RGB.
      label: uint8 [H, W, 1] class ids.
      seed: int [2], the stateless random seed of this example.
      crop_size: side of the square output crop.
      scale_range: (min, max) of the uniform random rescaling.
      mirror: flip left-right with probability 1/2.

    Returns:
      (float32 [crop, crop, 3] RGB 0..255, int32 [crop, crop] labels); padding beyond the
      rescaled image is the mean colour with label 255.
    """
    scale_seed, y_seed, x_seed, flip_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 4)
    )
    image = tf.cast(image, tf.float32)
    scale = tf.random.stateless_uniform([], scale_seed, scale_range[0], scale_range[1])
    size = tf.cast(tf.round(tf.cast(tf.shape(image)[:2], tf.float32) * scale), tf.int32)
    size = tf.maximum(size, 1)
    image = tf.image.resize(image, size, method="bilinear")
    label = tf.image.resize(label, size, method="nearest")
    image, label = _pad_to(image, label, crop_size, crop_size)
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    top = tf.random.stateless_uniform([], y_seed, 0, height - crop_size + 1, tf.int32)
    left = tf.random.stateless_uniform([], x_seed, 0, width - crop_size + 1, tf.int32)
    image = image[top : top + crop_size, left : left + crop_size]
    label = label[top : top + crop_size, left : left + crop_size]
    if mirror:
        flip = tf.random.stateless_uniform([], flip_seed) < 0.5
        image = tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image)
        label = tf.cond(flip, lambda: tf.reverse(label, [1]), lambda: label)
    image = tf.ensure_shape(image, [crop_size, crop_size, 3])
    label = tf.ensure_shape(tf.cast(label[..., 0], tf.int32), [crop_size, crop_size])
    return image, label


def train_pipeline(
    examples: tf.data.Dataset,
    crop_size: int = 321,
    batch_size: int = 10,
    seed: int = 0,
    scale_range: tuple[float, float] = (0.5, 1.5),
    mirror: bool = True,
    shuffle_buffer: int = 1000,
    deterministic: bool = False,
    repeat: bool = True,
    skip_batches: int = 0,
    with_index: bool = False,
) -> tf.data.Dataset:
    """Shuffled, repeated, augmented, batched (images, labels) for training.

    With `with_index`, batches are (images, labels, index): int64 [B], each example's place
    in the stream, which keys its augmentation and the trainer's dropout masks.

    Batches have static shapes ([B, crop, crop, 3] float32, [B, crop, crop] int32), as XLA
    and `tf.distribute` want. With `deterministic=True` the order of batches is fixed too.
    `skip_batches` resumes the stream where a run stopped: the examples before are read but
    not augmented, and every later batch is the one the uninterrupted run would have seen.
    """
    if scale_range[0] <= 0 or scale_range[0] > scale_range[1]:
        raise ValueError(f"scale_range must satisfy 0 < min <= max, got {scale_range}")
    dataset = examples.map(lambda ex: (ex["image"], ex["segmentation"]))
    if shuffle_buffer > 1:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()

    def augment(index, example):
        image, label = example
        example_seed = tf.stack([tf.cast(seed, tf.int64), index])
        image, label = random_scale_crop_flip(
            image, label, example_seed, crop_size, scale_range, mirror
        )
        return (image, label, index) if with_index else (image, label)

    dataset = (
        dataset.enumerate()
        .skip(skip_batches * batch_size)
        .map(augment, num_parallel_calls=PARALLEL_CALLS, deterministic=deterministic or None)
    )
    dataset = dataset.batch(batch_size, drop_remainder=True)
    options = tf.data.Options()
    options.deterministic = deterministic
    # Across workers (MultiWorkerMirroredStrategy) every worker runs this whole pipeline and
    # keeps its replicas' share of each global batch: the workers together see exactly the
    # batches one process would, which file sharding would not promise.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return without_autotune(dataset.with_options(options).prefetch(PREFETCH_BATCHES))


def pad_for_eval(example: dict, pad_size: int = 513) -> tuple[dict, tf.Tensor]:
    """DeepLab's test input: the image padded to pad_size x pad_size, its size remembered.

    Returns ({"image": float32 [P, P, 3], "height", "width", "filename"}, int32 [P, P]).
    Images larger than `pad_size` fail with a message naming the file.
    """
    image = tf.cast(example["image"], tf.float32)
    label = example["segmentation"]
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    fits = tf.logical_and(height <= pad_size, width <= pad_size)
    message = tf.strings.join(
        [
            example.get("filename", tf.constant("")),
            ": image is ",
            tf.strings.as_string(width),
            "x",
            tf.strings.as_string(height),
            f", larger than the evaluation pad size {pad_size}",
        ]
    )
    with tf.control_dependencies([tf.debugging.Assert(fits, [message])]):
        image, label = _pad_to(image, label, pad_size, pad_size)
    features = {
        "image": tf.ensure_shape(image, [pad_size, pad_size, 3]),
        "height": height,
        "width": width,
        "filename": example.get("filename", tf.constant("")),
    }
    return features, tf.ensure_shape(tf.cast(label[..., 0], tf.int32), [pad_size, pad_size])


def eval_pipeline(
    examples: tf.data.Dataset, pad_size: int = 513, batch_size: int = 1
) -> tf.data.Dataset:
    """Ordered, padded, batched evaluation examples (see `pad_for_eval`)."""
    dataset = examples.map(lambda ex: pad_for_eval(ex, pad_size), num_parallel_calls=PARALLEL_CALLS)
    return without_autotune(dataset.batch(batch_size).prefetch(PREFETCH_BATCHES))
