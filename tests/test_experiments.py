"""The dissertation's analyses on a tiny model and the shapes dataset."""

import dataclasses
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tests.helpers import last_line, run_tool
from tf_segunravel import experiments
from tf_segunravel.data import load_split
from tf_segunravel.data.shapes import CLASS_KINDS, CLASS_NAMES
from tf_segunravel.experiment_registry import ALL_EXPERIMENTS, ExperimentSettings
from tf_segunravel.models import deeplab_largefov
from tf_segunravel.unravel.rules import channels_to_reach
from tf_segunravel.unravel.settings import FixationSettings


@pytest.fixture(scope="module")
def tiny(shapes_data_dir):
    keras.utils.set_random_seed(7)
    model = deeplab_largefov(num_classes=6, width=1 / 16)
    fc8 = model.get_layer("fc8")
    rng = np.random.default_rng(0)
    fc8.set_weights([rng.normal(0, 1, w.shape).astype(np.float32) for w in fc8.get_weights()])
    return model, load_split("segunravel_shapes", "val", shapes_data_dir)


def test_channels_to_reach():
    scores = np.array([[5.0, 3.0, 2.0, -1.0], [0.0, 0.0, 0.0, 0.0], [-1.0, -2.0, -3.0, -4.0]])
    for fraction, needed in ((0.5, [1, 1, 4]), (0.8, [2, 1, 4]), (1.0, [3, 1, 4])):
        count, top = channels_to_reach(tf.constant(scores, tf.float32), fraction)
        np.testing.assert_array_equal(count.numpy(), needed)
        np.testing.assert_array_equal(top.numpy()[0], [0, 1, 2, 3])
    count, top = channels_to_reach(tf.constant(scores, tf.float32), 1.0, cap=2)
    np.testing.assert_array_equal(count.numpy(), [2, 1, 2])
    assert top.shape == (3, 2)


def test_fixation_location_is_exact_on_a_hand_made_case():
    """A 1x1-conv model: every fixation stays under its seed, so shares are known."""
    inp = keras.Input((None, None, 3))
    scores = keras.layers.Conv2D(2, 1, use_bias=False)(inp)
    model = keras.Model(inp, scores)
    model.layers[1].set_weights([np.array([[[[1.0, -1.0], [0, 0], [0, 0]]]], np.float32)])
    image = np.zeros((1, 6, 6, 3), np.uint8)
    image[0, :, :3, 0] = 200  # red left half -> class 0; right half (0) -> tie -> class 0
    truth = np.zeros((1, 6, 6, 1), np.uint8)
    truth[0, :2] = 1  # truth says the top two rows are class 1
    import tensorflow as tf

    val = tf.data.Dataset.from_tensor_slices({"image": image, "segmentation": truth})
    rows = experiments.fixation_location(model, val, 2, max_images=1, pad_size=8)
    assert rows[0]["images"] == 1
    assert rows[0]["inside_truth"] == pytest.approx(24 / 36)
    # Every pixel is predicted class 0 (the right half ties, lowest index): all inside, and
    # the segment is the whole image, so no margin over chance.
    assert rows[0]["inside_predicted"] == 1.0 and rows[0]["predicted_area"] == 1.0
    assert experiments.location.above_chance(rows) == 0.0


