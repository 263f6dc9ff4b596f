"""TFLite networks: keras.applications and the bench zoo's segmenters through TensorFlow's
converter and back, the unravel of a converted network against its Keras original, and
MediaPipe's selfie segmenter as it ships inside the mediapipe 0.10.14 wheel, through the
tools, on matplotlib's photo of Grace Hopper."""

import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")

import keras
import tensorflow as tf

from tests.helpers import REPO_ROOT, evaluate_and_faithfulness, run_tool
from tf_segunravel.importers import tflite_model
from tf_segunravel.importers.tflite_model import TfliteImportError

sys.path.insert(0, REPO_ROOT)
from bench import zoo


def _converted(model, path):
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    return str(path)


def test_a_converted_unet_unravels_as_its_keras_original_bit_for_bit(tmp_path):
    """The bench zoo's U-Net (no batch norm) converts to the same arithmetic: its scores are
    bit-identical and so are the points and counts at K = 1 and K = 3."""
    from tf_segunravel.unravel import FixationSettings, SegUnravel

    keras.utils.set_random_seed(0)
    original = zoo.unet(32, classes=5, base=4)
    imported = tflite_model.import_tflite(_converted(original, tmp_path / "unet.tflite"))
    images = np.random.default_rng(0).uniform(0, 1, (2, 32, 32, 3)).astype("f4")
    np.testing.assert_array_equal(np.asarray(imported(images)), np.asarray(original(images)))
    for k in (1, 3):
        settings = FixationSettings(k=k, sigma=2.0)
        a, b = SegUnravel(imported, settings)(images), SegUnravel(original, settings)(images)
        np.testing.assert_array_equal(a.points, b.points)
        np.testing.assert_array_equal(a.counts, b.counts)


ZOO = ["MobileNetV2", "MobileNetV3Small", "ResNet50", "EfficientNetB0", "DenseNet121",
       "Xception", "InceptionV3", "NASNetMobile", "DeepLabV3+ (ResNet50)"]  # fmt: skip


@pytest.mark.slow  # the converter and LiteRT on full-width networks: 5 to 35 s each
@pytest.mark.parametrize("name", ZOO)
def test_the_zoo_round_trips_through_tflite(name, tmp_path):
    """Each network imports back within the check, keeps its labels, and unravels. For
    DeepLabV3+ the converter folds batch norm into the convolutions, so activations differ
    from the original by float rounding (1.6e-7 here); at K = 1 the points still agree on
    this input, and at K = 3 the order of near-equal taps moves some counts, so only K = 1
    is compared."""
    from tf_segunravel.unravel import FixationSettings, SegUnravel

    keras.utils.set_random_seed(0)
    if name in zoo.APPLICATIONS:
        original = zoo.APPLICATIONS[name](weights=None, input_shape=(96, 96, 3), include_top=False)
    else:
        original = zoo.build(name, 64)
    size = original.inputs[0].shape[1]
    imported = tflite_model.import_tflite(_converted(original, tmp_path / "net.tflite"))
    images = np.random.default_rng(0).uniform(0, 1, (1, size, size, 3)).astype("f4")
    ours, theirs = np.asarray(imported(images)), np.asarray(original(images))
    np.testing.assert_allclose(ours, theirs, atol=1e-4 * max(np.ptp(theirs), 1e-2))
    if name.startswith("DeepLab"):
        np.testing.assert_array_equal(ours.argmax(-1), theirs.argmax(-1))
        settings = FixationSettings(k=1, sigma=2.0)
        a, b = SegUnravel(imported, settings)(images), SegUnravel(original, settings)(images)
        np.testing.assert_array_equal(a.points, b.points)


