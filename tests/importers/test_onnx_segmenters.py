"""A small ONNX segmenter, built with `onnx.helper` in the shape PyTorch exports take
(padded convolutions, batch norm, padded max pooling, a skip, a bilinear resize back to the
input's size read from its Shape), imported and unravelled."""

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from tests.helpers import run_tool  # noqa: E402
from tf_segunravel.importers import onnx_model  # noqa: E402

CLASSES = 4


def segmenter(size=(32, 40), seed=0, dynamic=False, coordinates="align_corners", classes=CLASSES):
    """conv-bn-relu, max pool 3/2 pad 1, conv-relu, add a 1 x 1 projection of the pooled
    map, 1 x 1 scores, resized to the input size with Shape -> Slice -> Concat."""
    rng = np.random.default_rng(seed)

    def w(*shape):
        return (rng.standard_normal(shape) * 0.4).astype(np.float32)

    constants = {
        "w1": w(8, 3, 3, 3), "b1": w(8),
        "gamma": 1 + w(8), "beta": w(8), "mean": w(8), "var": np.abs(w(8)) + 0.5,
        "w2": w(8, 8, 3, 3), "b2": w(8),
        "wp": w(8, 8, 1, 1),
        "w3": w(classes, 8, 1, 1), "b3": w(classes),
        "two": np.array([2], np.int64), "four": np.array([4], np.int64),
        "zero": np.array([0], np.int64),
    }  # fmt: skip
    n = helper.make_node
    nodes = [
        n("Conv", ["image", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        n("BatchNormalization", ["c1", "gamma", "beta", "mean", "var"], ["bn1"]),
        n("Relu", ["bn1"], ["r1"]),
        n("MaxPool", ["r1"], ["p1"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        n("Conv", ["p1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        n("Relu", ["c2"], ["r2"]),
        n("Conv", ["p1", "wp"], ["skip"]),
        n("Add", ["r2", "skip"], ["sum"]),
        n("Conv", ["sum", "w3", "b3"], ["low"]),
        n("Shape", ["image"], ["shape"]),
        n("Slice", ["shape", "two", "four"], ["hw"]),
        n("Shape", ["low"], ["low_shape"]),
        n("Slice", ["low_shape", "zero", "two"], ["nc"]),
        n("Concat", ["nc", "hw"], ["sizes"], axis=0),
        n("Resize", ["low", "", "", "sizes"], ["scores"], mode="linear",
          coordinate_transformation_mode=coordinates),
    ]  # fmt: skip
    dims = [1, 3, "h", "w"] if dynamic else [1, 3, *size]
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, dims)
    scores = helper.make_tensor_value_info("scores", TensorProto.FLOAT, None)
    initialisers = [numpy_helper.from_array(v, k) for k, v in constants.items()]
    graph = helper.make_graph(nodes, "segmenter", [image], [scores], initialisers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("coordinates", ["align_corners", "half_pixel", "asymmetric"])
def test_an_imported_segmenter_is_unravelled_inside_its_image(coordinates, tmp_path):
    from tf_segunravel.unravel import FixationSettings, SegUnravel

    path = tmp_path / "segmenter.onnx"
    onnx.save(segmenter(coordinates=coordinates), path)
    network = onnx_model.import_onnx(path)
    kinds = {type(layer).__name__ for layer in network.layers}
    assert {"ExplicitPooling2D", "Resize2D", "BatchNormalization"} <= kinds
    # A 3 x 3 convolution padded by 1 is Keras' own 'same', and stays one layer.
    assert network.get_layer("c1").padding == "same" and "ZeroPadding2D" not in kinds
    assert "Permute" not in kinds  # NCHW became NHWC by permuting weights, not tensors
    images = np.random.default_rng(1).uniform(0, 255, (2, 32, 40, 3)).astype(np.float32)
    result = SegUnravel(network, FixationSettings(sigma=2.0))(images)
    for b in range(2):
        points, counts = result.for_image(b)
        assert len(points) and (counts > 0).all()
        assert points[:, 1].max() < 32 and points[:, 2].max() < 40 and points.min() >= 0
        predicted = np.argmax(network(images[b : b + 1])[0], axis=-1)
        assert set(np.unique(points[:, 0])) == set(np.unique(predicted))


@pytest.mark.slow  # the fixation tool in a subprocess: about 10 s
def test_the_fixation_tool_takes_an_onnx_model(tmp_path):
    from PIL import Image

    model = tmp_path / "segmenter.onnx"
    onnx.save(segmenter(dynamic=True), model)
    image = tmp_path / "photo.png"
    pixels = np.random.default_rng(2).integers(0, 255, (24, 36, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(image)
    out = tmp_path / "out"
    args = [f"--model={model}", f"--images={image}", f"--output_dir={out}"]
    proc = run_tool("fixations", *args, "--input_size=24,36", "--input_scale=0.00392157")
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = sorted(p.name for p in out.iterdir())
    assert any(name.startswith("photo") for name in written), written
    proc = run_tool("fixations", *args[:2], f"--output_dir={tmp_path / 'none'}")
    assert proc.returncode == 1
    assert (
        f"{model}: input 'image' has a dynamic height or width; give the size to build it "
        "for as --input_size=HEIGHT,WIDTH" in proc.stderr
    )
    assert not (tmp_path / "none").exists()
    # A model built for one size takes an image of another as every fixed-size model does:
    # resized to its input, the points mapped back onto the image's pixels.
    proc = run_tool("fixations", *args[:2], f"--output_dir={tmp_path / 'other'}",
                    "--input_size=30,30")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(tmp_path / "other" / "photo.npz") as saved:
        points = saved["points"]
    assert len(points) and points[:, 1].max() < 24 and points[:, 2].max() < 36


@pytest.mark.slow  # the converter in a subprocess: about 8 s
def test_the_converter_writes_a_keras_model_that_reproduces_the_import(tmp_path):
    import keras

    model = tmp_path / "segmenter.onnx"
    onnx.save(segmenter(dynamic=True), model)
    output = tmp_path / "segmenter.keras"
    proc = run_tool("convert_model", f"--model={model}", f"--output={output}", "--input_size=32,40")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"wrote {output}:" in proc.stdout and "input 32x40, checked" in proc.stdout
    loaded = keras.saving.load_model(output)
    direct = onnx_model.import_onnx(model, input_size=(32, 40))
    x = np.random.default_rng(3).uniform(0, 1, (1, 32, 40, 3)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(direct(x)))
    assert loaded.output_names == ["scores"]


def test_an_imported_network_unravels_as_the_same_network_built_in_keras(tmp_path):
    """An ONNX graph and its Keras twin (Conv2D 'same', ReLU, MaxPooling2D, a 1 x 1 score
    layer, Keras' own bilinear Resizing) give the same points and counts, bit for bit, at
    K = 1 and K = 3. Every activation is bit-identical but the final resize's (Resize2D's
    gathers and tf.image.resize round differently, by 6e-5 here), which moves no label."""
    import keras

    from tf_segunravel.unravel import FixationSettings, SegUnravel

    rng = np.random.default_rng(0)
    w1, b1 = (
        (rng.standard_normal((8, 3, 3, 3)) * 0.3).astype("f4"),
        (rng.standard_normal(8) * 0.1).astype("f4"),
    )
    w2, b2 = (
        (rng.standard_normal((4, 8, 1, 1)) * 0.5).astype("f4"),
        (rng.standard_normal(4) * 0.1).astype("f4"),
    )
    height, width = 24, 32
    n = helper.make_node
    nodes = [
        n("Conv", ["image", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        n("Relu", ["c1"], ["r1"]),
        n("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        n("Conv", ["p1", "w2", "b2"], ["low"]),
        n("Resize", ["low", "", "", "sizes"], ["scores"], mode="linear",
          coordinate_transformation_mode="half_pixel"),
    ]  # fmt: skip
    sizes = np.array([1, 4, height, width], np.int64)
    constants = {"w1": w1, "b1": b1, "w2": w2, "b2": b2, "sizes": sizes}
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, height, width])
    scores = helper.make_tensor_value_info("scores", TensorProto.FLOAT, None)
    initialisers = [numpy_helper.from_array(v, k) for k, v in constants.items()]
    graph = helper.make_graph(nodes, "g", [image], [scores], initialisers)
    path = tmp_path / "net.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    imported = onnx_model.import_onnx(path)

    inputs = keras.Input((height, width, 3))
    conv1, conv2 = keras.layers.Conv2D(8, 3, padding="same"), keras.layers.Conv2D(4, 1)
    hidden = keras.layers.MaxPooling2D(2)(keras.layers.ReLU()(conv1(inputs)))
    outputs = keras.layers.Resizing(height, width, interpolation="bilinear")(conv2(hidden))
    twin = keras.Model(inputs, outputs)
    conv1.set_weights([w1.transpose(2, 3, 1, 0), b1])
    conv2.set_weights([w2.transpose(2, 3, 1, 0), b2])

    images = rng.uniform(0, 255, (3, height, width, 3)).astype("f4")
    ours, theirs = np.asarray(imported(images)), np.asarray(twin(images))
    np.testing.assert_allclose(ours, theirs, atol=1e-3)
    np.testing.assert_array_equal(ours.argmax(-1), theirs.argmax(-1))
    for k in (1, 3):
        settings = FixationSettings(k=k, sigma=2.0)
        a, b = SegUnravel(imported, settings)(images), SegUnravel(twin, settings)(images)
        np.testing.assert_array_equal(a.points, b.points)
        np.testing.assert_array_equal(a.counts, b.counts)
        np.testing.assert_array_equal(a.geometry, b.geometry)


@pytest.mark.slow  # two tools in subprocesses over the shapes val split: about 40 s
def test_evaluate_and_the_faithfulness_experiment_take_an_onnx_model(tmp_path, shapes_data_dir):
    """The gradient baselines run on the imported model beside its fixations."""
    import json

    pytest.importorskip("tf_keras_vis")
    model = tmp_path / "segmenter.onnx"
    onnx.save(segmenter(dynamic=True, classes=6), model)
    common = [f"--model={model}", "--input_size=129,129", f"--data_dir={shapes_data_dir}"]
    scores = tmp_path / "scores.json"
    proc = run_tool("evaluate", *common, "--pad_size=129", f"--output_json={scores}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 0 <= json.loads(scores.read_text())["mean_iou"] <= 1
    out = tmp_path / "faithfulness"
    proc = run_tool(
        "experiments",
        *common,
        "--experiment=faithfulness",
        f"--output_dir={out}",
        "--methods=fixations,gradcam,segment_prior",
        "--max_images=2",
        "--faithfulness_steps=4",
        "--min_pixels=16",
        "--randomisation_images=1",
        "--randomisation_layers=2",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((out / "faithfulness.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["fixations", "gradcam", "segment_prior"]
    assert all(0 <= r["deletion_auc"] <= 1 for r in rows)
