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
