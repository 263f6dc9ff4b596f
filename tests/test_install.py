"""A non-editable install in a fresh venv runs the tools from outside any checkout."""

import json
import shutil
import sys

import pytest

from tests.helpers import REPO_ROOT, run_command

IGNORED = shutil.ignore_patterns(
    ".git", "runs", "build", "dist", "*.egg-info", "__pycache__", ".ruff_cache", ".pytest_cache"
)


def _run(command, cwd):
    # Without PYTHONPATH, so that only the venv's install can be imported.
    result = run_command(command, cwd, env={"PYTHONPATH": ""})
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_non_editable_install_runs_the_tools_outside_the_checkout(tmp_path, shapes_data_dir):
    source = tmp_path / "source"
    shutil.copytree(REPO_ROOT, source, ignore=IGNORED)
    venv = tmp_path / "venv"
    # The venv sees this machine's TensorFlow (no downloads here); the package itself is
    # built and installed from the copy, not editable.
    _run([sys.executable, "-m", "venv", "--system-site-packages", venv], tmp_path)
    python, bin_dir = venv / "bin" / "python", venv / "bin"
    _run(
        [python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", source],
        tmp_path,
    )
    shutil.rmtree(source)  # nothing may read the tree it was installed from
    work = tmp_path / "elsewhere"
    work.mkdir()

    where = _run([python, "-c", "import tf_segunravel; print(tf_segunravel.__file__)"], work)
    assert where.stdout.strip().startswith(str(venv))

    _run(
        [
            bin_dir / "segunravel-train",
            "--flagfile=flags/shapes_demo.cfg",
            "--steps=2",
            "--warmup_steps=0",  # the flagfile's 250-step warm-up needs more steps
            "--checkpoint_every=1",
            "--model_dir=model",
            f"--data_dir={shapes_data_dir}",
        ],
        work,
    )
    config = json.loads((work / "model" / "config.json").read_text())
    # The shipped flagfile and the ones it includes were read: its own width, the crop of
    # shapes_stable.cfg and the schedule of shapes_baseline.cfg.
    assert (config["steps"], config["width"]) == (2, 0.0625)
    assert (config["crop_size"], config["lr_policy"]) == (129, "poly")
    assert (work / "model" / "model.keras").is_file()

    demo = _run(
        [
            python,
            "-m",
            "tf_segunravel.tools.demo",
            "--output_dir=demo",
            f"--data_dir={shapes_data_dir}",
            "--stop_after=data",
        ],
        work,
    )
    assert "data" in demo.stdout
    assert not (work / "demo" / "models").exists()

    bad = run_command(
        [bin_dir / "segunravel-train", "--flagfile=flags/none.cfg", "--model_dir=m"], work
    )
    assert bad.returncode == 1
    assert (
        bad.stderr.strip() == "segunravel-train: error: --flagfile=flags/none.cfg: no such flagfile"
    )