@pytest.mark.slow
def test_tool_writes_tables_and_figures(tmp_path, tiny, shapes_data_dir):
    model, _ = tiny
    model_path = tmp_path / "tiny.keras"
    model.save(model_path)
    out = tmp_path / "out"
    proc = run_tool(
        "experiments",
        "--experiment=all",
        f"--model={model_path}",
        f"--data_dir={shapes_data_dir}",
        f"--output_dir={out}",
        "--max_images=3",
        "--pad_size=129",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {}
    for name in ALL_EXPERIMENTS:
        payload = json.loads((out / f"{name}.json").read_text())
        assert payload["experiment"] == name and payload["rows"]
        assert (out / f"{name}.csv").read_text().count("\n") == len(payload["rows"]) + 1
        with Image.open(out / f"{name}.png") as figure:
            figure.verify()
        rows[name] = payload["rows"]
    # Each analysis's rows, as the tool wrote them.
    location = rows["fixation_location"]
    assert [r["name"] for r in location] == list(CLASS_NAMES)
    unravelled = [r for r in location if r["images"]]
    assert unravelled
    for row in unravelled:
        assert 0.0 <= row["inside_truth"] <= 1.0 and 0.0 <= row["inside_truth_weighted"] <= 1.0
    assert set(experiments.by_kind(location)) <= {"background", "intrinsic", "contextual"}
    assert [r["shift"] for r in rows["shift_variants"]] == ["none"] * 6 + ["partial"] * 6 + [
        "full"
    ] * 6
    layers = [r["layer"] for r in rows["k_analysis"]]
    assert layers[0] == "fc8" and layers[-1] == "conv1_1"
    for row in rows["k_analysis"]:
        assert 1 <= row["k_10"] <= row["k_25"] <= row["k_50"] <= row["input_channels"]
    measured = [r for r in rows["salient_parts"] if r["images"]]
    assert measured
    for row in measured:
        assert -1.0 <= row["drop_inside"] <= 1.0


@pytest.mark.slow
def test_location_over_seeds_tool_reports_intervals_and_resumes(tmp_path, shapes_data_dir):
    from tests.helpers import save_tiny_largefov

    paths = []
    for seed in (3, 4):
        path = tmp_path / f"model{seed}.keras"
        save_tiny_largefov(path, num_classes=6, seed=seed)
        paths.append(path)
    out = tmp_path / "location"
    args = [
        "--experiment=location_over_seeds",
        f"--models={paths[0]},{paths[1]}",
        f"--data_dir={shapes_data_dir}",
        f"--output_dir={out}",
        "--max_images=4",
        "--pad_size=129",
    ]
    proc = run_tool("experiments", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "location_over_seeds.json").read_text())
    assert set(summary["passes"]) == {"plain", "contrastive"}
    assert summary["passes"]["contrastive"]["contrast"] == "runner_up"
    for label, entry in summary["passes"].items():
        for kind, interval in entry["by_kind"].items():
            per_model = [m[label]["by_kind"].get(kind) for m in summary["per_model"]]
            assert interval["values"] == [v for v in per_model if v is not None]
    # The contrastive pass is the engine's contrastive unravel of the same model.
    model = keras.saving.load_model(paths[0], compile=False)
    val = load_split("segunravel_shapes", "val", shapes_data_dir)
    rows = experiments.fixation_location(
        model,
        val,
        6,
        list(CLASS_NAMES),
        list(CLASS_KINDS),
        settings=FixationSettings(sigma=6.0, contrast="runner_up"),
        max_images=4,
        with_iou=False,
    )
    assert rows == summary["per_model"][0]["contrastive"]["rows"]
    assert "intrinsic minus contextual" in (out / "location_over_seeds.md").read_text()
    # Per-model results are kept: a second run reuses them and writes the same summary.
    cached = sorted(p.name for p in (out / "per_model").iterdir())
    assert len(cached) == 2
    kept = json.loads((out / "per_model" / cached[0] / "location_over_seeds.json").read_text())
    made_from = kept["made_from"]  # keyed on the images too
    assert made_from["source"].startswith("segunravel_shapes/val in ")
    assert made_from["pad_size"] == 129
    proc = run_tool("experiments", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "location_over_seeds.json").read_text()) == summary


