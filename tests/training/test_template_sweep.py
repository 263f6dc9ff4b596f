"""The template sweep: paired arms from one baseline per seed, resumable, deterministic."""

import json
import os

import numpy as np
import pytest

from tests.helpers import run_tool
from tf_segunravel.experiments import template_sweep
from tf_segunravel.training import load_network

TINY_BASE = {"steps": 4, "checkpoint_every": 2, "crop_size": 33, "batch_size": 2, "width": 1 / 16}
TINY_FINETUNE = {"steps": 2, "checkpoint_every": 1, "crop_size": 33, "batch_size": 2}


@pytest.mark.slow
def test_paired_arms_start_from_the_baseline_and_resume(tmp_path, shapes_data_dir):
    out = tmp_path / "sweep"
    kwargs = dict(
        seeds=(0, 1),
        weights=(0.5,),
        variants=("cosine", "selective_correlation"),
        data_dir=shapes_data_dir,
        val_images=20,
        base_overrides=TINY_BASE,
        finetune_overrides={**TINY_FINETUNE, "width": 1 / 16},
        log=lambda message: None,
    )
    summary = template_sweep.run(str(out), **kwargs)
    arms = ["cosine_w0.5", "selective_correlation_w0.5"]
    assert [row["arm"] for row in summary["rows"]] == arms
    for seed in (0, 1):
        base = load_network(str(out / f"seed{seed}" / "base"))
        for arm in ["control", *arms]:
            tuned = load_network(str(out / f"seed{seed}" / arm))
            # fc6..fc8 train; everything below is the baseline's, in every arm.
            np.testing.assert_array_equal(
                tuned.get_layer("conv5_3").get_weights()[0],
                base.get_layer("conv5_3").get_weights()[0],
            )
            assert not np.array_equal(
                tuned.get_layer("fc8").get_weights()[0], base.get_layer("fc8").get_weights()[0]
            )
            config = json.loads((out / f"seed{seed}" / arm / "config.json").read_text())
            assert config["init_path"] == str(out / f"seed{seed}" / "base")
            assert config["train_layers"] == 3 and config["deterministic"]
    # The table is the per-seed paired difference, arm minus control.
    for row in summary["rows"]:
        want = [
            100 * json.loads((out / f"seed{s}" / row["arm"] / "val.json").read_text())["mean_iou"]
            - 100 * json.loads((out / f"seed{s}" / "control" / "val.json").read_text())["mean_iou"]
            for s in (0, 1)
        ]
        np.testing.assert_allclose(row["difference"]["values"], want)
        assert row["difference"]["n"] == 2 and row["difference"]["low"] is not None
    assert "| cosine_w0.5 | control |" in (out / "template_sweep.md").read_text()

    # A second run reuses every finished arm; a deleted arm is retrained to the same result.
    stamp = os.path.getmtime(out / "seed0" / "base" / "model.keras")
    arm_dir = out / "seed1" / "cosine_w0.5"
    before = json.loads((arm_dir / "val.json").read_text())
    for path in sorted(arm_dir.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    again = template_sweep.run(str(out), **kwargs)
    assert os.path.getmtime(out / "seed0" / "base" / "model.keras") == stamp
    after = json.loads((arm_dir / "val.json").read_text())
    assert after["mean_iou"] == before["mean_iou"]
    assert again["rows"] == summary["rows"]


@pytest.mark.slow
def test_tool_checks_its_flags(tmp_path):
    proc = run_tool(
        "experiments", "--experiment=template_sweep", f"--output_dir={tmp_path}", "--weights=a"
    )
    assert proc.returncode == 1 and "--weights must be numbers" in proc.stderr
    proc = run_tool(
        "experiments",
        "--experiment=template_sweep",
        f"--output_dir={tmp_path / 'x'}",
        "--variants=cosine,dice",
    )
    assert proc.returncode == 1 and "--variants must name variants from cosine," in proc.stderr
    assert not (tmp_path / "x").exists()
    proc = run_tool("experiments", "--experiment=fixation_location", f"--output_dir={tmp_path}")
    assert proc.returncode == 1 and "--model is required" in proc.stderr
