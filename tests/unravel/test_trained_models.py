"""Networks as users bring them, trained here: a stride-1 binary segmenter with a [0, 1]
input and a sigmoid head, the same network built for a fixed input size, and with a second
output. Each runs through the fixation tool, the experiments tool and the export with only
the --input_*, --output flags; every bad combination is a one-line error naming its flag."""

import json
import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tests.helpers import last_line, run_tool
from tf_segunravel.unravel import FixationSettings, SegUnravel, fixation_maps
from tf_segunravel.unravel.settings import InputSettings

SCALE = 0.00392157  # the network takes [0, 1]; the tools are told so, rounded
UNIT = [f"--input_scale={SCALE}"]
# The same scale in Python: 1 / 255 is 5e-6 away in the logits, enough to flip a near-tie
# between what a tool and the engine compute.
TO_UNIT = InputSettings(scale=SCALE)


def segmenter(input_shape=(None, None, 3), heads=False):
    """Stride 1 throughout, a sigmoid head; `heads` adds a second output (two landmarks)."""
    images = keras.Input(input_shape, name="images")
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1")(images)
    x = keras.layers.Conv2D(
        16, 3, padding="same", dilation_rate=2, activation="relu", name="conv2"
    )(x)
    x = keras.layers.Conv2D(
        16, 3, padding="same", dilation_rate=4, activation="relu", name="conv3"
    )(x)
    logits = keras.layers.Conv2D(1, 1, name="logits")(x)
    mask = keras.layers.Activation("sigmoid", name="mask")(logits)
    outputs = [mask]
    if heads:
        pooled = keras.layers.GlobalAveragePooling2D(name="pool")(x)
        box = keras.layers.Dense(4, name="box")(pooled)
        outputs.append(keras.layers.Reshape((2, 2), name="landmarks")(box))
        return keras.Model(images, outputs)
    return keras.Model(images, mask)


@pytest.fixture(scope="module")
def trained(shapes_data_dir, tmp_path_factory):
    """(directory, the binary segmenter trained on segunravel_shapes foreground, val examples)."""
    from tf_segunravel.data import load_split

    keras.utils.set_random_seed(7)

    def example(item):
        image = tf.cast(item["image"], tf.float32) / 255
        return image, tf.cast(item["segmentation"] > 0, tf.float32)

    train = load_split("segunravel_shapes", "train", shapes_data_dir).map(example)
    model = segmenter()
    model.compile(keras.optimizers.Adam(3e-3), "binary_crossentropy")
    model.fit(train.batch(8).repeat(), steps_per_epoch=300, epochs=1, verbose=0)
    root = tmp_path_factory.mktemp("trained")
    model.save(root / "binary.keras")
    fixed = segmenter((64, 64, 3))
    fixed.set_weights(model.get_weights())
    fixed.save(root / "fixed.keras")
    two = segmenter(heads=True)
    for layer in model.layers:
        two.get_layer(layer.name).set_weights(layer.get_weights())
    two.save(root / "two_outputs.keras")
    # A folder dataset of binary masks (the tools' folder:<dir>), and loose image files.
    val = load_split("segunravel_shapes", "val", shapes_data_dir).take(4)
    examples = list(val.as_numpy_iterator())
    for sub in ("images", "masks"):
        (root / "val" / sub).mkdir(parents=True)
    for item in examples:
        stem = item["filename"].decode()
        Image.fromarray(item["image"]).save(root / "val" / "images" / f"{stem}.png")
        mask = (item["segmentation"][..., 0] > 0).astype(np.uint8)
        Image.fromarray(mask, mode="L").save(root / "val" / "masks" / f"{stem}.png")
    return root, model, examples


def probability(model, image):
    return model(image[None].astype(np.float32) * np.float32(SCALE))[0, ..., 0].numpy()


@pytest.mark.slow
def test_the_segmenter_learned_its_task(trained):
    _, model, examples = trained
    accuracy = [
        np.mean((probability(model, e["image"]) > 0.5) == (e["segmentation"][..., 0] > 0))
        for e in examples
    ]
    assert np.mean(accuracy) > 0.9


