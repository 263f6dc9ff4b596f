"""Pretrained imports: DeepLab caffemodels (both formats) and Keras' VGG-16."""

import keras
import numpy as np
import pytest

from tests.caffe_reference import caffemodel_bytes, largefov_forward
from tests.helpers import last_line, run_tool
from tf_segunravel.errors import InputError
from tf_segunravel.models import (
    convert_caffemodel,
    deeplab_largefov,
    load_caffemodel_weights,
    load_vgg16_weights,
)
from tf_segunravel.models.weights import WEIGHT_LAYERS

WIDTH = 1 / 16
CLASSES = 5


def caffe_blobs(width=WIDTH, classes=CLASSES, seed=0):
    """Random Caffe-layout blobs {name: (OIHW kernel, bias)} for a LargeFOV of this width."""
    rng = np.random.default_rng(seed)
    reference = deeplab_largefov(num_classes=classes, width=width)
    blobs = {}
    for name in WEIGHT_LAYERS:
        kh, kw, cin, cout = reference.get_layer(name).kernel.shape
        fan_in = kh * kw * cin
        kernel = rng.normal(0, np.sqrt(2 / fan_in), (cout, cin, kh, kw)).astype(np.float32)
        blobs[name] = (kernel, rng.normal(0, 0.1, cout).astype(np.float32))
    return blobs


def write_caffemodel(path, blobs, legacy, fc8_name="fc8_voc12"):
    layers = [(fc8_name if n == "fc8" else n, list(b)) for n, b in blobs.items()]
    path.write_bytes(caffemodel_bytes(layers, legacy))
    return str(path)


@pytest.mark.parametrize("legacy", [True, False], ids=["v1_layers", "layer"])
def test_caffemodel_weights_and_forward_match_caffe(tmp_path, legacy):
    blobs = caffe_blobs()
    path = write_caffemodel(tmp_path / "largefov.caffemodel", blobs, legacy)
    model = convert_caffemodel(path)
    assert model.get_layer("fc8").filters == CLASSES
    for name, (kernel, bias) in blobs.items():
        got_kernel, got_bias = model.get_layer(name).get_weights()
        np.testing.assert_array_equal(got_kernel, kernel.transpose(2, 3, 1, 0))
        np.testing.assert_array_equal(got_bias, bias)
    image = np.random.default_rng(1).integers(0, 256, (27, 30, 3)).astype(np.uint8)
    want = largefov_forward(image, blobs)
    got = model(image[None].astype(np.float32), training=False).numpy()[0]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * np.abs(want).max())


@pytest.mark.slow
def test_convert_tool_writes_loadable_weights(tmp_path):
    blobs = caffe_blobs()
    path = write_caffemodel(tmp_path / "m.caffemodel", blobs, legacy=True)
    output = tmp_path / "m.weights.h5"
    proc = run_tool("convert_caffe", f"--caffemodel={path}", f"--output={output}")
    assert proc.returncode == 0, proc.stderr
    assert "num_classes=5, width=0.0625" in proc.stdout
    model = deeplab_largefov(num_classes=CLASSES, width=WIDTH)
    model.load_weights(str(output))
    np.testing.assert_array_equal(model.get_layer("fc7").get_weights()[1], blobs["fc7"][1])
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []


def test_rejects_a_file_that_is_not_a_caffemodel(tmp_path):
    path = tmp_path / "notes.caffemodel"
    path.write_text("this is a prototxt, not weights\n" * 10)
    with pytest.raises(InputError, match=r"notes\.caffemodel: not a caffemodel"):
        convert_caffemodel(str(path))


def test_rejects_a_missing_file(tmp_path):
    with pytest.raises(InputError, match="cannot read caffemodel"):
        convert_caffemodel(str(tmp_path / "absent.caffemodel"))


def test_names_a_missing_layer(tmp_path):
    blobs = caffe_blobs()
    del blobs["conv3_2"]
    path = write_caffemodel(tmp_path / "m.caffemodel", blobs, legacy=False)
    with pytest.raises(InputError, match="missing layer 'conv3_2'"):
        convert_caffemodel(path)