def test_every_registered_experiment_has_a_module_that_runs_it():
    import importlib

    from tf_segunravel.experiment_registry import MODEL, MODELS, REGISTRY, RESULTS, TRAINS

    assert "faithfulness" not in ALL_EXPERIMENTS
    hooks = {
        MODEL: ("run", "plot"),  # the runner and the figure
        MODELS: ("seeds_key", "seed_result", "summarise_seeds", "write_seed_summary"),
        TRAINS: ("run_settings", "markdown"),
        RESULTS: ("run", "markdown"),
    }
    for name, spec in REGISTRY.items():
        module = importlib.import_module(f"tf_segunravel.experiments.{spec.module}")
        for hook in hooks[spec.reads]:
            assert callable(getattr(module, hook)), (name, hook)
    assert {e.reads for e in REGISTRY.values()} == set(hooks)
    with pytest.raises(ValueError, match="experiment=template_sweep: not one of"):
        experiments.run_experiment("template_sweep", None)
    with pytest.raises(ValueError, match="experiment=k_analysis: not run over seeds"):
        experiments.run_over_seeds("k_analysis", [], [], None)
    with pytest.raises(ValueError, match="experiment=faithfulness: not one of the experiments"):
        experiments.run_on_results("faithfulness", [], "unused")


def _one_by_one_model(path, flip):
    """A 1x1-conv two-class model, saved: class 0 where red is high and class 1 where blue
    is, or the other way round with `flip`."""
    inp = keras.Input((None, None, 3))
    model = keras.Model(inp, keras.layers.Conv2D(2, 1, use_bias=False)(inp))
    sign = -1.0 if flip else 1.0
    kernel = np.array([[[[sign, -sign], [0, 0], [-sign, sign]]]], np.float32)
    model.layers[1].set_weights([kernel])
    model.save(path)
    return model


def test_over_seeds_caches_each_model_and_reruns_what_changed(tmp_path, monkeypatch):
    """The one over-seeds aggregator: each model's result is a resumable unit, keyed on the
    settings, the images and the model file."""
    from tf_segunravel.experiments import location

    image = np.zeros((2, 6, 6, 3), np.uint8)
    image[:, :, :3, 0] = 200
    image[:, :, 3:, 2] = 200
    truth = np.zeros((2, 6, 6, 1), np.uint8)
    truth[:, :, 3:] = 1
    val = tf.data.Dataset.from_tensor_slices({"image": image, "segmentation": truth})
    names = [str(tmp_path / f"seed{i}.keras") for i in range(2)]
    networks = [_one_by_one_model(name, flip=i == 1) for i, name in enumerate(names)]
    inputs = experiments.AnalysisInputs(
        networks[0],
        val,
        2,
        ["left", "right"],
        ["intrinsic", "contextual"],
        FixationSettings(sigma=1.0),
        ExperimentSettings(max_images=2, pad_size=8),
        source="two images",
    )
    out = tmp_path / "out"
    summary = experiments.run_over_seeds("location_over_seeds", networks, names, inputs, str(out))
    assert summary["models"] == names and summary["images"] == 2
    first, second = summary["per_model"]
    assert first["plain"]["by_kind"] == {"intrinsic": 1.0, "contextual": 1.0}
    # The flipped model sends each class's fixations to the other half.
    assert second["plain"]["by_kind"] == {"intrinsic": 0.0, "contextual": 0.0}
    assert json.loads((out / "location_over_seeds.json").read_text()) == summary
    assert "intrinsic minus contextual" in (out / "location_over_seeds.md").read_text()
    assert experiments.markdown("location_over_seeds", summary).startswith("Share of each")
    calls = []
    real = location.fixation_location

    def counted(network, *args, **kwargs):
        calls.append(network)
        return real(network, *args, **kwargs)

    monkeypatch.setattr(location, "fixation_location", counted)
    again = experiments.run_over_seeds("location_over_seeds", networks, names, inputs, str(out))
    assert again == summary and calls == []  # both models reused
    # A model saved again at its path (retrained) runs again, the other is reused.
    info = os.stat(names[1])
    os.utime(names[1], ns=(info.st_atime_ns, info.st_mtime_ns + 10**9))
    experiments.run_over_seeds("location_over_seeds", networks, names, inputs, str(out))
    assert calls == [networks[1]] * 2  # its plain and contrastive passes
    # Other images, or other settings, run every model again.
    calls.clear()
    other = dataclasses.replace(inputs, source="two other images")
    experiments.run_over_seeds("location_over_seeds", networks, names, other, str(out))
    assert len(calls) == 4
    calls.clear()
    other = dataclasses.replace(inputs, options=ExperimentSettings(max_images=1, pad_size=8))
    experiments.run_over_seeds("location_over_seeds", networks, names, other, str(out))
    assert len(calls) == 4
    # Without an output dir nothing is kept or reused.
    calls.clear()
    assert experiments.run_over_seeds("location_over_seeds", networks, names, inputs) == summary
    assert len(calls) == 4