@pytest.mark.slow
def test_a_binary_head_is_two_classes_from_the_logits(trained):
    _, model, examples = trained
    image = examples[0]["image"]
    engine = SegUnravel(model, input=TO_UNIT)
    assert engine.num_classes == 2 and engine.graph.stepped_over == ["mask"]
    result = engine(image[None])
    logits = keras.Model(model.inputs, model.get_layer("logits").output)
    z = logits(image[None].astype(np.float32) * np.float32(SCALE)).numpy()
    np.testing.assert_allclose(result.scores, np.concatenate([-z / 2, z / 2], -1), atol=1e-5)
    np.testing.assert_array_equal(result.labels[0], (z[0, ..., 0] > 0).astype(np.int32))
    # softmax of the two logits is the sigmoid the model ends in.
    np.testing.assert_allclose(
        tf.nn.softmax(result.scores)[0, ..., 1], probability(model, image), atol=1e-5
    )
    # Both classes unravel; every point is on the image, with its class's stride-1 seeds
    # within the receptive field (7 px each way).
    assert (result.seeds[0] > 0).all()
    points = result.points
    assert (points[:, 2:] >= 0).all() and (points[:, 2] < 129).all() and (points[:, 3] < 129).all()
    maps = fixation_maps(result, 129, 129, FixationSettings()).numpy()[0]
    assert maps[0].max() == pytest.approx(1) and maps[1].max() == pytest.approx(1)
    # Fed without the input settings, the same network sees other values: other labels.
    unscaled = SegUnravel(model)(image[None])
    assert not np.array_equal(unscaled.labels, result.labels)


def fixation_tool(out, model, *extra, images=None):
    return run_tool(
        "fixations",
        f"--model={model}",
        f"--images={images or model.parent / 'val' / 'images'}",
        f"--output_dir={out}",
        *extra,
        timeout=300,
    )


