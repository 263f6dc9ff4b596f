"""DeepLab's dense CRF: its defaults, what it does at a colour edge, and the tools' --crf."""

import json
import os

import keras
import numpy as np
import pytest
from PIL import Image

from tests.helpers import last_line, run_tool, save_tiny_largefov
from tf_segunravel import crf

needs_crf = pytest.mark.skipif(not crf.available(), reason='the crf extra: pip install ".[crf]"')


def test_defaults_are_deeplab_largefovs():
    """DeepLab-LargeFOV's test.prototxt DenseCRF layer: bi_w 4, bi_xy_std 121, bi_rgb_std 5,
    pos_w 3, pos_xy_std 3, max_iter 10."""
    assert crf.CRFSettings() == crf.DEEPLAB_LARGEFOV
    assert (
        crf.DEEPLAB_LARGEFOV.bilateral_weight,
        crf.DEEPLAB_LARGEFOV.bilateral_xy_std,
        crf.DEEPLAB_LARGEFOV.bilateral_rgb_std,
        crf.DEEPLAB_LARGEFOV.gaussian_weight,
        crf.DEEPLAB_LARGEFOV.gaussian_xy_std,
        crf.DEEPLAB_LARGEFOV.iterations,
    ) == (4, 121, 5, 3, 3, 10)
    with pytest.raises(ValueError, match="bilateral_rgb_std must be > 0"):
        crf.CRFSettings(bilateral_rgb_std=0)


def test_search_grid_varies_the_bilateral_kernel_only():
    grid = crf.search_grid([3, 4], [50, 121], [5])
    assert len(grid) == 4
    assert {(s.bilateral_weight, s.bilateral_xy_std) for s in grid} == {
        (3, 50),
        (3, 121),
        (4, 50),
        (4, 121),
    }
    assert all(s.gaussian_weight == 3 and s.iterations == 10 for s in grid)


def edge_case(height=48, width=96, edge=40, blurred_edge=58):
    """A red | blue image with its colour edge at `edge`, and a softmax whose two classes
    cross, blurrily, at `blurred_edge`, as upsampled stride-8 scores do."""
    image = np.zeros((height, width, 3), np.uint8)
    image[:, :edge] = (200, 40, 30)
    image[:, edge:] = (30, 40, 200)
    ramp = 1 / (1 + np.exp(-(np.arange(width) - blurred_edge) / 6.0))
    probabilities = np.stack([1 - ramp, ramp], axis=-1)[None].repeat(height, axis=0)
    return image, probabilities.astype(np.float32)


@needs_crf
def test_crf_moves_a_blurry_boundary_to_the_colour_edge():
    image, probabilities = edge_case()
    before = probabilities.argmax(-1)
    after = crf.dense_crf(image, probabilities)
    truth = np.zeros_like(before)
    truth[:, 40:] = 1
    assert (before != truth).mean() > 0.15  # 18 of 96 columns wrong
    assert (after != truth).mean() < 0.02
    assert after.dtype == np.int32 and after.shape == before.shape


@needs_crf
def test_crf_keeps_confident_labels_on_a_flat_image():
    image = np.full((20, 30, 3), 128, np.uint8)
    probabilities = np.full((20, 30, 3), 0.05, np.float32)
    probabilities[..., 2] = 0.9
    assert (crf.dense_crf(image, probabilities) == 2).all()


