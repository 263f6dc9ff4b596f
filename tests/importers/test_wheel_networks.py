"""A trained network as it ships inside a PyPI wheel: PaddleOCR's PP-OCRv4 text detector
(a DB segmenter with a one-channel sigmoid head), in rapidocr-onnxruntime 1.4.4, through the
tools, on matplotlib's own logo."""

import importlib.metadata
import os

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from tests.helpers import evaluate_and_faithfulness, run_tool

WHEEL = "rapidocr-onnxruntime"
DETECTOR = "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx"
# PaddleOCR's input: RGB / 255, minus the ImageNet mean, over its std (0.229, 0.224, 0.225),
# here over their mean 0.226, the one scale --input_scale takes.
STD = 0.226
INPUT = [
    f"--input_scale={1 / (255 * STD):.8f}",
    "--input_mean=" + ",".join(f"{m / STD:.5f}" for m in (0.485, 0.456, 0.406)),
]


@pytest.fixture(scope="module")
def detector():
    try:
        path = importlib.metadata.distribution(WHEEL).locate_file(DETECTOR)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"{WHEEL} is not installed (the test extra installs it)")
    return str(path)


@pytest.fixture(scope="module")
def logo(tmp_path_factory):
    """matplotlib's logo, the word "matplotlib", on white at 256 x 64, and its ink."""
    import matplotlib
    from PIL import Image

    path = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "sample_data")
    rgba = Image.open(os.path.join(path, "logo2.png")).convert("RGBA")
    white = Image.new("RGBA", rgba.size, "white")
    white.alpha_composite(rgba)
    image = white.convert("RGB").resize((256, 64), Image.Resampling.BILINEAR)
    saved = tmp_path_factory.mktemp("logo") / "logo.png"
    image.save(saved)
    ink = np.asarray(image.convert("L")) < 160
    return saved, ink


@pytest.mark.slow  # imports a 4.7 MB detector, then every tool in subprocesses: about 3 min
def test_a_text_detector_from_a_wheel_runs_through_the_tools(detector, logo, tmp_path):
    image, ink = logo
    out = tmp_path / "fixations"
    args = [f"--model={detector}", "--input_size=64,256", *INPUT]
    proc = run_tool("fixations", *args, f"--images={image}", f"--output_dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(out / "logo.npz") as saved:
        points, labels = saved["points"], saved["labels"]
    # The one-channel head is split into background and text; the word is found.
    assert 0.05 < labels.mean() < 0.5
    text = points[points[:, 0] == 1]
    assert len(text) >= 20
    # Its fixations sit on the letters: within 3 pixels of ink far above chance (0.78
    # against 0.45 on this machine).
    near_ink = ink.copy()
    for _ in range(3):  # within 3 steps of 4-connected neighbours
        grown = near_ink.copy()
        grown[1:] |= near_ink[:-1]
        grown[:-1] |= near_ink[1:]
        grown[:, 1:] |= near_ink[:, :-1]
        grown[:, :-1] |= near_ink[:, 1:]
        near_ink = grown
    share = near_ink[text[:, 1], text[:, 2]].mean()
    assert share > near_ink.mean() + 0.15, (share, near_ink.mean())
    # The export takes it too, and serves the same labels.
    export = tmp_path / "export"
    proc = run_tool("export", *args, f"--export_dir={export}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    served = tmp_path / "served"
    proc = run_tool("fixations", f"--model={export}", f"--images={image}", f"--output_dir={served}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(served / "logo.npz") as saved:
        np.testing.assert_array_equal(saved["labels"], labels)
    # evaluate and the faithfulness experiment, with the logo's ink as text and every pixel
    # more than 6 pixels from ink as background (255, unlabelled, between: a detector's text
    # region covers the word's body, not only its strokes).

    far = ~ink
    for _ in range(6):
        grown = ~far
        grown[1:] |= ~far[:-1]
        grown[:-1] |= ~far[1:]
        grown[:, 1:] |= ~far[:, :-1]
        grown[:, :-1] |= ~far[:, 1:]
        far = ~grown
    mask = np.full(ink.shape, 255, np.uint8)
    mask[ink], mask[far] = 1, 0
    # Evaluation pads to a square, so the detector is built for 256 x 256 there.
    square = [f"--model={detector}", "--input_size=256,256", *INPUT]
    mean_iou = evaluate_and_faithfulness(square, image, mask, tmp_path)
    assert mean_iou > 0.45  # 0.58 on this machine
