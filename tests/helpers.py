"""Helpers several test modules share: running tools as a user would."""

import os
import subprocess
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_command(command, cwd=REPO_ROOT, timeout=600, env=None):
    """Runs `command` (any paths or strings) in `cwd` with quiet TensorFlow logs and a
    timeout, so that a hang fails the test; returns the process."""
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    return subprocess.run(
        [str(part) for part in command],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=full_env,
        check=False,
    )


def run_tool(tool, *args, timeout=600, env=None):
    """Runs `python tools/<tool>.py args...` from the repository root; returns the process."""
    script = os.path.join(REPO_ROOT, "tools", f"{tool}.py")
    return run_command([sys.executable, script, *args], timeout=timeout, env=env)


def last_line(text):
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def save_tiny_largefov(path, num_classes, seed=3):
    """A width-1/16 LargeFOV with a random N(0, 1) score layer (so that several classes are
    predicted), saved as `.keras` at `path`; returns the model."""
    import keras
    import numpy as np

    from tf_segunravel.models import deeplab_largefov

    keras.utils.set_random_seed(seed)
    model = deeplab_largefov(num_classes=num_classes, width=1 / 16)
    rng = np.random.default_rng(0)
    fc8 = model.get_layer("fc8")
    fc8.set_weights([rng.normal(0, 1, w.shape).astype(np.float32) for w in fc8.get_weights()])
    model.save(path)
    return model


def evaluate_and_faithfulness(model_args, image, mask, tmp_path):
    """Runs evaluate and the faithfulness experiment (fixations beside Grad-CAM, one image)
    on `model_args` (--model and its --input_* flags) over a one-image folder dataset of
    `image` (a path) and `mask` (uint8 labels, 255 unlabelled), each tool in a subprocess;
    asserts both succeed and the experiment scores both methods. Returns evaluate's mean
    IoU."""
    import json

    import numpy as np
    from PIL import Image

    dataset = tmp_path / "dataset"
    (dataset / "images").mkdir(parents=True)
    (dataset / "masks").mkdir()
    Image.open(image).save(dataset / "images" / "image.png")
    Image.fromarray(np.asarray(mask, np.uint8)).save(dataset / "masks" / "image.png")
    data = [f"--dataset=folder:{dataset}", "--pad_size=256"]
    scores = tmp_path / "scores.json"
    proc = run_tool("evaluate", *model_args, *data, f"--output_json={scores}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    faithfulness = tmp_path / "faithfulness"
    proc = run_tool(
        "experiments", *model_args, *data, "--experiment=faithfulness",
        f"--output_dir={faithfulness}", "--methods=fixations,gradcam", "--max_images=1",
        "--faithfulness_steps=4", "--min_pixels=16", "--randomisation_images=1",
        "--randomisation_layers=1",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((faithfulness / "faithfulness.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["fixations", "gradcam"]
    return json.loads(scores.read_text())["mean_iou"]
