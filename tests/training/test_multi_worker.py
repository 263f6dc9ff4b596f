"""`--strategy=multi_worker`: a real two-process cluster on loopback ports.

Each worker is `tools/train.py` in its own process with its own TF_CONFIG, as a user would
start it; every process runs under a timeout, so a hang fails the test instead of stalling
the suite.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.helpers import REPO_ROOT, run_tool

FLAGS = [
    "--num_classes=6",
    "--crop_size=33",
    "--batch_size=4",  # global: two per worker
    "--width=0.0625",
    # --dropout: the default 0.5, masks keyed per example (models/layers.py KeyedDropout)
    "--deterministic",
    "--verbose=0",
]

# oneDNN's kernels are chosen per batch shape: on an AVX-512 CPU a worker's batch of 2
# rounds otherwise than one process's batch of 4, and with dropout on 8 steps grow that to
# 7.5e-5 in the weights (3.6e-7 after 2 steps). With its rewrites off both run the same
# kernels and agree to 6e-8 (with --dropout=0, 1.5e-8 either way). Measured 2026-12-02.
ROUNDING = {"TF_ENABLE_ONEDNN_OPTS": "0"}


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start_cluster(model_dir, data_dir, scratch, *flags):
    """Starts two workers (worker 0 is the chief); returns their processes."""
    cluster = {"worker": [f"localhost:{port}" for port in free_ports(2)]}
    processes = []
    for index in range(2):
        task = {"type": "worker", "index": index}
        env = {
            **os.environ,
            **ROUNDING,
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "TMPDIR": str(scratch),  # where a non-chief worker keeps its checkpoints
            "TF_CONFIG": json.dumps({"cluster": cluster, "task": task}),
        }
        command = [
            sys.executable,
            os.path.join(REPO_ROOT, "tools", "train.py"),
            f"--model_dir={model_dir}",
            f"--data_dir={data_dir}",
            "--strategy=multi_worker",
            *FLAGS,
            *flags,
        ]
        processes.append(
            subprocess.Popen(
                command,
                cwd=REPO_ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    return processes


def finish(processes, timeout=300):
    """Waits for every process (killing all on timeout); returns [(code, output)]."""
    results = []
    deadline = time.monotonic() + timeout
    for process in processes:
        try:
            output, _ = process.communicate(timeout=max(1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for other in processes:
                other.kill()
            pytest.fail("a worker did not finish in time")
        results.append((process.returncode, output))
    return results


def weights(path):
    import keras

    import tf_segunravel.models  # noqa: F401  (registers the custom layers)

    return keras.saving.load_model(path, compile=False).get_weights()


def max_difference(a, b):
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def single_process(tmp_path_factory, shapes_data_dir):
    """The uninterrupted one-process run both tests compare with (8 steps)."""
    model_dir = tmp_path_factory.mktemp("single") / "run"
    proc = run_tool(
        "train",
        f"--model_dir={model_dir}",
        f"--data_dir={shapes_data_dir}",
        "--steps=8",
        "--checkpoint_every=2",
        *FLAGS,
        env=ROUNDING,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return model_dir


@pytest.mark.slow
def test_two_workers_train_what_one_process_trains(tmp_path, shapes_data_dir, single_process):
    model_dir, scratch = tmp_path / "run", tmp_path / "scratch"
    scratch.mkdir()
    results = finish(
        start_cluster(model_dir, shapes_data_dir, scratch, "--steps=8", "--checkpoint_every=2")
    )
    for code, output in results:
        assert code == 0, output[-3000:]
    difference = max_difference(
        weights(model_dir / "model.keras"), weights(single_process / "model.keras")
    )
    assert difference <= 1e-5, difference
    # Only the chief wrote: one run's files, no second writer's; the other worker's
    # checkpoints went to its scratch dir, which it deleted.
    assert sorted(p.name for p in model_dir.iterdir()) == sorted(
        ["checkpoints", "config.json", "flags.txt", "history.csv", "logs", "model.keras"]
    )
    rows = (model_dir / "history.csv").read_text().splitlines()
    assert len(rows) == 1 + 4, rows  # one writer: one row per interval
    assert not list(scratch.iterdir())


@pytest.mark.slow
def test_a_killed_worker_and_a_restarted_cluster_resume(tmp_path, shapes_data_dir, single_process):
    model_dir, scratch = tmp_path / "run", tmp_path / "scratch"
    scratch.mkdir()
    flags = ("--steps=8", "--checkpoint_every=2")
    processes = start_cluster(model_dir, shapes_data_dir, scratch, *flags)
    checkpoint_index = model_dir / "checkpoints" / "ckpt-2.index"
    deadline = time.monotonic() + 240
    while not checkpoint_index.exists():
        if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
            for p in processes:
                p.kill()
            pytest.fail("the cluster wrote no checkpoint")
        time.sleep(0.05)
    processes[1].send_signal(signal.SIGKILL)  # the non-chief worker dies mid-run
    processes[1].wait(timeout=30)
    # Its partner may wait on the lost worker; a scheduler restarts the whole cluster.
    processes[0].kill()
    processes[0].wait(timeout=30)
    for p in processes:
        p.communicate()
    saved = json.loads((model_dir / "config.json").read_text())["steps"]
    assert saved == 8

    results = finish(start_cluster(model_dir, shapes_data_dir, scratch, *flags))
    for code, output in results:
        assert code == 0, output[-3000:]
    assert "step: 8" in results[0][1]
    difference = max_difference(
        weights(model_dir / "model.keras"), weights(single_process / "model.keras")
    )
    assert difference <= 1e-5, difference
