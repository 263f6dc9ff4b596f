"""The main job in a reduced mode: every artefact exists and is valid; re-runs reuse work."""

import dataclasses
import json
import os
import re
import shutil

import pytest
import tensorflow as tf
from PIL import Image

from tests.helpers import REPO_ROOT, run_tool
from tf_segunravel import demo
from tf_segunravel.errors import InputError


def test_demo_trains_what_the_flagfiles_say(tmp_path):
    baseline = demo.arm_config("baseline", model_dir="m")
    control = demo.arm_config("control", model_dir="m", init_path="b")
    template = demo.arm_config("template", model_dir="m", init_path="b")
    assert (baseline.width, baseline.steps, baseline.lr_policy) == (0.0625, 4000, "poly")
    assert baseline.deterministic and baseline.init == "scratch"
    assert (control.init, control.train_layers, control.template_weight) == ("model", 3, 0.0)
    assert (template.template_weight, template.similarity, template.selective) == (
        0.01,
        "cosine",
        True,
    )
    # The template arm is the control's flagfile plus its own lines, nothing else.
    differing = {
        name
        for name, value in dataclasses.asdict(template).items()
        if dataclasses.asdict(control)[name] != value
    }
    assert differing == {"template_weight", "selective"}
    # The files are the source: an edited copy changes what the demo trains.
    flags_dir = tmp_path / "flags"
    shutil.copytree(os.path.join(REPO_ROOT, "flags"), flags_dir)
    path = flags_dir / "shapes_demo_finetune.cfg"
    path.write_text(path.read_text().replace("--crop_size=129", "--crop_size=65"))
    edited = demo.arm_config("template", flags_dir=str(flags_dir), model_dir="m", init_path="b")
    assert edited.crop_size == 65 and edited.template_weight == 0.01


def test_demo_overrides_are_checked_like_flags():
    with pytest.raises(InputError, match="steps must be a multiple of checkpoint_every"):
        demo.arm_config("baseline", model_dir="m", steps=7)


def test_absent_classes_are_left_out_of_the_per_class_means():
    iou = {"a": 0.5, "b": None}
    results = {
        ("baseline", 0): {"per_class_iou": iou},
        ("baseline", 1): {"per_class_iou": {"a": 0.7, "b": 0.4}},
    }
    assert demo._mean_iou_over_seeds(results, "baseline", "a", [0, 1]) == pytest.approx(60.0)
    # b is neither present nor predicted for seed 0: the mean is seed 1's alone, not (0+40)/2.
    assert demo._mean_iou_over_seeds(results, "baseline", "b", [0, 1]) == pytest.approx(40.0)
    assert demo._mean_iou_over_seeds(results, "baseline", "b", [0]) is None


@pytest.mark.slow
def test_reduced_demo_writes_every_artefact_and_reruns_bit_for_bit(tmp_path, shapes_data_dir):
    # Every run reads the session's prepared dataset (--data_dir): preparing it is the
    # dataset's test, not this one's.
    args = [
        f"--data_dir={shapes_data_dir}",
        "--steps=20",
        "--finetune_steps=10",
        "--checkpoint_every=10",
        "--fixation_images=2",
        "--experiment_images=8",
        "--val_images=16",
    ]
    out = tmp_path / "demo"
    proc = run_tool("demo", f"--output_dir={out}", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for arm in demo.ARMS:
        model_dir = out / "models" / f"{arm}_seed0"
        assert (model_dir / "model.keras").exists()
        scores = json.loads((model_dir / "val.json").read_text())
        assert scores["images"] == 16 and 0 <= scores["mean_iou"] <= 1
        rows = (model_dir / "history.csv").read_text().splitlines()
        assert len(rows) == (3 if arm == "baseline" else 2)
        assert "dead_features" in rows[0] and "template_similarity" in rows[0]
    control = json.loads((out / "models" / "control_seed0" / "config.json").read_text())
    assert control["init_path"] == str(out / "models" / "baseline_seed0")
    loaded = tf.saved_model.load(str(out / "saved_model"))
    assert {"serving_default", "fixations"} <= set(loaded.signatures)
    for folder in ("fixations", "fixations_contrastive"):
        assert len(sorted((out / folder).glob("*.png"))) == 2
        for path in (out / folder).glob("*.json"):
            json.loads(path.read_text())
    for path in [
        *(out / "fixations").glob("*.png"),
        out / "training_curves.png",
        out / "per_class_iou.png",
    ]:
        with Image.open(path) as image:
            image.verify()
    for path in (out / "fixations").glob("*_flow.gif"):
        with Image.open(path) as gif:
            assert gif.n_frames > 10
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["arms"]) == set(demo.ARMS)
    assert set(summary["fixations_inside_truth"]) == {"plain", "contrastive"}
    assert "template minus control" in (out / "summary.md").read_text()
    explained = summary["faithfulness"]
    assert list(explained["methods"]) == list(demo.FAITHFULNESS_METHODS)
    assert explained["pairs"] >= 1 and 0 <= explained["methods"]["fixations"]["energy"] <= 1
    assert "| gradcam |" in (out / "summary.md").read_text()
    # Each stage's wall time, and their sum, beside the summary (not in it).
    seconds = json.loads((out / demo.STAGE_SECONDS_FILE).read_text())
    assert list(seconds) == [*demo.STAGES, "total"]
    assert seconds["train"] > 0 and seconds["total"] >= max(seconds[s] for s in demo.STAGES)
    assert "stage seconds: data " in proc.stdout

    # A fresh directory gives the same summary, bit for bit (the prepared dataset is shared).
    fresh = tmp_path / "fresh"
    proc = run_tool("demo", f"--output_dir={fresh}", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (fresh / "tfds").exists()
    assert (fresh / "summary.json").read_bytes() == (out / "summary.json").read_bytes()

    # A re-run reuses every finished stage; scores over another number of images are redone.
    again = run_tool("demo", f"--output_dir={out}", *args[:-1], "--val_images=20")
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(re.findall("done before, reused", again.stdout)) == 3
    assert len(re.findall(r"\] evaluate: ", again.stdout)) == 3
    for stage in ("export", "fixations", "experiments", "faithfulness"):
        assert f"] {stage}: " not in again.stdout
    assert json.loads((out / "summary.json").read_text())["val_images"] == 20