def test_location_difference_pairs_by_model():
    def summary(shares):
        per_model = [{"plain": {"by_kind": {"intrinsic": v, "contextual": None}}} for v in shares]
        return {"models": ["a", "b", "c"], "passes": {"plain": {}}, "per_model": per_model}

    difference = experiments.location_difference(summary([0.5, 0.7, 0.9]), summary([0.4, 0.5, 0.9]))
    intrinsic = difference["plain"]["intrinsic"]
    assert intrinsic["values"] == pytest.approx([0.1, 0.2, 0.0]) and intrinsic["n"] == 3
    assert intrinsic["mean"] == pytest.approx(0.1)
    assert intrinsic["low"] < intrinsic["mean"] < intrinsic["high"]
    assert difference["plain"]["contextual"]["n"] == 0  # no share on either side
    with pytest.raises(ValueError, match="different models"):
        experiments.location_difference(summary([0.5] * 3), {**summary([0.5] * 3), "models": ["x"]})


def test_model_stamp_changes_when_the_model_is_saved_again(tmp_path):
    model = tmp_path / "model.keras"
    model.write_bytes(b"weights")
    stamp = experiments.model_stamp(str(model))
    assert stamp[0] == 7
    run = tmp_path / "run"
    (run / "variables").mkdir(parents=True)
    (run / "saved_model.pb").write_bytes(b"abc")
    (run / "variables" / "v").write_bytes(b"de")
    assert experiments.model_stamp(str(run))[0] == 5
    assert experiments.model_stamp("no/such/model") is None
    info = os.stat(model)
    os.utime(model, ns=(info.st_atime_ns, info.st_mtime_ns + 10**9))
    assert experiments.model_stamp(str(model)) != stamp
    before = experiments.model_stamp(str(run))
    (run / "variables" / "v").write_bytes(b"def")
    assert experiments.model_stamp(str(run)) != before


