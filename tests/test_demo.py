"""The main job in a reduced mode: every artefact exists and is valid; re-runs reuse work."""

import json
import os
import re

import pytest
import tensorflow as tf
from conftest import REPO_ROOT
from helpers import run_tool
from PIL import Image

from tf_segunravel import demo


def flagfile_values(name):
    values = {}
    with open(os.path.join(REPO_ROOT, "flags", name)) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("--") or line.startswith("--flagfile"):
                continue
            if "=" in line:
                key, value = line[2:].split("=", 1)
                values[key] = value
            else:
                values[line[2:].removeprefix("no")] = not line.startswith("--no")
    return values


@pytest.mark.parametrize(
    "flagfile, arm",
    [
        ("shapes_baseline.cfg", demo.SHAPES_BASELINE),
        ("shapes_template_cosine.cfg", demo.SHAPES_TEMPLATE),
    ],
)
def test_demo_trains_what_the_flagfiles_say(flagfile, arm):
    values = flagfile_values("shapes_baseline.cfg")
    values.update(flagfile_values(flagfile))
    for key, value in values.items():
        expected = arm[key]
        assert (
            type(expected)(value) == expected
            if not isinstance(expected, bool)
            else (value == expected)
        ), key
    assert {k for k in arm if k != "num_classes"} <= set(values)


@pytest.mark.slow
def test_reduced_demo_writes_every_artefact(tmp_path):
    out = tmp_path / "demo"
    args = [
        f"--output_dir={out}",
        "--steps=20",
        "--checkpoint_every=10",
        "--fixation_images=2",
        "--experiment_images=8",
    ]
    proc = run_tool("demo", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for arm in demo.ARMS:
        model_dir = out / "models" / f"{arm}_seed0"
        assert (model_dir / "model.keras").exists()
        scores = json.loads((model_dir / "val.json").read_text())
        assert scores["images"] == 500 and 0 <= scores["mean_iou"] <= 1
        assert (model_dir / "history.csv").read_text().count("\n") == 3
    loaded = tf.saved_model.load(str(out / "saved_model"))
    assert {"serving_default", "fixations"} <= set(loaded.signatures)
    pngs = sorted((out / "fixations").glob("*.png"))
    assert len(pngs) == 2
    for path in [
        *pngs,
        out / "training_curves.png",
        out / "per_class_iou.png",
        out / "experiments" / "fixation_location_seed0.png",
    ]:
        with Image.open(path) as image:
            image.verify()
    for path in (out / "fixations").glob("*_flow.gif"):
        with Image.open(path) as gif:
            assert gif.n_frames > 10
    for path in (out / "fixations").glob("*.json"):
        json.loads(path.read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["arms"]) == set(demo.ARMS)
    assert (
        "mean_iou" in (out / "summary.md").read_text() or "mIoU" in (out / "summary.md").read_text()
    )

    again = run_tool("demo", *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(re.findall("done before, reused", again.stdout)) == 2
    assert "=== " in again.stdout and "evaluate:" not in again.stdout
