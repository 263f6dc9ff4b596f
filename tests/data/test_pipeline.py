"""Training and evaluation pipelines: augmentation invariants, eagerly and in tf.data.map."""

import numpy as np
import pytest
import tensorflow as tf

from tf_segunravel.data import eval_pipeline, train_pipeline
from tf_segunravel.data.pipeline import MEAN_RGB, pad_for_eval, random_scale_crop_flip

# Class id -> a colour far from the others and from the mean colour.
COLOURS = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]], np.float32)


def block_example(height=40, width=56, seed=0):
    """Blocks of classes 0..4 whose colour encodes the class, with a void stripe."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 5, (height // 8 + 1, width // 8 + 1)).astype(np.uint8)
    label = np.kron(label, np.ones((8, 8), np.uint8))[:height, :width]
    label[:, 3] = 255
    image = COLOURS[np.minimum(label, 4)].astype(np.uint8)
    return {"image": image, "segmentation": label[..., None], "filename": f"ex{seed}"}


def check_aligned(image, label):
    """Where a pixel's 3x3 label neighbourhood is one class, its colour is that class's."""
    assert set(np.unique(label)) <= {0, 1, 2, 3, 4, 255}
    padded = np.pad(label, 1, mode="edge")
    windows = np.stack(
        [padded[i : i + label.shape[0], j : j + label.shape[1]] for i in range(3) for j in range(3)]
    )
    interior = (windows == label).all(0) & (label != 255)
    assert interior.sum() > 50
    np.testing.assert_allclose(image[interior], COLOURS[label[interior]], atol=1.0)
    # Padding beyond the image is the mean colour with label 255 (or a void stripe pixel).
    mean_pixels = np.abs(image - np.array(MEAN_RGB)).max(-1) < 1e-3
    assert (label[mean_pixels] == 255).all()


@pytest.mark.parametrize("seed", range(6))
def test_augmentation_keeps_image_and_mask_aligned_eagerly(seed):
    ex = block_example(seed=seed)
    image, label = random_scale_crop_flip(
        ex["image"], ex["segmentation"], tf.constant([seed, 3], tf.int64), crop_size=48
    )
    assert image.shape == (48, 48, 3) and label.shape == (48, 48) and label.dtype == tf.int32
    check_aligned(image.numpy(), label.numpy())


def test_augmentation_inside_tf_data_map_matches_eager():
    examples = [block_example(seed=s) for s in range(4)]
    dataset = tf.data.Dataset.from_generator(
        lambda: iter(examples),
        output_signature={
            "image": tf.TensorSpec([None, None, 3], tf.uint8),
            "segmentation": tf.TensorSpec([None, None, 1], tf.uint8),
            "filename": tf.TensorSpec([], tf.string),
        },
    )
    batches = train_pipeline(
        dataset, crop_size=48, batch_size=2, seed=5, shuffle_buffer=1, deterministic=True
    )
    assert batches.element_spec[0].shape == (2, 48, 48, 3)
    assert batches.element_spec[1].shape == (2, 48, 48)
    images, labels = next(iter(batches))
    for i in range(2):
        check_aligned(images[i].numpy(), labels[i].numpy())
        want_image, want_label = random_scale_crop_flip(
            examples[i]["image"], examples[i]["segmentation"], tf.constant([5, i], tf.int64), 48
        )
        np.testing.assert_allclose(images[i], want_image, atol=1e-4)
        np.testing.assert_array_equal(labels[i], want_label)


def test_scale_and_flip_move_the_void_stripe_exactly():
    """x2 scaling into a crop that holds it all: the 1-pixel stripe at column 3 becomes
    columns 6-7 (nearest neighbour, exactly 2 wide), or 120-121 when mirrored."""
    ex = block_example()
    positions = set()
    for seed in range(12):
        _, label = random_scale_crop_flip(
            ex["image"],
            ex["segmentation"],
            tf.constant([seed, 0], tf.int64),
            128,
            scale_range=(2.0, 2.0),
        )
        rows = label.numpy()[:80]  # 40 rows x2; below is padding
        void_cols = set(np.where((rows == 255).all(0))[0].tolist())
        # Padding (columns 112-127, width 56x2 = 112) mirrors with the image.
        plain, mirrored = {6, 7} | set(range(112, 128)), {120, 121} | set(range(16))
        assert void_cols in (plain, mirrored)
        positions.add(void_cols == mirrored)
    assert positions == {True, False}


def test_deterministic_pipeline_repeats_exactly():
    examples = [block_example(seed=s) for s in range(5)]

    def make():
        dataset = tf.data.Dataset.from_tensor_slices(
            {k: np.stack([e[k] for e in examples]) for k in ("image", "segmentation")}
        )
        return train_pipeline(
            dataset, crop_size=32, batch_size=2, seed=9, shuffle_buffer=5, deterministic=True
        )

    first = [b[1].numpy() for b in make().take(6)]
    second = [b[1].numpy() for b in make().take(6)]
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)


def test_eval_padding_remembers_the_size_and_crops_back():
    ex = block_example(height=30, width=45)
    features, label = pad_for_eval(ex, pad_size=64)
    assert features["image"].shape == (64, 64, 3) and label.shape == (64, 64)
    h, w = int(features["height"]), int(features["width"])
    assert (h, w) == (30, 45)
    np.testing.assert_array_equal(label[:h, :w], ex["segmentation"][..., 0])
    assert (label.numpy()[h:] == 255).all() and (label.numpy()[:, w:] == 255).all()
    np.testing.assert_allclose(features["image"][40, 50], MEAN_RGB, atol=1e-4)

    dataset = tf.data.Dataset.from_tensors(ex)
    _, batch_labels = next(iter(eval_pipeline(dataset, pad_size=64)))
    np.testing.assert_array_equal(batch_labels[0], label)


def test_eval_rejects_images_larger_than_the_pad_size():
    with pytest.raises(tf.errors.InvalidArgumentError, match="ex0: image is 56x40, larger"):
        pad_for_eval(block_example(), pad_size=32)


def test_pipelines_run_without_the_autotuner(tmp_path):
    """Destroying an autotuned iterator joins the autotuner's thread, which stalled the main
    job for up to 36 s after training (docs/data.md): every dataset the package builds has
    it off, the folder datasets `load_split` reads included."""
    from PIL import Image

    from tf_segunravel.data import load_split

    examples = [block_example(seed=s) for s in range(3)]
    dataset = tf.data.Dataset.from_tensor_slices(
        {k: np.stack([e[k] for e in examples]) for k in ("image", "segmentation")}
    )
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for number, example in enumerate(examples):
        Image.fromarray(example["image"]).save(tmp_path / "images" / f"{number}.png")
        Image.fromarray(example["segmentation"][..., 0]).save(tmp_path / "masks" / f"{number}.png")
    built = {
        "train": train_pipeline(dataset, crop_size=32, batch_size=2, deterministic=True),
        "eval": eval_pipeline(dataset, pad_size=64),
        "folder": load_split(f"folder:{tmp_path}", "val", num_classes=5),
    }
    for name, pipeline in built.items():
        assert pipeline.options().autotune.enabled is False, name
        assert len(list(pipeline.take(2))) == 2, name