def hide_the_extra(tmp_path):
    """An environment in which `import pydensecrf.densecrf` fails, as without the extra."""
    fake = tmp_path / "fake" / "pydensecrf"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise ImportError("not installed")\n')
    path = os.pathsep.join(filter(None, [str(tmp_path / "fake"), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": path}


@pytest.mark.parametrize("tool", ["evaluate", "fixations"])
@pytest.mark.slow
def test_missing_extra_is_one_line(tmp_path, tool):
    (tmp_path / "unused.keras").write_text("never read: the extra is checked first")
    args = [f"--model={tmp_path / 'unused.keras'}", "--crf"]
    if tool == "fixations":
        args += [f"--images={tmp_path}", f"--output_dir={tmp_path / 'out'}"]
    proc = run_tool(tool, *args, env=hide_the_extra(tmp_path))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    expected = f'{tool}: error: --crf needs the crf extra: pip install -e ".[crf]"'
    assert last_line(proc.stderr) == expected
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    save_tiny_largefov(path, num_classes=6)
    return path


@needs_crf
@pytest.mark.slow
def test_evaluate_reports_both_tables_from_one_pass(tmp_path, tiny_model, shapes_data_dir):
    common = [
        f"--model={tiny_model}",
        f"--data_dir={shapes_data_dir}",
        "--split=val[:12]",
        "--pad_size=129",
    ]
    plain = run_tool("evaluate", *common, f"--output_json={tmp_path / 'plain.json'}")
    assert plain.returncode == 0, plain.stderr[-3000:]
    # 5 images a pass (5, 5, 2): the network's column is that of one at a time.
    proc = run_tool(
        "evaluate", *common, "--crf", "--batch_size=5", f"--output_json={tmp_path / 'crf.json'}"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "IoU + CRF" in proc.stdout and "mean IoU" in proc.stdout
    with_crf = json.loads((tmp_path / "crf.json").read_text())
    without = json.loads((tmp_path / "plain.json").read_text())
    assert with_crf["confusion"] == without["confusion"]  # the network's column is unchanged
    assert with_crf["crf"]["settings"] == {
        "bilateral_weight": 4.0,
        "bilateral_xy_std": 121.0,
        "bilateral_rgb_std": 5.0,
        "gaussian_weight": 3.0,
        "gaussian_xy_std": 3.0,
        "iterations": 10,
    }
    assert 0 <= with_crf["crf"]["mean_iou"] <= 1
    assert with_crf["crf"]["confusion"] != with_crf["confusion"]


@needs_crf
@pytest.mark.slow
def test_crf_search_picks_the_best_of_its_grid(tmp_path, tiny_model, shapes_data_dir):
    grid_json = tmp_path / "grid.json"
    proc = run_tool(
        "evaluate",
        f"--model={tiny_model}",
        f"--data_dir={shapes_data_dir}",
        "--split=val[:6]",
        "--pad_size=129",
        "--crf_search",
        "--crf_search_images=3",
        "--crf_search_weights=2,6",
        "--crf_search_xy_stds=30",
        "--crf_search_rgb_stds=5,13",
        f"--crf_search_json={grid_json}",
        f"--output_json={tmp_path / 'out.json'}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    grid = json.loads(grid_json.read_text())
    assert grid["images"] == 3 and len(grid["grid"]) == 4
    ious = [row["mean_iou"] for row in grid["grid"]]
    assert ious == sorted(ious, reverse=True)
    best = grid["grid"][0]
    assert "crf_search: best of 4 on 3 images" in proc.stdout
    used = json.loads((tmp_path / "out.json").read_text())["crf"]["settings"]
    assert used["bilateral_weight"] == best["bilateral_weight"]
    assert used["bilateral_rgb_std"] == best["bilateral_rgb_std"]


def colour_model(path):
    """Stride-8 scores that see red versus blue through a wide blur, biased towards blue:
    the labels they give at image size miss the colour edge."""
    source = keras.Input((None, None, 3))
    blurred = keras.layers.AveragePooling2D(24, strides=8, padding="same")(source)
    scores = keras.layers.Conv2D(2, 1, name="score")(blurred)
    model = keras.Model(source, scores)
    red_minus_blue = np.array([[0.02, -0.02], [0.0, 0.0], [-0.02, 0.02]], np.float32)
    # A bias towards blue moves the network's boundary off the colour edge, as a class
    # prior does; the CRF's colour kernel pulls it back.
    bias = np.array([0.0, 1.5], np.float32)
    model.get_layer("score").set_weights([red_minus_blue[None, None], bias])
    model.save(path)
    return path


@needs_crf
@pytest.mark.slow
def test_fixations_tool_draws_and_scores_the_crf_labels(tmp_path):
    model = colour_model(tmp_path / "colour.keras")
    image, _ = edge_case(height=40, width=64, edge=28, blurred_edge=30)
    (tmp_path / "images").mkdir()
    Image.fromarray(image).save(tmp_path / "images" / "edge.png")
    outputs = {}
    for name, extra in (("plain", []), ("crf", ["--crf"])):
        proc = run_tool(
            "fixations",
            f"--model={model}",
            f"--images={tmp_path / 'images'}",
            f"--output_dir={tmp_path / name}",
            "--sigma=2",
            *extra,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        outputs[name] = np.load(tmp_path / name / "edge.npz")
    plain, refined = outputs["plain"], outputs["crf"]
    # The seeds and points are the network's either way; only the drawn labels differ.
    np.testing.assert_array_equal(plain["points"], refined["points"])
    np.testing.assert_array_equal(plain["counts"], refined["counts"])
    truth = np.zeros((40, 64), np.int32)
    truth[:, 28:] = 1
    assert refined["labels"].shape == truth.shape
    assert (plain["labels"] != truth).mean() > 0.03  # a few columns off the edge
    assert (refined["labels"] != truth).mean() < (plain["labels"] != truth).mean() / 2
    stats = json.loads((tmp_path / "crf" / "edge.json").read_text())["classes"]
    ys, xs = refined["points"][:, 1], refined["points"][:, 2]
    for cls, entry in stats.items():  # inside_predicted is measured on the CRF labels
        mine = refined["points"][:, 0] == int(cls)
        inside = (refined["labels"][ys[mine], xs[mine]] == int(cls)).mean()
        assert entry["inside_predicted"] == pytest.approx(inside)
