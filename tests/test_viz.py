"""Figures: the flow GIF's frames read from matplotlib's canvas."""

import io

import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

from tf_segunravel import viz


def _frame_like_figure():
    image = np.random.default_rng(0).integers(0, 256, (17, 23, 3), dtype=np.uint8)
    figure, axis = plt.subplots(figsize=(4, 3.4), dpi=viz.FRAME_DPI)
    axis.imshow(image, extent=(-0.5, 22.5, 16.5, -0.5))
    axis.scatter([3, 10], [4, 12], s=[6, 46], c=[[1, 0, 0], [0, 0, 1]], edgecolors="white")
    axis.set_title("layer  (17x23)")
    axis.axis("off")
    return figure


def test_frames_are_the_pixels_matplotlib_writes_as_png():
    figure = _frame_like_figure()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=viz.FRAME_DPI)
    buffer.seek(0)
    with Image.open(buffer) as written:
        reference = np.asarray(written.convert("RGB"))
    frame = viz._figure_to_array(figure)
    assert frame.dtype == np.uint8 and frame.shape == (272, 320, 3)
    np.testing.assert_array_equal(frame, reference)


def test_flow_gif_has_a_frame_per_layer(tmp_path):
    image = np.full((16, 16, 3), 128, np.uint8)
    flow = [
        ("fc8", (2, 2), np.array([[0, 1, 1, 1]]), np.array([3])),
        ("pool1", (8, 8), np.array([[0, 1, 4, 5], [0, 2, 1, 1]]), np.array([1, 2])),
        ("input", (16, 16), np.zeros((0, 4), np.int64), np.zeros(0)),
    ]
    path = tmp_path / "flow.gif"
    viz.flow_gif(image, flow, str(path))
    with Image.open(path) as gif:
        assert gif.n_frames == 3
