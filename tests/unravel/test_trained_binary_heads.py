"""One-channel heads as real networks end them, trained here on segunravel_shapes foreground:
a Conv2DTranspose score layer (and once with its own sigmoid), a Conv2DTranspose followed by
a Rescaling that negates the logit, a Conv2D followed by a BatchNormalization, and a Dense on
a pooled vector. Each runs through the fixation tool and the export with only the input
flags: labels are the model's own thresholded prediction pixel for pixel, no map is blank,
foreground fixations fall inside the predicted region above chance, and the SavedModel's
fixations equal the Keras model's. A head that cannot be split is a one-line error from both
tools, before any file is written."""

import json
import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tests.helpers import last_line, run_tool
from tf_segunravel.unravel import SegUnravel
from tf_segunravel.unravel.settings import InputSettings

L = keras.layers
SCALE = 0.00392157  # the networks take [0, 1]; the tools are told so, rounded
UNIT = [f"--input_scale={SCALE}"]
SIZE = 128  # even: a stride-2 trunk and a stride-2 transpose give the image's own grid
HEADS = ("transpose", "transpose_own_sigmoid", "transpose_negated", "conv_batch_norm", "dense")


def network(head):
    """A small segmenter (a classifier for `dense`) ending in `head` and a sigmoid."""
    images = keras.Input((None, None, 3), name="images")
    x = L.Conv2D(16, 3, padding="same", activation="relu", name="conv1")(images)
    strided = head.startswith("transpose")
    if strided:  # down and up as a U-Net does: 2 x 2 pooling, a 2 x 2 stride-2 transpose
        x = L.MaxPooling2D(2, name="down")(x)
    x = L.Conv2D(16, 3, padding="same", activation="relu", name="conv2")(x)
    x = L.Conv2D(16, 3, padding="same", dilation_rate=2, activation="relu", name="conv3")(x)
    if strided:
        own = "sigmoid" if head == "transpose_own_sigmoid" else None
        z = L.Conv2DTranspose(1, 2, strides=2, activation=own, name="up")(x)
        if head == "transpose_negated":  # a bias and scale kept as its own layer
            z = L.Rescaling(-1.0, offset=0.25, name="negate")(z)
        if own:
            return keras.Model(images, z)
    elif head == "conv_batch_norm":
        z = L.BatchNormalization(name="norm")(L.Conv2D(1, 1, name="logit")(x))
    else:
        z = L.Dense(1, name="logit")(L.GlobalAveragePooling2D(name="pool")(x))
    return keras.Model(images, L.Activation("sigmoid", name="mask")(z))


@pytest.fixture(scope="module")
def trained(shapes_data_dir, tmp_path_factory):
    """(directory with `<head>.keras` and `val/` images, {head: model}, val examples)."""
    from tf_segunravel.data import load_split

    train = load_split("segunravel_shapes", "train", shapes_data_dir)
    masks = [e["segmentation"] for e in train.take(400).as_numpy_iterator()]
    # The classifier's task: is more of the image foreground than in the median image?
    median = float(np.median([np.mean(m[:SIZE, :SIZE] > 0) for m in masks]))

    def example(item, pooled):
        image = tf.cast(item["image"][:SIZE, :SIZE], tf.float32) / 255
        mask = tf.cast(item["segmentation"][:SIZE, :SIZE] > 0, tf.float32)
        if pooled:
            return image, tf.cast(tf.reduce_mean(mask) > median, tf.float32)[None]
        return image, mask

    root = tmp_path_factory.mktemp("heads")
    models = {}
    for head in HEADS:
        keras.utils.set_random_seed(7)
        model = network(head)
        model.compile(keras.optimizers.Adam(3e-3), "binary_crossentropy")
        data = train.map(lambda item, pooled=head == "dense": example(item, pooled))
        model.fit(data.batch(8).repeat(), steps_per_epoch=250, epochs=1, verbose=0)
        model.save(root / f"{head}.keras")
        models[head] = model
    val = load_split("segunravel_shapes", "val", shapes_data_dir).take(4)
    examples = []
    (root / "val").mkdir()
    for item in val.as_numpy_iterator():
        item["image"] = item["image"][:SIZE, :SIZE]
        Image.fromarray(item["image"]).save(root / "val" / f"{item['filename'].decode()}.png")
        examples.append(item)
    return root, models, examples


def prediction(model, image):
    """The model's own foreground decision at every pixel (a classifier's, everywhere), on
    the image scaled as the tools scale it (1 / 255 would round otherwise: 5e-6 apart in
    the logits, enough to flip a near-tie in a walk)."""
    probability = model(image[None].astype(np.float32) * np.float32(SCALE)).numpy()[0]
    if probability.ndim == 1:
        return np.full(image.shape[:2], probability[0] > 0.5)
    return probability[..., 0] > 0.5


