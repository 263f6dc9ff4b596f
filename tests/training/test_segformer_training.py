"""A SegFormer (keras-hub's MiT-B0 layers at 1/8 width; 800 steps, about 90 s) trained
here on segunravel_shapes: its fixations land inside its predicted segments above chance,
and the faithfulness experiment scores its fixations beside Grad-CAM."""

import json

import numpy as np
import pytest

from tests.helpers import run_tool
from tf_segunravel.data.pipeline import load_split
from tf_segunravel.data.shapes import CLASS_KINDS, CLASS_NAMES
from tf_segunravel.experiments.location import above_chance, fixation_location
from tf_segunravel.training import load_network

pytest.importorskip("keras_hub")


@pytest.fixture(scope="module")
def trained_segformer(tmp_path_factory, shapes_data_dir):
    model_dir = tmp_path_factory.mktemp("segformer") / "run"
    proc = run_tool(
        "train",
        "--flagfile=flags/shapes_stable.cfg",  # whole 129-pixel images, lr 0.03, a warm-up
        "--architecture=segformer_b0",
        "--width=0.125",
        "--dropout=0.1",
        "--crop_size=128",  # the images' scale (a smaller network input would shrink them)
        "--steps=800",
        "--checkpoint_every=400",
        "--warmup_steps=100",
        f"--model_dir={model_dir}",
        f"--data_dir={shapes_data_dir}",
        "--verbose=0",
        "--deterministic",  # the same network every run (without, a class's IoU came and went)
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return model_dir


@pytest.mark.slow
def test_a_trained_segformers_fixations_land_in_its_segments(trained_segformer, shapes_data_dir):
    network = load_network(str(trained_segformer))
    val = load_split("segunravel_shapes", "val", shapes_data_dir)
    rows = fixation_location(
        network, val, 6, list(CLASS_NAMES), list(CLASS_KINDS), max_images=8, pad_size=129
    )
    assert sum(r["images"] for r in rows) >= 8
    gap = above_chance(rows)
    assert gap is not None and gap > 0, rows
    # A class neither in these 8 images nor predicted has no IoU (None), as in `evaluate`.
    iou = np.mean([r["iou"] for r in rows if r["iou"] is not None])
    assert iou > 0.3, rows  # it learned the objects (background alone scores 1/6 to 1/2)


@pytest.mark.slow
def test_faithfulness_runs_on_a_trained_segformer_beside_gradcam(
    trained_segformer, shapes_data_dir, tmp_path
):
    out = tmp_path / "faithfulness"
    proc = run_tool(
        "experiments",
        "--experiment=faithfulness",
        f"--model={trained_segformer}",
        f"--data_dir={shapes_data_dir}",
        f"--output_dir={out}",
        "--methods=fixations,gradcam",
        "--gradcam_layer=head_dropout",  # the decoder's fused features, the classifier's input
        "--max_images=2",
        "--pad_size=129",
        "--faithfulness_steps=4",
        "--randomisation_images=1",
        "--randomisation_layers=1",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((out / "faithfulness.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["fixations", "gradcam"]
    assert all(np.isfinite(r["deletion_auc"]) for r in rows)
