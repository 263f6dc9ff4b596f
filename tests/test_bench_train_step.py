"""bench/profile_train_step.py times the train step that training runs (the main job's recipe
through `training.loop.prepare`) and prints every figure docs/benchmarks.md quotes."""

import sys

import pytest

from tests.helpers import run_command


# A bench run in a subprocess (about 13 s): with the slow tests, for the fast suite's budget.
@pytest.mark.slow
def test_the_train_step_profile_prints_every_figure(shapes_data_dir):
    proc = run_command(
        [
            sys.executable,
            "-m",
            "bench.profile_train_step",
            f"--data_dir={shapes_data_dir}",
            "--crop_size=33",
            "--batch_size=2",
            "--steps=2",
            "--repeats=1",
            "--op_times",
        ],
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = dict(line.split(": ") for line in proc.stdout.strip().splitlines())
    assert lines["recipe"] == "shapes_demo.cfg" and lines["crop_size"] == "33"
    assert lines["steps_per_call"] == "2"
    for figure in ("pipeline", "forward", "gradients", "step", "fit", "fit_one_step_a_call"):
        assert float(lines[f"{figure}_ms"]) > 0
    # The step's time is mostly its convolutions (oneDNN's, or Eigen's without oneDNN).
    assert int(lines["ops_per_step"]) > 100
    assert any("conv2d" in name for name in lines)
    assert list(lines)[-3:] == ["fit_over_step", "step_over_gradients", "fit_grouped_over_one_step"]