def test_model_stamp_follows_the_files_the_model_loads_from(tmp_path):
    """A training model dir is stamped by the model it loads (model.keras, else its latest
    checkpoint), so an evaluation written beside it leaves the cache valid."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.keras").write_bytes(b"weights")
    (run / "val.json").write_text("{}")
    stamp = experiments.model_stamp(str(run))
    assert stamp[0] == 7
    (run / "val.json").write_text('{"mean_iou": 50.0}')
    assert experiments.model_stamp(str(run)) == stamp
    (run / "model.keras").write_bytes(b"weights, retrained")
    assert experiments.model_stamp(str(run)) != stamp

    trained = tmp_path / "trained"
    manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(v=tf.Variable(1.0)), str(trained / "checkpoints"), max_to_keep=2
    )
    first = manager.save()
    at_first = experiments.model_stamp(str(trained))
    assert at_first == experiments.model_stamp(first)  # the dir's latest is that prefix
    manager.save()
    assert experiments.model_stamp(str(trained)) != at_first
    assert experiments.model_stamp(first) == at_first  # a named checkpoint stays as it was


def _faithfulness_result(folder, rows):
    """A faithfulness.json as --experiment=faithfulness writes it, with `rows` {method:
    (deletion, insertion, ROAD)}."""
    folder.mkdir(parents=True)
    payload = {
        "experiment": "faithfulness",
        "rows": [
            {"method": m, "deletion_auc": d, "insertion_auc": i, "road": r, "energy": 0.5}
            for m, (d, i, r) in rows.items()
        ],
        "summary": {},
    }
    (folder / "faithfulness.json").write_text(json.dumps(payload))
    return str(folder)


def test_the_choice_rule_ranks_each_cell_and_breaks_ties_by_table_order(tmp_path):
    from tf_segunravel.experiments import choice

    # Network a: fixations_k3 best on every curve; network b: fixations_mass best on
    # deletion and insertion, fixations and fixations_mass tie on ROAD. The baselines and
    # the contrastive map are no candidates; fixations_density is missing from b.
    a = _faithfulness_result(
        tmp_path / "a",
        {
            "fixations": (0.5, 0.7, 0.3),
            "fixations_k3": (0.3, 0.9, 0.5),
            "fixations_mass": (0.4, 0.8, 0.4),
            "fixations_density": (0.1, 0.99, 0.9),
            "fixations_contrastive": (0.0, 1.0, 1.0),
            "gradcam": (0.0, 1.0, 1.0),
        },
    )
    b = _faithfulness_result(
        tmp_path / "b",
        {
            "fixations": (0.5, 0.7, 0.2),
            "fixations_k3": (0.4, 0.8, 0.1),
            "fixations_mass": (0.3, 0.9, 0.2),
            "gradcam": (0.0, 1.0, 1.0),
        },
    )
    summary = choice.choose([a, b])
    assert summary["candidates"] == ["fixations", "fixations_k3", "fixations_mass"]
    # ranks: fixations 3,3,3 | 3,3,1 (ROAD tie: first in the table); k3 1,1,1 | 2,2,3;
    # mass 2,2,2 | 1,1,2
    assert summary["mean_rank"] == pytest.approx(
        {"fixations": 16 / 6, "fixations_k3": 10 / 6, "fixations_mass": 10 / 6}
    )
    assert summary["chosen"] == "fixations_k3"  # tied with mass: first in the table
    road_b = next(c for c in summary["cells"] if c["folder"] == b and c["metric"] == "road")
    assert road_b["order"] == ["fixations", "fixations_mass", "fixations_k3"]


@pytest.mark.slow  # five subprocesses (about 20 s); the rule itself is tested above, fast
def test_the_choice_tool_writes_its_tables_and_refuses_bad_results(tmp_path):
    good = _faithfulness_result(
        tmp_path / "good", {"fixations": (0.5, 0.7, 0.3), "fixations_k3": (0.3, 0.9, 0.5)}
    )
    out = tmp_path / "choice"
    proc = run_tool(
        "experiments",
        "--experiment=choose_fixation_variant",
        f"--results={good}",
        f"--output_dir={out}",
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "choose_fixation_variant.json").read_text())["chosen"] == (
        "fixations_k3"
    )
    assert "fixations_k3 | 1.00" in (out / "choose_fixation_variant.md").read_text()

    nan_road = _faithfulness_result(
        tmp_path / "nan", {"fixations": (0.5, 0.7, float("nan")), "fixations_k3": (0.3, 0.9, 0.5)}
    )
    one = _faithfulness_result(tmp_path / "one", {"fixations": (0.5, 0.7, 0.3)})
    cases = [
        ([f"--results={tmp_path / 'absent'}"], "faithfulness.json: no such file"),
        ([f"--results={nan_road}"], "fixations has no finite road"),
        ([f"--results={one}"], "the rule needs at least two"),
        ([], "--results is required"),
    ]
    for flags, message in cases:
        refused = tmp_path / "refused"
        proc = run_tool(
            "experiments",
            "--experiment=choose_fixation_variant",
            *flags,
            f"--output_dir={refused}",
            timeout=300,
        )
        assert proc.returncode != 0 and message in last_line(proc.stderr), proc.stderr[-2000:]
        assert not refused.exists()