@pytest.mark.slow
def test_a_layer_normalisation_written_as_moments_is_refused_by_its_operator(tmp_path):
    """ConvNeXt's LayerNormalization becomes MEAN over channels, SQUARED_DIFFERENCE, RSQRT:
    refused at the first, named."""
    keras.utils.set_random_seed(0)
    original = keras.applications.ConvNeXtTiny(weights=None, input_shape=(64, 64, 3),
                                               include_top=False)  # fmt: skip
    path = _converted(original, tmp_path / "convnext.tflite")
    with pytest.raises(TfliteImportError) as caught:
        tflite_model.import_tflite(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: MEAN operator ") and "only the spatial mean" in message


# --- MediaPipe's selfie segmenter, from its wheel ------------------------------------------

WHEEL, VERSION = "mediapipe", "0.10.14"
SELFIE = "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite"


@pytest.fixture(scope="module")
def selfie(tmp_path_factory):
    """selfie_segmentation.tflite (MediaPipe's 256 x 256 person segmenter: MobileNetV3-style
    blocks with float16 weights, and the custom Convolution2DTransposeBias op) from the
    mediapipe 0.10.14 wheel. mediapipe cannot be installed beside TensorFlow 2.21 (it pins
    protobuf below 5), so pip downloads the wheel without its dependencies and the file is
    read out of it, into pytest's temporary folder."""
    folder = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "download", f"{WHEEL}=={VERSION}", "--no-deps",
         "--only-binary=:all:", "-d", str(folder), "-q"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    wheels = [f for f in os.listdir(folder) if f.endswith(".whl")]
    if proc.returncode != 0 or not wheels:
        pytest.fail(f"pip could not download {WHEEL}=={VERSION}: {proc.stderr[-500:]}")
    with zipfile.ZipFile(folder / wheels[0]) as wheel:
        path = folder / "selfie_segmentation.tflite"
        path.write_bytes(wheel.read(SELFIE))
    return str(path)


@pytest.fixture(scope="module")
def person(tmp_path_factory):
    """matplotlib's photo of Grace Hopper (a portrait: her head and shoulders fill most of
    it), centre-cropped to a square and resized to the segmenter's 256 x 256."""
    import matplotlib
    from PIL import Image

    folder = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "sample_data")
    photo = Image.open(os.path.join(folder, "grace_hopper.jpg")).convert("RGB")
    side = min(photo.size)
    left, top = (photo.size[0] - side) // 2, (photo.size[1] - side) // 2
    square = photo.crop((left, top, left + side, top + side))
    saved = tmp_path_factory.mktemp("photo") / "hopper.png"
    square.resize((256, 256), Image.Resampling.BILINEAR).save(saved)
    return saved


@pytest.mark.slow  # downloads a 36 MB wheel, then every tool in subprocesses: about 3 min
def test_mediapipes_selfie_segmenter_runs_through_the_tools(selfie, person, tmp_path):
    network = tflite_model.import_tflite(selfie)
    kinds = {type(layer).__name__ for layer in network.layers}
    assert {"Conv2DTranspose", "DepthwiseConv2D", "Resize2D"} <= kinds
    out = tmp_path / "fixations"
    args = [f"--model={selfie}", "--input_scale=0.00392157"]
    proc = run_tool("fixations", *args, f"--images={person}", f"--output_dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(out / "hopper.npz") as saved:
        points, labels = saved["points"], saved["labels"]
    # The one-channel head is split into background and person; the person is found, and
    # her fixations lie inside the region labelled person.
    assert 0.2 < labels.mean() < 0.9
    inside = points[points[:, 0] == 1]
    assert len(inside) >= 10
    assert labels[inside[:, 1], inside[:, 2]].mean() > 0.9
    export = tmp_path / "export"
    proc = run_tool("export", *args, f"--export_dir={export}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    served = tmp_path / "served"
    proc = run_tool(
        "fixations", f"--model={export}", f"--images={person}", f"--output_dir={served}"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(served / "hopper.npz") as saved:
        np.testing.assert_array_equal(saved["labels"], labels)
    # The converter writes it once as a .keras file, which gives the same labels.
    converted = tmp_path / "selfie.keras"
    proc = run_tool("convert_model", f"--model={selfie}", f"--output={converted}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"wrote {converted}:" in proc.stdout and "input 256x256, checked" in proc.stdout
    again = tmp_path / "again"
    proc = run_tool(
        "fixations", f"--model={converted}", "--input_scale=0.00392157", f"--images={person}",
        f"--output_dir={again}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(again / "hopper.npz") as saved:
        np.testing.assert_array_equal(saved["labels"], labels)
    proc = run_tool("fixations", *args, f"--images={person}", f"--output_dir={tmp_path / 'x'}",
                    "--input_size=128,128")  # fmt: skip
    assert proc.returncode == 1 and "a TFLite model has one input size, 256x256" in proc.stderr
    # evaluate and the faithfulness experiment, on the photo with boxes drawn by hand where
    # the answer is unambiguous (the flag and the wall: background; her face and her
    # uniform: person) and 255, unlabelled, everywhere else.

    mask = np.full((256, 256), 255, np.uint8)
    mask[0:90, 0:40] = mask[0:90, 216:256] = 0
    mask[90:140, 100:150] = mask[210:256, 70:190] = 1
    assert evaluate_and_faithfulness(args, person, mask, tmp_path) > 0.95  # 0.999 here