@pytest.mark.slow
def test_the_heads_learned_their_tasks(trained):
    _, models, examples = trained
    for head, model in models.items():
        if head == "dense":
            continue  # one decision per image: four images say little
        accuracy = [
            np.mean(prediction(model, e["image"]) == (e["segmentation"][:SIZE, :SIZE, 0] > 0))
            for e in examples
        ]
        assert np.mean(accuracy) > 0.85, head


@pytest.mark.slow
@pytest.mark.parametrize("head", HEADS)
def test_fixation_tool_and_export_on_a_trained_head(trained, tmp_path, head):
    root, models, examples = trained
    model, path = models[head], root / f"{head}.keras"
    out = tmp_path / "fix"
    proc = run_tool(
        "fixations",
        f"--model={path}",
        f"--images={root / 'val'}",
        f"--output_dir={out}",
        *UNIT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    foregrounds = 0
    for item in examples:
        stem = item["filename"].decode()
        data = np.load(out / f"{stem}.npz")
        want = prediction(model, item["image"]).astype(np.int32)
        np.testing.assert_array_equal(data["labels"], want)  # pixel for pixel
        assert list(data["classes"]) == list(np.unique(want))
        for maps in data["maps"]:
            assert maps.max() == pytest.approx(1)  # never blank
        summary = json.loads((out / f"{stem}.json").read_text())["classes"]
        chance = want.mean()  # the share of the image predicted foreground
        # A classifier's region is the whole image; a speck of a few pixels (one image
        # here: 9 pixels) is a spurious prediction, not a region to find fixations in.
        if head == "dense" or chance < 0.005:
            continue
        foregrounds += 1
        assert summary["1"]["inside_predicted"] > chance, (stem, summary["1"], chance)
    assert foregrounds >= 2 or head == "dense"

    export_dir = tmp_path / "saved"
    proc = run_tool("export", f"--model={path}", *UNIT, f"--export_dir={export_dir}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded = tf.saved_model.load(str(export_dir))
    metadata = json.loads((export_dir / "assets.extra" / "tf_segunravel.json").read_text())
    split_at = {"dense": "logit", "conv_batch_norm": "logit"}.get(head, "up")
    sign = -1 if head == "transpose_negated" else 1
    assert metadata["binary_head"]["split_at"] == split_at
    assert metadata["binary_head"]["sign"] == sign
    assert metadata["class_names"] == ["background", "foreground"]
    engine = SegUnravel(keras.models.load_model(path), input=InputSettings(scale=SCALE))
    for item in examples[:2]:
        image = tf.constant(item["image"][None])
        got = loaded.signatures["fixations"](images=image)
        want = engine(item["image"][None])
        np.testing.assert_array_equal(got["points"], want.points)
        np.testing.assert_array_equal(got["counts"], want.counts)
        segment = loaded.signatures["serving_default"](images=image)
        np.testing.assert_array_equal(
            segment["labels"][0], prediction(model, item["image"]).astype(np.int32)
        )


def unsplittable(path):
    """A one-channel head with a ReLU between its score layer and the sigmoid."""
    images = keras.Input((None, None, 3))
    x = L.Conv2D(4, 3, padding="same", activation="relu")(images)
    x = L.ReLU(name="clipped")(L.Conv2DTranspose(1, 3, padding="same")(x))
    keras.Model(images, L.Activation("sigmoid")(x)).save(path)


@pytest.mark.slow
def test_an_unsplittable_head_is_a_one_line_error_from_both_tools(tmp_path):
    path = tmp_path / "relu.keras"
    unsplittable(path)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "black.png")
    fixations = run_tool(
        "fixations",
        f"--model={path}",
        f"--images={tmp_path / 'black.png'}",
        f"--output_dir={tmp_path / 'fix'}",
        timeout=300,
    )
    export = run_tool("export", f"--model={path}", f"--export_dir={tmp_path / 'saved'}")
    for proc, tool in ((fixations, "fixations"), (export, "export")):
        assert proc.returncode == 1
        line = last_line(proc.stderr)
        assert re.fullmatch(rf"{tool}: error: .*'clipped' \(ReLU\).*not affine.*", line), line
        assert line.startswith(f"{tool}: error: {path}: "), line  # names the file at fault
        assert "Traceback" not in proc.stderr
    assert not (tmp_path / "fix").exists() and not (tmp_path / "saved").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
