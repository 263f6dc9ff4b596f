"""End-to-end training: learning, kill and resume, divergence, distribution, flags."""

import csv
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import REPO_ROOT, last_line, run_tool
from tf_segunravel.training import TrainConfig, load_network, loop, train
from tf_segunravel.training.loop import steps_per_execution

TINY = [
    "--width=0.0625",
    "--dropout=0.5",
    "--crop_size=41",
    "--batch_size=2",
    "--base_lr=0.001",
    "--lr_policy=poly",
    "--shuffle_buffer=20",
    "--template_weight=0.1",
    "--deterministic",
]


def final_weights(model_dir):
    return [w.copy() for w in load_network(model_dir).get_weights()]


@pytest.mark.slow
def test_training_on_shapes_learns(tmp_path, shapes_data_dir):
    model_dir = tmp_path / "run"
    proc = run_tool(
        "train",
        "--flagfile=flags/shapes_baseline.cfg",
        f"--model_dir={model_dir}",
        f"--data_dir={shapes_data_dir}",
        "--steps=300",
        "--checkpoint_every=150",
        "--verbose=2",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = [
        float(line.split("loss: ")[1].split(" ")[0])
        for line in proc.stdout.splitlines()
        if " - loss: " in line
    ]
    assert len(losses) == 2 and losses[1] < 0.5 * losses[0]
    for name in ("config.json", "flags.txt", "model.keras"):
        assert (model_dir / name).exists()
    assert list((model_dir / "logs").rglob("events.out.tfevents.*"))

    out_json = tmp_path / "val.json"
    proc = run_tool(
        "evaluate",
        f"--model={model_dir}",
        f"--data_dir={shapes_data_dir}",
        "--pad_size=129",
        f"--output_json={out_json}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out_json.read_text())
    assert "mean IoU" in proc.stdout and results["images"] == 500
    # Background alone scores 1/6 mean IoU; 300 steps must find objects too (0.28 measured).
    assert results["mean_iou"] > 0.25, results["per_class_iou"]


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(tmp_path, shapes_data_dir):
    common = [
        *TINY,
        f"--data_dir={shapes_data_dir}",
        "--steps=24",
        "--checkpoint_every=6",
        "--verbose=0",
    ]
    straight = tmp_path / "straight"
    proc = run_tool("train", f"--model_dir={straight}", *common)
    assert proc.returncode == 0, proc.stderr[-3000:]

    killed = tmp_path / "killed"
    args = [
        sys.executable,
        os.path.join(REPO_ROOT, "tools", "train.py"),
        f"--model_dir={killed}",
        *common,
    ]
    child = subprocess.Popen(
        args, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "ckpt-12.index").exists():
        assert time.time() < deadline and child.poll() is None
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert not (killed / "model.keras").exists()
    assert tf.train.latest_checkpoint(str(killed / "checkpoints")) is not None

    proc = run_tool("train", f"--model_dir={killed}", *common)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step: 24" in proc.stdout
    for a, b in zip(final_weights(straight), final_weights(killed), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_divergence_stops_and_keeps_the_last_good_checkpoint(tmp_path, shapes_data_dir):
    model_dir = tmp_path / "run"
    common = [*TINY, f"--data_dir={shapes_data_dir}", f"--model_dir={model_dir}", "--verbose=0"]
    assert run_tool("train", *common, "--steps=4", "--checkpoint_every=2").returncode == 0
    proc = run_tool(
        "train",
        *common,
        "--steps=40",
        "--checkpoint_every=2",
        "--base_lr=1e30",
        "--allow_config_change",
    )
    assert proc.returncode == 1
    message = last_line(proc.stderr)
    assert message.startswith("train: error: ") and "NaN/Inf" in message
    diverged_at = int(message.split("by step ")[1].split(";")[0])
    latest = tf.train.latest_checkpoint(str(model_dir / "checkpoints"))
    saved_at = int(latest.rsplit("-", 1)[1])
    assert 4 <= saved_at < diverged_at
    # Nothing from the diverged interval was saved; the last good checkpoint still loads.
    weights = load_network(latest).get_weights()
    assert all(np.isfinite(w).all() for w in weights)
    # Nor logged: one history row per saved interval, all finite, none past the checkpoint.
    with open(model_dir / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == saved_at // 2
    assert all(math.isfinite(float(row["loss"])) for row in rows)
    image_steps, scalars = set(), []
    for event_file in (model_dir / "logs").rglob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(event_file)):
            for value in event.summary.value:
                array = tf.make_ndarray(value.tensor)
                if array.ndim == 0:
                    scalars.append(float(array))
                else:
                    image_steps.add(event.step)
    assert scalars and all(math.isfinite(v) for v in scalars)
    assert image_steps and max(image_steps) <= saved_at


@pytest.mark.slow
def test_resuming_with_other_settings_needs_allow_config_change(tmp_path, shapes_data_dir):
    common = [*TINY, f"--data_dir={shapes_data_dir}", f"--model_dir={tmp_path}", "--verbose=0"]
    assert run_tool("train", *common, "--steps=2", "--checkpoint_every=2").returncode == 0
    config = (tmp_path / "config.json").read_text()
    proc = run_tool("train", *common, "--steps=4", "--checkpoint_every=2")
    assert proc.returncode == 1
    assert last_line(proc.stderr).startswith("train: error: ")
    assert "--steps=2 (now 4)" in proc.stderr and "Traceback" not in proc.stderr
    assert (tmp_path / "config.json").read_text() == config
    proc = run_tool("train", *common, "--steps=4", "--checkpoint_every=2", "--allow_config_change")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step: 4" in proc.stdout
    changes = [json.loads(line) for line in open(tmp_path / "config_changes.jsonl")]
    assert [c["changes"] for c in changes] == [{"steps": {"before": 2, "now": 4}}]
    assert json.loads((tmp_path / "config.json").read_text())["steps"] == 4


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--width=0", "--width must be > 0"),
        ("--steps=10", "--steps must be a multiple of --checkpoint_every"),
        ("--init=caffe", "--init_path is required"),
        ("--similarity=dot", "similarity"),
        ("--template_weight=-1", "--template_weight must be >= 0"),
    ],
)
def test_bad_flags_are_usage_errors(tmp_path, flag, message):
    proc = run_tool("train", f"--model_dir={tmp_path}", "--checkpoint_every=4", flag)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert not (tmp_path / "config.json").exists()


MIRRORED_SCRIPT = textwrap.dedent(
    """
    import os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from tf_segunravel.models import deeplab_largefov
    from tf_segunravel.training import SegmentationTrainer

    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (4, 33, 33, 3)).astype(np.float32)
    labels = rng.integers(0, 3, (4, 33, 33)).astype(np.int32)
    labels[1] = 255  # replica 0 gets fewer valid pixels than replica 1
    labels[2, :10] = 255
    keras.utils.set_random_seed(1)
    initial = deeplab_largefov(num_classes=3, width=1 / 16, dropout=0.0).get_weights()

    def one_step(strategy):
        with strategy.scope():
            net = deeplab_largefov(num_classes=3, width=1 / 16, dropout=0.0)
            net.set_weights(initial)
            trainer = SegmentationTrainer(net, 3, template_weight=float(sys.argv[1]),
                                          similarity="correlation")
            trainer.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9))
        data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(4)
        logs = trainer.fit(data, epochs=1, verbose=0).history
        return net.get_weights(), logs

    single, single_logs = one_step(tf.distribute.get_strategy())
    mirrored, mirrored_logs = one_step(
        tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
    diff = max(float(np.abs(a - b).max()) for a, b in zip(single, mirrored))
    moved = max(float(np.abs(a - b).max()) for a, b in zip(single, initial))
    print("max_diff", diff, "moved", moved,
          "loss", single_logs["loss"][0], mirrored_logs["loss"][0])
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("template_weight", [0.0, 1.0])
def test_mirrored_strategy_gives_the_single_device_update(tmp_path, template_weight):
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED_SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), str(template_weight)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    fields = last_line(proc.stdout).split()
    diff, moved = float(fields[1]), float(fields[3])
    assert moved > 1e-4  # the step did change the weights
    assert diff < 1e-5 * max(moved, 1.0), proc.stdout
    np.testing.assert_allclose(float(fields[5]), float(fields[6]), rtol=1e-5)


@pytest.mark.slow
def test_mixed_precision_and_xla_train(tmp_path, shapes_data_dir):
    proc = run_tool(
        "train",
        f"--model_dir={tmp_path}",
        *TINY,
        f"--data_dir={shapes_data_dir}",
        "--steps=4",
        "--checkpoint_every=2",
        "--verbose=0",
        "--mixed_precision",
        "--xla",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step: 4" in proc.stdout
    network = load_network(tmp_path)
    assert network.get_layer("fc7").compute_dtype == "float16"
    assert network.output.dtype == "float32"
    assert all(np.isfinite(w).all() for w in network.get_weights())


@pytest.mark.slow
def test_initialisation_from_another_model_and_converted_weights(tmp_path, shapes_data_dir):
    from tf_segunravel.models import deeplab_largefov
    from tf_segunravel.training import TrainConfig, train

    keras_seeded = deeplab_largefov(num_classes=6, width=0.0625, dropout=0.5)
    source = tmp_path / "source.keras"
    keras_seeded.save(source)
    weights = tmp_path / "source.weights.h5"
    keras_seeded.save_weights(weights)
    for init, path in (("model", source), ("caffe", weights)):
        config = TrainConfig(
            model_dir=str(tmp_path / init),
            data_dir=shapes_data_dir,
            num_classes=6,
            width=0.0625,
            crop_size=33,
            batch_size=2,
            steps=1,
            checkpoint_every=1,
            base_lr=1e-12,
            weight_decay=0.0,
            init=init,
            init_path=str(path),
            verbose=0,
        )
        train(config)
        trained = load_network(tmp_path / init)
        for a, b in zip(trained.get_weights(), keras_seeded.get_weights(), strict=True):
            np.testing.assert_allclose(a, b, atol=1e-6)


def test_collapse_diagnostics_are_logged():
    """`dead_features` counts all-zero fc7 vectors; `template_similarity` is 1 when every
    class's template points the same way. A network whose fc7 is dead shows both."""
    import keras

    from tf_segunravel.models import deeplab_largefov
    from tf_segunravel.training import SegmentationTrainer

    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (2, 33, 33, 3)).astype(np.float32)
    labels = rng.integers(0, 3, (2, 33, 33)).astype(np.int32)
    network = deeplab_largefov(num_classes=3, width=1 / 16, dropout=0.0)
    trainer = SegmentationTrainer(network, 3)
    trainer.compile(optimizer=keras.optimizers.SGD(0.0))
    logs = trainer.test_step((images, labels))
    assert 0.0 <= float(logs["dead_features"]) < 1.0
    assert -1.0 <= float(logs["template_similarity"]) <= 1.0
    fc7 = network.get_layer("fc7")
    fc7.set_weights([np.zeros_like(w) for w in fc7.get_weights()])
    trainer.reset_metrics()
    logs = trainer.test_step((images, labels))
    assert float(logs["dead_features"]) == 1.0
    assert float(logs["template_similarity"]) == 0.0  # zero vectors: similarity 0
    bias = fc7.get_weights()[1]
    fc7.set_weights([np.zeros_like(fc7.get_weights()[0]), np.ones_like(bias)])
    trainer.reset_metrics()
    logs = trainer.test_step((images, labels))
    assert float(logs["dead_features"]) == 0.0
    np.testing.assert_allclose(float(logs["template_similarity"]), 1.0, rtol=1e-5)


def _folder_with_corrupt_image(root):
    from PIL import Image

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for stem in ("a", "b", "c"):
        Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(root / "images" / f"{stem}.png")
        Image.fromarray(np.ones((40, 40), np.uint8), mode="L").save(root / "masks" / f"{stem}.png")
    (root / "images" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return root


@pytest.mark.parametrize(
    "case, flags, message",
    [
        ("unknown dataset", ["--dataset=shapez"], "--dataset=shapez: not a registered TFDS"),
        ("missing init file", ["--init=caffe", "--init_path=nope.caffemodel"], "nope.caffemodel"),
        ("garbage caffemodel", ["--init=caffe", "--init_path={garbage}"], "garbage.caffemodel"),
        ("missing init model", ["--init=model", "--init_path={tmp}/none"], "none"),
        ("corrupt folder image", ["--dataset=folder:{folder}"], "b.png: not a readable image"),
        (
            "segformer crop",
            ["--architecture=segformer_b0"],
            "--crop_size=33: segformer_b0 needs a multiple of 32",
        ),
    ],
)
@pytest.mark.slow
def test_failed_starts_leave_no_model_dir(tmp_path, case, flags, message):
    """Each fails before the first step with one line naming the culprit, within a bounded
    time (the corrupt image once hung a tf.data iterator), and leaves nothing behind."""
    garbage = tmp_path / "garbage.caffemodel"
    garbage.write_bytes(b"\x00\x01 not a protobuf" * 10)
    folder = _folder_with_corrupt_image(tmp_path / "folder")
    values = {"garbage": garbage, "tmp": tmp_path, "folder": folder}
    model_dir = tmp_path / "run"
    proc = run_tool(
        "train",
        f"--model_dir={model_dir}",
        "--num_classes=3",
        "--crop_size=33",
        "--batch_size=2",
        "--width=0.0625",
        "--steps=2",
        "--checkpoint_every=1",
        *(flag.format(**values) for flag in flags),
        timeout=180,
    )
    assert proc.returncode == 1, (case, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert message in last_line(proc.stderr), (case, last_line(proc.stderr))
    assert last_line(proc.stderr).startswith("train: error: ")
    assert not model_dir.exists(), case


@pytest.mark.slow
def test_failed_start_never_touches_an_existing_run(tmp_path, shapes_data_dir):
    model_dir = tmp_path / "run"
    common = [
        f"--model_dir={model_dir}",
        f"--data_dir={shapes_data_dir}",
        "--crop_size=33",
        "--batch_size=2",
        "--width=0.0625",
        "--steps=2",
        "--checkpoint_every=1",
        "--verbose=0",
    ]
    assert run_tool("train", *common).returncode == 0
    before = {p: p.stat().st_mtime_ns for p in model_dir.rglob("*")}
    proc = run_tool("train", *common, "--steps=4", "--allow_config_change", "--split=nosuch")
    assert proc.returncode == 1 and "nosuch" in last_line(proc.stderr), proc.stderr[-2000:]
    assert {p: p.stat().st_mtime_ns for p in model_dir.rglob("*")} == before
    proc = run_tool(
        "evaluate", f"--model={model_dir}", f"--data_dir={shapes_data_dir}", "--split=nosuch"
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert last_line(proc.stderr) == (
        "evaluate: error: --split=nosuch: Unknown split 'nosuch'. Should be one of "
        "['train', 'val']. (segunravel_shapes)"
    )


@pytest.mark.parametrize(("interval", "expected"), [(250, 25), (100, 25), (2, 2), (7, 7), (60, 20)])
def test_a_group_of_steps_never_straddles_a_checkpoint(interval, expected):
    assert steps_per_execution(interval) == expected


def test_grouped_steps_train_the_same_weights_as_single_steps(
    tmp_path, shapes_data_dir, monkeypatch
):
    """Keras runs `steps_per_execution` steps a call; the weights and the logged history
    must be those of one step a call, bit for bit."""

    def trained(name):
        config = TrainConfig(
            model_dir=str(tmp_path / name),
            data_dir=shapes_data_dir,
            width=0.0625,
            crop_size=33,
            batch_size=2,
            steps=12,
            checkpoint_every=6,
            template_weight=0.1,
            deterministic=True,
            verbose=0,
        )
        train(config)
        with open(tmp_path / name / "history.csv") as f:
            return final_weights(config.model_dir), list(csv.DictReader(f))

    grouped_weights, grouped_history = trained("grouped")
    monkeypatch.setattr(loop, "steps_per_execution", lambda interval: 1)
    single_weights, single_history = trained("single")
    for grouped, single in zip(grouped_weights, single_weights, strict=True):
        np.testing.assert_array_equal(grouped, single)
    # The logged `loss` (cross-entropy + weight x template loss) can differ in its last bit
    # between two runs of the same command, one step a call or not (3 runs in 8 at
    # 1a6013d); its parts and the weights never did.
    assert len(grouped_history) == len(single_history) == 2
    for grouped_row, single_row in zip(grouped_history, single_history, strict=True):
        loss = float(grouped_row.pop("loss")), float(single_row.pop("loss"))
        assert loss[0] == pytest.approx(loss[1], rel=1e-6)
        assert grouped_row == single_row
