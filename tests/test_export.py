"""SavedModel export: self-contained signatures equal to the Keras model and the engine."""

import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tests.helpers import last_line, run_tool
from tf_segunravel.evaluation import full_resolution_scores
from tf_segunravel.export import export_saved_model
from tf_segunravel.models import deeplab_largefov
from tf_segunravel.unravel import FixationSettings, SegUnravel, fixation_maps

# Runs where the package cannot be imported: the SavedModel must stand alone.
STANDALONE = textwrap.dedent(
    """
    import sys
    sys.modules["tf_segunravel"] = None  # any import of the package now fails
    import numpy as np, tensorflow as tf
    export_dir, images_path, out_path = sys.argv[1:4]
    loaded = tf.saved_model.load(export_dir)
    images = tf.constant(np.load(images_path))
    segment = loaded.signatures["serving_default"](images=images)
    fixations = loaded.signatures["fixations"](images=images)
    encoded = tf.stack([tf.io.encode_png(image) for image in images])
    decoded = loaded.signatures["serving_bytes"](encoded=encoded)
    meta = loaded.signatures["metadata"]()
    np.savez(out_path, **{f"segment_{k}": v.numpy() for k, v in segment.items()},
             **{f"fixations_{k}": v.numpy() for k, v in fixations.items()},
             **{f"bytes_{k}": v.numpy() for k, v in decoded.items()},
             meta_k=meta["k"].numpy(), meta_shift=meta["shift"].numpy())
    """
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    keras.utils.set_random_seed(4)
    model = deeplab_largefov(num_classes=3, width=1 / 16)
    fc8 = model.get_layer("fc8")
    rng = np.random.default_rng(0)
    fc8.set_weights([rng.normal(0, 1, w.shape).astype(np.float32) for w in fc8.get_weights()])
    export_dir = root / "saved_model"
    settings = FixationSettings(k=2, shift="full", sigma=3.0, outlier_radius=0.05)
    export_saved_model(model, str(export_dir), settings)
    return model, export_dir, root


@pytest.mark.slow
def test_standalone_signatures_match_keras_and_engine(exported):
    model, export_dir, root = exported
    images = np.random.default_rng(1).integers(0, 256, (2, 41, 52, 3)).astype(np.uint8)
    np.save(root / "images.npy", images)
    script = root / "standalone.py"
    script.write_text(STANDALONE)
    proc = subprocess.run(
        [
            sys.executable,
            str(script),
            str(export_dir),
            str(root / "images.npy"),
            str(root / "out.npz"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = np.load(root / "out.npz")

    floats = images.astype(np.float32)
    full = full_resolution_scores(model, tf.constant(floats)).numpy()
    probabilities = tf.nn.softmax(full).numpy()
    np.testing.assert_allclose(out["segment_probabilities"], probabilities, atol=1e-5)
    agree = out["segment_labels"] == full.argmax(-1)
    assert agree.mean() > 0.999  # float ties aside
    np.testing.assert_allclose(out["segment_scores"], model(floats).numpy(), atol=1e-4)
    np.testing.assert_array_equal(out["bytes_labels"], out["segment_labels"])

    settings = FixationSettings(k=2, shift="full", sigma=3.0, outlier_radius=0.05)
    engine = SegUnravel(model, settings)(floats)
    np.testing.assert_array_equal(out["fixations_points"], engine.points)
    np.testing.assert_array_equal(out["fixations_counts"], engine.counts)
    np.testing.assert_array_equal(out["fixations_seeds"], engine.seeds)
    maps = fixation_maps(engine, 41, 52, settings).numpy()
    np.testing.assert_allclose(out["fixations_maps"], maps, atol=1e-5)
    assert out["meta_k"] == b"2" and out["meta_shift"] == b"full"
    settings = json.loads((export_dir / "assets.extra" / "tf_segunravel.json").read_text())
    assert settings["sigma"] == 3.0 and settings["num_classes"] == 3


@pytest.mark.parametrize(
    "images",
    [
        np.zeros((1, 8, 8, 3), np.float32),  # wrong dtype
        np.zeros((8, 8, 3), np.uint8),  # wrong rank
        np.zeros((1, 8, 8, 4), np.uint8),  # wrong channel count
    ],
    ids=["dtype", "rank", "channels"],
)
@pytest.mark.slow
def test_bad_inputs_fail_at_the_signature(exported, images):
    _, export_dir, _ = exported
    signature = tf.saved_model.load(str(export_dir)).signatures["serving_default"]
    with pytest.raises((TypeError, ValueError, tf.errors.InvalidArgumentError)) as info:
        signature(images=tf.constant(images))
    message = str(info.value)
    if images.dtype == np.uint8:
        assert "is not compatible with expected shape [?,?,?,3]" in message
    else:
        assert "uint8" in message or "float32" in message


@pytest.mark.slow
def test_the_fixations_signature_refuses_a_blur_wider_than_the_image(exported):
    """The export fixes sigma = 3 px: a 2 x 2 image is narrower than that blur (the tools
    refuse it before the graph runs; the signature asserts it when it runs)."""
    _, export_dir, _ = exported
    signature = tf.saved_model.load(str(export_dir)).signatures["fixations"]
    signature(images=tf.zeros((1, 3, 3, 3), tf.uint8))  # as wide as the blur: drawn
    with pytest.raises(tf.errors.InvalidArgumentError, match="heat-map blur is wider"):
        signature(images=tf.zeros((1, 2, 2, 3), tf.uint8))


@pytest.mark.slow
def test_saved_model_cli_shows_the_signatures(exported):
    _, export_dir, _ = exported
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tensorflow.python.tools.saved_model_cli",
            "show",
            "--dir",
            str(export_dir),
            "--all",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("serving_default", "fixations", "serving_bytes", "metadata"):
        assert f"signature_def['{name}']" in proc.stdout
    assert "DT_UINT8" in proc.stdout and "(-1, -1, -1, 3)" in proc.stdout


@pytest.mark.slow
def test_tool_refuses_to_overwrite_and_exports_contrastive_fixations(tmp_path, exported):
    model, _, _ = exported
    model_path = tmp_path / "m.keras"
    model.save(model_path)
    out = tmp_path / "sm"
    proc = run_tool("export", f"--model={model_path}", f"--export_dir={out}", "--sigma=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_tool("export", f"--model={model_path}", f"--export_dir={out}")
    assert proc.returncode == 1
    assert "already exists; pass --overwrite" in last_line(proc.stderr)
    # The overwrite (written atomically: nothing else appears beside it) fixes the contrast.
    proc = run_tool(
        "export",
        f"--model={model_path}",
        f"--export_dir={out}",
        "--overwrite",
        "--contrast=runner_up",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.keras", "sm"]
    settings = json.loads((out / "assets.extra" / "tf_segunravel.json").read_text())
    assert settings["contrast"] == "runner_up" and settings["sigma"] != 2
    images = np.random.default_rng(5).integers(0, 256, (2, 41, 52, 3)).astype(np.uint8)
    loaded = tf.saved_model.load(str(out))
    fixations = loaded.signatures["fixations"](images=tf.constant(images))
    assert loaded.signatures["metadata"]()["contrast"].numpy() == b"runner_up"
    engine = SegUnravel(model, contrast="runner_up")(images.astype(np.float32))
    plain = SegUnravel(model)(images.astype(np.float32))
    np.testing.assert_array_equal(fixations["points"].numpy(), engine.points)
    np.testing.assert_array_equal(fixations["counts"].numpy(), engine.counts)
    assert not np.array_equal(engine.points, plain.points) or not np.array_equal(
        engine.counts, plain.counts
    )


@pytest.mark.slow
def test_fixations_tool_accepts_the_saved_model(tmp_path, exported):
    model, export_dir, _ = exported
    image = np.random.default_rng(2).integers(0, 256, (33, 40, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "a.png")
    proc = run_tool(
        "fixations",
        f"--model={export_dir}",
        f"--images={tmp_path / 'a.png'}",
        f"--output_dir={tmp_path / 'out'}",
        "--sigma=3",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = np.load(tmp_path / "out" / "a.npz")
    engine = SegUnravel(model, k=2, shift="full")(image[None].astype(np.float32))
    np.testing.assert_array_equal(data["points"], engine.for_image(0)[0])


@pytest.mark.slow
def test_fixation_tool_refuses_a_flag_the_signature_would_ignore(tmp_path, exported):
    _, export_dir, _ = exported
    image = np.random.default_rng(5).integers(0, 256, (41, 52, 3)).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "a.png")
    proc = run_tool(
        "fixations",
        f"--model={export_dir}",
        f"--images={tmp_path / 'a.png'}",
        f"--output_dir={tmp_path / 'out'}",
        "--contrast=runner_up",
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "was exported with --contrast=None" in last_line(proc.stderr)
    assert not (tmp_path / "out").exists()