@pytest.mark.slow
def test_fixation_tool_on_the_binary_model(trained, tmp_path):
    root, model, examples = trained
    out = tmp_path / "fix"
    proc = fixation_tool(out, root / "binary.keras", *UNIT, f"--masks={root / 'val' / 'masks'}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    foregrounds = 0
    for item in examples:
        stem = item["filename"].decode()
        data = np.load(out / f"{stem}.npz")
        want = (probability(model, item["image"]) > 0.5).astype(np.int32)
        np.testing.assert_array_equal(data["labels"], want)  # stride 1: labels at the pixels
        assert list(data["classes"]) == list(np.unique(want))  # each predicted class seeds
        for maps in data["maps"]:
            assert maps.max() == pytest.approx(1)  # never blank
        points = data["points"]
        assert (points[:, 1:] >= 0).all() and (points[:, 1:] < 129).all()
        summary = json.loads((out / f"{stem}.json").read_text())["classes"]
        names = ["background", "foreground"]
        assert [summary[str(c)]["name"] for c in data["classes"]] == [
            names[c] for c in data["classes"]
        ]
        if "1" not in summary:
            continue
        foregrounds += 1
        assert summary["1"]["inside_predicted"] > 0.5
        assert summary["1"]["outliers_dropped"] < summary["1"]["fixation_points"]
    assert foregrounds >= 2


@pytest.mark.slow
def test_fixed_size_and_multi_output_models(trained, tmp_path):
    root, model, examples = trained
    image = examples[0]["image"][:90, :70]  # not the fixed model's 64 x 64
    Image.fromarray(image).save(tmp_path / "crop.png")
    proc = fixation_tool(tmp_path / "fixed", root / "fixed.keras", *UNIT, images=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = np.load(tmp_path / "fixed" / "crop.npz")
    assert data["labels"].shape == (90, 70) and data["maps"].shape[1:] == (90, 70)
    points = data["points"]
    assert (points[:, 1] < 90).all() and (points[:, 2] < 70).all()
    # The labels are the 64 x 64 prediction placed back on the image's own pixels.
    small = tf.image.resize(image[None].astype(np.float32), (64, 64))[0].numpy()
    back = np.asarray(
        Image.fromarray((probability(model, small) > 0.5).astype(np.uint8)).resize(
            (70, 90), Image.Resampling.NEAREST
        )
    )
    assert np.mean(data["labels"] == back) > 0.95

    two = root / "two_outputs.keras"
    proc = fixation_tool(tmp_path / "two", two, *UNIT, "--output=mask")
    assert proc.returncode == 0, proc.stderr[-2000:]
    single = fixation_tool(tmp_path / "one", root / "binary.keras", *UNIT)
    stem = examples[0]["filename"].decode()
    for name in ("points", "counts", "labels"):
        np.testing.assert_array_equal(
            np.load(tmp_path / "two" / f"{stem}.npz")[name],
            np.load(tmp_path / "one" / f"{stem}.npz")[name],
        )
    assert single.returncode == 0


@pytest.mark.slow
def test_experiments_and_export_on_the_binary_model(trained, tmp_path):
    root, _, examples = trained
    models = (("binary.keras", []), ("two_outputs.keras", ["--output=mask"]), ("fixed.keras", []))
    for model, extra in models:
        out = tmp_path / model
        proc = run_tool(
            "experiments",
            "--experiment=fixation_location",
            f"--model={root / model}",
            *extra,
            *UNIT,
            f"--dataset=folder:{root / 'val'}",
            "--pad_size=129",
            f"--output_dir={out}",
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        rows = json.loads((out / "fixation_location.json").read_text())["rows"]
        assert {row["name"] for row in rows} == {"background", "foreground"}
        foreground = next(row for row in rows if row["name"] == "foreground")
        assert foreground["inside_truth"] > 0.5 and foreground["iou"] > 0.5

    # tools/evaluate.py reads the binary model as two classes, with the same flags.
    proc = run_tool(
        "evaluate",
        f"--model={root / 'binary.keras'}",
        *UNIT,
        f"--dataset=folder:{root / 'val'}",
        "--pad_size=129",
        f"--output_json={tmp_path / 'val.json'}",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    scores = json.loads((tmp_path / "val.json").read_text())
    assert set(scores["per_class_iou"]) == {"background", "foreground"}
    assert scores["per_class_iou"]["foreground"] > 0.5

    for model, extra in models[:2]:  # the fixed-size model's export is checked below
        proc = run_tool(
            "export",
            f"--model={root / model}",
            *extra,
            *UNIT,
            f"--export_dir={tmp_path / ('saved_' + model)}",
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        loaded = tf.saved_model.load(str(tmp_path / ("saved_" + model)))
        image = examples[1]["image"]
        out = loaded.signatures["serving_default"](images=tf.constant(image[None]))
        probabilities = out["probabilities"].numpy()[0, ..., 1]
        np.testing.assert_allclose(probabilities, probability(trained[1], image), atol=1e-5)

    export_dir = tmp_path / "saved"
    proc = run_tool(
        "export", f"--model={root / 'fixed.keras'}", *UNIT, f"--export_dir={export_dir}"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded = tf.saved_model.load(str(export_dir))
    image = examples[1]["image"][:100, :80]
    out = loaded.signatures["serving_default"](images=tf.constant(image[None]))
    assert out["labels"].shape == (1, 100, 80) and out["probabilities"].shape == (1, 100, 80, 2)
    engine = SegUnravel(keras.models.load_model(root / "fixed.keras"), input=TO_UNIT)
    want = engine(image[None])
    got = loaded.signatures["fixations"](images=tf.constant(image[None]))
    np.testing.assert_array_equal(got["points"], want.points)
    np.testing.assert_array_equal(got["counts"], want.counts)
    # The fixation tool reads the SavedModel's baked settings and class names.
    Image.fromarray(image).save(tmp_path / "crop.png")
    images = tmp_path / "crop.png"
    proc = fixation_tool(tmp_path / "from_saved", export_dir, images=images)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "from_saved" / "crop.json").read_text())["classes"]
    assert {entry["name"] for entry in summary.values()} <= {"background", "foreground"}
    proc = fixation_tool(tmp_path / "refused", export_dir, "--input_scale=1", images=images)
    assert proc.returncode == 1 and "--input_scale=1.0" in last_line(proc.stderr)


@pytest.mark.slow
@pytest.mark.parametrize(
    "model, flags, message",
    [
        ("two_outputs.keras", [], "--model=.*: the model has 2 outputs .* --output=NAME"),
        ("two_outputs.keras", ["--output=nope"], "--output='nope': .*no output or layer"),
        ("two_outputs.keras", ["--output=landmarks"], "'landmarks' is not a score map"),
        ("binary.keras", ["--input_mean=1,2"], "--input_mean must be one number or three"),
        ("binary.keras", ["--input_channels=hsv"], "--input_channels"),
        ("binary.keras", ["--input_scale=0"], "--input_scale must be > 0"),
    ],
)
def test_bad_model_flags_are_one_line_errors(trained, tmp_path, model, flags, message):
    root, _, _ = trained
    proc = fixation_tool(tmp_path / "out", root / model, *flags)
    assert proc.returncode != 0
    line = last_line(proc.stderr)
    assert re.search(message, line), line
    assert not (tmp_path / "out").exists()