def test_names_layer_and_shapes_on_mismatch(tmp_path):
    blobs = caffe_blobs()
    kernel, bias = blobs["conv4_1"]
    blobs["conv4_1"] = (kernel[:, :-1], bias)
    path = write_caffemodel(tmp_path / "m.caffemodel", blobs, legacy=False)
    with pytest.raises(
        InputError, match=r"layer conv4_1: expected .*\(3, 3, 16, 32\).*\(3, 3, 15, 32\)"
    ):
        convert_caffemodel(path)


def test_wrong_class_count(tmp_path):
    path = write_caffemodel(tmp_path / "m.caffemodel", caffe_blobs(), legacy=True)
    with pytest.raises(InputError, match="'fc8_voc12' scores 5 classes, expected 21"):
        convert_caffemodel(path, num_classes=21)
    model = deeplab_largefov(num_classes=21, width=WIDTH)
    with pytest.raises(
        InputError, match=r"layer fc8: expected kernel/bias shapes \(1, 1, 64, 21\)"
    ):
        load_caffemodel_weights(model, path)


@pytest.mark.slow
def test_tool_reports_bad_file_in_one_line(tmp_path):
    path = tmp_path / "junk.caffemodel"
    path.write_bytes(b"\xff" * 64)
    output = tmp_path / "out.weights.h5"
    proc = run_tool("convert_caffe", f"--caffemodel={path}", f"--output={output}")
    assert proc.returncode == 1
    assert last_line(proc.stderr).startswith("convert_caffe: error: ")
    assert "junk.caffemodel" in last_line(proc.stderr)
    assert not output.exists()


def test_tool_validates_output_flag(tmp_path):
    proc = run_tool("convert_caffe", "--caffemodel=x.caffemodel", f"--output={tmp_path}/w.h5")
    assert proc.returncode != 0
    assert "--output must end with .weights.h5" in proc.stderr


@pytest.mark.slow
def test_vgg16_import_from_a_weights_file(tmp_path):
    vgg = keras.applications.VGG16(include_top=True, weights=None)
    rng = np.random.default_rng(0)
    for layer in vgg.layers:
        if layer.weights:
            layer.set_weights(
                [rng.standard_normal(w.shape).astype(np.float32) for w in layer.weights]
            )
    path = str(tmp_path / "vgg16.weights.h5")
    vgg.save_weights(path)
    model = load_vgg16_weights(deeplab_largefov(), path)

    np.testing.assert_array_equal(
        model.get_layer("conv1_1").kernel.numpy(), vgg.get_layer("block1_conv1").kernel.numpy()
    )
    np.testing.assert_array_equal(
        model.get_layer("conv5_3").bias.numpy(), vgg.get_layer("block5_conv3").bias.numpy()
    )
    fc1 = vgg.get_layer("fc1").kernel.numpy()
    fc6 = model.get_layer("fc6").kernel.numpy()
    # fc6[i, j, c, f] is VGG fc1's weight for position (3i, 3j), channel c, filter 4f.
    for i, j, c, f in [(0, 0, 0, 0), (2, 1, 511, 1023), (1, 2, 7, 100)]:
        assert fc6[i, j, c, f] == fc1[(3 * i * 7 + 3 * j) * 512 + c, 4 * f]
    np.testing.assert_array_equal(
        model.get_layer("fc6").bias.numpy(), vgg.get_layer("fc1").bias.numpy()[::4]
    )
    fc2 = vgg.get_layer("fc2").kernel.numpy()
    np.testing.assert_array_equal(model.get_layer("fc7").kernel.numpy()[0, 0], fc2[::4, ::4])
    np.testing.assert_array_equal(
        model.get_layer("fc7").bias.numpy(), vgg.get_layer("fc2").bias.numpy()[::4]
    )


def test_vgg16_import_rejects_reduced_width():
    vgg = keras.applications.VGG16(include_top=True, weights=None)
    with pytest.raises(
        InputError, match=r"layer conv1_1: expected kernel/bias shapes \(3, 3, 3, 4\)"
    ):
        load_vgg16_weights(deeplab_largefov(width=WIDTH), vgg)


def test_vgg16_import_names_a_bad_file(tmp_path):
    path = tmp_path / "vgg16.weights.h5"
    path.write_text("not hdf5")
    with pytest.raises(InputError, match=r"vgg16\.weights\.h5: cannot load VGG16"):
        load_vgg16_weights(deeplab_largefov(), str(path))
