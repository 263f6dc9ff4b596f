"""Faithfulness metrics on a network whose evidence is known by construction: its class-1
score reads only the pixels of one box, so a map that ranks the box first must beat a random
map and the inverted map."""

import dataclasses
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_segunravel import baselines, faithfulness, methods
from tf_segunravel.unravel import FixationSettings, ScoreMap

SIZE = 32
BOX = np.zeros((SIZE, SIZE), bool)
BOX[8:16, 20:28] = True


def box_reader():
    """Logits (0, 0.2 x the box's mean colour summed over channels, relative to the image, - 4)."""
    images = keras.Input((SIZE, SIZE, 3))
    masked = keras.layers.Lambda(lambda x: x * BOX[None, ..., None].astype("float32"))(images)
    pooled = keras.layers.GlobalAveragePooling2D()(masked)
    head = keras.layers.Dense(2)
    logits = head(pooled)
    head.set_weights([np.array([[0, 0.2]] * 3, np.float32), np.array([0, -4], np.float32)])
    return keras.Model(images, logits)


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 50, (SIZE, SIZE, 3)).astype(np.uint8)
    image[BOX] = 255
    score_map = ScoreMap(box_reader())
    region = np.ones((SIZE, SIZE), bool)  # a classifier: class 1 covers the image
    maps = {
        "box_first": BOX + 0.01 * rng.random((SIZE, SIZE)),
        "random": rng.random((SIZE, SIZE)),
        "inverted": ~BOX + 0.01 * rng.random((SIZE, SIZE)),
    }
    return score_map, image, region, maps


def test_the_box_first_map_wins_deletion_and_insertion(setup):
    score_map, image, region, maps = setup
    deletion = {
        k: faithfulness.deletion_auc(score_map, image, 1, region, m) for k, m in maps.items()
    }
    insertion = {
        k: faithfulness.insertion_auc(score_map, image, 1, region, m) for k, m in maps.items()
    }
    assert deletion["box_first"] < deletion["random"] < deletion["inverted"]
    assert insertion["box_first"] > insertion["random"] > insertion["inverted"]
    assert deletion["box_first"] < 0.2 and insertion["box_first"] > 0.8
    # The curve starts at the clean image's score and, deleting everything, ends at the
    # filled image's, whatever the map.
    curve = faithfulness.curve(score_map, image, 1, region, maps["random"], steps=10)
    clean = faithfulness.region_score(score_map, image[None].astype(np.float32), 1, region)
    assert curve.shape == (11,) and curve[0] == pytest.approx(float(clean[0]), abs=1e-6)
    other = faithfulness.curve(score_map, image, 1, region, maps["box_first"], steps=10)
    assert curve[-1] == pytest.approx(other[-1], abs=1e-6)


def test_road_ranks_the_box_first_map_highest(setup):
    score_map, image, region, maps = setup
    scores = {k: faithfulness.road(score_map, image, 1, region, m) for k, m in maps.items()}
    assert scores["box_first"] > scores["random"] > scores["inverted"]
    assert scores["box_first"] > 0.3 and abs(scores["random"]) < 0.2


def box_segmenter():
    """A segmenter whose evidence is known: class 1's logit at a stride-2 position is 0.01 x
    the brightest 3 x 3 mean colour (summed over channels) under its 2 x 2 window, class 0's
    a constant 3. On a dark image with a bright box, class 1 covers the box and reads only
    the box's pixels and the ring around it; every layer is one the unravel traces."""
    images = keras.Input((SIZE, SIZE, 3))
    features = keras.layers.Conv2D(3, 3, padding="same", activation="relu", name="features")
    pooled = keras.layers.MaxPooling2D(2)(features(images))
    scores = keras.layers.Conv2D(2, 1, name="scores")
    model = keras.Model(images, scores(pooled))
    kernel = np.zeros((3, 3, 3, 3), np.float32)
    for channel in range(3):
        kernel[:, :, channel, channel] = 1 / 9
    features.set_weights([kernel, np.zeros(3, np.float32)])
    scores.set_weights([np.array([[[[0, 0.01]] * 3]], np.float32), np.array([3, 0], np.float32)])
    return model


@pytest.mark.parametrize("name", methods.names(fixations=True))
def test_every_fixation_variant_ranks_the_evidence_first(setup, name):
    """The known-evidence test for each fixation entry of the methods table: on the box
    segmenter its map beats a random map and the inverted box on deletion, insertion and
    ROAD, over class 1's predicted region (the box)."""
    from tf_segunravel.unravel.graph import ModelGraph

    _, image, _, maps = setup
    graph = ModelGraph(box_segmenter())
    score_map = ScoreMap(graph)
    region = np.asarray(baselines.predicted_regions(graph, image)[1]) == 1
    assert region[BOX].all() and region.sum() < 1.6 * BOX.sum()  # the box and part of its ring
    options = methods.MethodOptions(FixationSettings(sigma=2.0))
    variant = methods.get(name).maps(graph, image[None], [1], options=options)[0, 0]
    candidates = {name: variant, "random": maps["random"], "inverted": maps["inverted"]}
    deletion, insertion, road = (
        {key: metric(score_map, image, 1, region, value) for key, value in candidates.items()}
        for metric in (faithfulness.deletion_auc, faithfulness.insertion_auc, faithfulness.road)
    )
    assert deletion[name] < deletion["random"] < deletion["inverted"], deletion
    assert insertion[name] > insertion["random"] > insertion["inverted"], insertion
    assert road[name] > road["random"] > road["inverted"], road


def test_imputation_fills_from_the_neighbours():
    # A linear ramp is its own neighbours' weighted mean: imputed pixels recover it.
    ramp = np.tile(np.linspace(0, 200, 16, dtype=np.float32)[None, :, None], (16, 1, 3))
    removed = np.zeros((1, 16, 16), bool)
    removed[0, 5:10, 4:12] = True
    filled = faithfulness.impute(ramp[None], removed, iterations=400, noise=0).numpy()[0]
    np.testing.assert_allclose(filled, ramp, atol=0.5)


def _jacobi_by_convolution(image, removed, iterations):
    """ROAD's Jacobi iterations written plainly: a depthwise 3 x 3 convolution per step."""
    weights = np.array([[1, 2, 1], [2, 0, 2], [1, 2, 1]], np.float32) / 12
    kernel = tf.constant(np.tile(weights[:, :, None, None], (1, 1, 3, 1)))
    image = tf.constant(image, tf.float32)
    mask = tf.constant(removed, tf.float32)[..., None]
    reach = tf.nn.depthwise_conv2d(tf.ones_like(image), kernel, [1] * 4, "SAME")
    x = image * (1 - mask) + tf.reduce_mean(image, axis=[1, 2], keepdims=True) * mask
    for _ in range(iterations):
        x = image * (1 - mask) + tf.nn.depthwise_conv2d(x, kernel, [1] * 4, "SAME") / reach * mask
    return x.numpy()


def test_the_compiled_imputation_is_the_convolution_form():
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 255, (3, 21, 17, 3)).astype(np.float32)
    removed = rng.uniform(size=(3, 21, 17)) < 0.5
    removed[0, 0, :] = True  # border pixels, with fewer neighbours
    want = _jacobi_by_convolution(image, removed, 60)
    got = faithfulness.impute(image, removed, iterations=60, noise=0).numpy()
    np.testing.assert_allclose(got, np.clip(want, 0, 255), rtol=0, atol=1e-3)
    # Untouched pixels stay exactly what they were.
    np.testing.assert_array_equal(got[~removed], image[~removed])


def test_ties_do_not_follow_the_raster_order(setup):
    score_map, image, region, _ = setup
    flat = np.zeros((SIZE, SIZE))
    a = faithfulness.curve(score_map, image, 1, region, flat, steps=8, seed=0)
    b = faithfulness.curve(score_map, image, 1, region, flat, steps=8, seed=1)
    assert not np.allclose(a, b)  # a flat map is a random order, fixed by the seed
    np.testing.assert_array_equal(
        a, faithfulness.curve(score_map, image, 1, region, flat, steps=8, seed=0)
    )


def test_the_context_domain_leaves_the_region_alone(setup):
    score_map, image, _, maps = setup
    region = BOX.copy()  # the box as the class's region: its context is everything else
    context = faithfulness.context_domain(region).numpy()
    assert not context[7:17, 19:29].any() and context[4, 16] and context[:, :16].all()
    # Deleting only context pixels cannot touch the box, which is all the score reads.
    curve = faithfulness.curve(score_map, image, 1, region, maps["inverted"], domain="context")
    np.testing.assert_allclose(curve, curve[0], atol=0.05)


def test_energy_and_pointing_game():
    truth = BOX
    assert faithfulness.energy(BOX.astype(float), truth) == 1.0
    assert faithfulness.energy((~BOX).astype(float), truth) == 0.0
    assert faithfulness.pointing_game(BOX.astype(float), truth) == 1.0
    assert faithfulness.pointing_game((~BOX).astype(float), truth) == 0.0
    flat = np.ones((SIZE, SIZE))
    assert faithfulness.pointing_game(flat, truth) == pytest.approx(BOX.mean())
    assert faithfulness.energy(flat, truth) == pytest.approx(BOX.mean())


@pytest.mark.slow
def test_the_experiment_tool_runs_every_method(tmp_path, shapes_data_dir):
    import json

    from tests.helpers import last_line, run_tool
    from tf_segunravel import baselines
    from tf_segunravel.models import deeplab_largefov

    if not baselines.available():
        pytest.skip(baselines.INSTALL_HINT)
    keras.utils.set_random_seed(7)
    model = deeplab_largefov(num_classes=6, width=1 / 16)
    model.save(tmp_path / "tiny.keras")
    methods = ",".join(("fixations", "fixations_contrastive", *baselines.METHODS))
    common = [
        "--experiment=faithfulness",
        f"--model={tmp_path / 'tiny.keras'}",
        f"--data_dir={shapes_data_dir}",
        "--max_images=1",
        "--faithfulness_steps=4",
        "--randomisation_layers=3",
    ]
    out = tmp_path / "out"
    proc = run_tool("experiments", *common, f"--methods={methods}", f"--output_dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    payload = json.loads((out / "faithfulness.json").read_text())
    assert [row["method"] for row in payload["rows"]] == methods.split(",")
    summary = payload["summary"]
    for method in methods.split(","):
        for metric in faithfulness.METRICS:
            entry = summary["methods"][method][metric]
            assert entry["n"] >= 1 and entry["low"] <= entry["mean"] <= entry["high"]
            if method != "gradcam":
                assert "minus_gradcam" in entry
        assert len(summary["curves"][method]["deletion"]) == 5
        cascade = summary["randomisation"][method]
        assert [step["layer"] for step in cascade] == ["fc8", "fc7", "fc6"]
    # Seeds and regions are fixed, so the segment prior ignores every weight; a gradient does not.
    prior = summary["methods"]["segment_prior"]["randomisation_rank_correlation"]["mean"]
    gradient = summary["methods"]["gradient_x_input"]["randomisation_rank_correlation"]["mean"]
    assert prior == pytest.approx(1.0) and gradient < prior
    assert summary["by_class"] and (out / "faithfulness.png").exists()
    assert (out / "faithfulness_curves.png").exists()
    assert (out / "faithfulness_example0.png").exists()
    for flags, message in (
        (["--methods=fixations,lime"], "--methods: unknown ['lime']"),
        (["--methods=gradcam", "--gradcam_layer=nope"], "--gradcam_layer=nope: no such layer"),
        (
            ["--methods=segment_prior", "--min_pixels=100000"],
            "--min_pixels=100000: no predicted class covers 100000 pixels in the 1 images read",
        ),
    ):
        bad = tmp_path / "bad"
        proc = run_tool("experiments", *common, *flags, f"--output_dir={bad}")
        assert proc.returncode == 1 and message in last_line(proc.stderr), proc.stderr[-500:]
        assert not bad.exists()


@pytest.mark.slow
def test_the_experiment_runs_every_method_on_a_zoo_unet(tmp_path, shapes_data_dir):
    """A network of another shape than LargeFOV: the zoo's U-Net (strided encoder, transposed
    convolutions, skip concatenations), padded to a size its four poolings divide."""
    import json

    from bench.zoo import unet
    from tests.helpers import run_tool
    from tf_segunravel import baselines

    if not baselines.available():
        pytest.skip(baselines.INSTALL_HINT)
    keras.utils.set_random_seed(5)
    unet(144, classes=6, base=4).save(tmp_path / "unet.keras")
    methods = ("fixations", "fixations_contrastive", *baselines.METHODS)
    out = tmp_path / "out"
    proc = run_tool(
        "experiments",
        "--experiment=faithfulness",
        f"--model={tmp_path / 'unet.keras'}",
        f"--data_dir={shapes_data_dir}",
        "--pad_size=144",
        "--max_images=1",
        "--faithfulness_steps=4",
        "--min_pixels=16",
        "--randomisation_layers=2",
        f"--methods={','.join(methods)}",
        f"--output_dir={out}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "faithfulness.json").read_text())["summary"]
    for method in methods:
        deletion = summary["methods"][method]["deletion_auc"]
        assert deletion["n"] >= 1 and 0.0 <= deletion["mean"] <= 1.0
        assert len(summary["randomisation"][method]) == 2
    assert (out / "faithfulness_curves.png").exists()
    assert (out / "faithfulness_example0.png").exists()


def test_spearman_shares_ranks_among_ties():
    a = np.array([0, 0, 1, 2.0])
    assert faithfulness.spearman(a, a) == pytest.approx(1.0)
    assert faithfulness.spearman(a, -a) == pytest.approx(-1.0)
    assert faithfulness.spearman(a, np.array([5, 5, 6, 7.0])) == pytest.approx(1.0)
    assert faithfulness.spearman(np.zeros(4), a) == 0.0


def test_cascading_randomisation_flags_a_map_that_ignores_the_weights():
    from tf_segunravel import baselines
    from tf_segunravel.unravel.graph import ModelGraph

    keras.utils.set_random_seed(4)
    images = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="features")(images)
    model = keras.Model(images, keras.layers.Conv2D(3, 1, name="scores")(x))
    image = np.random.default_rng(1).integers(0, 256, (16, 16, 3)).astype(np.uint8)
    classes = [int(c) for c in np.unique(np.argmax(model(image[None].astype("float32")), -1))]

    def method(name):
        def explain_maps(network, regions):
            return baselines.explain(name, ModelGraph(network), image, classes, regions=regions)

        return explain_maps

    gradient = faithfulness.cascading_randomisation(
        method("gradient_x_input"), model, image, classes
    )
    assert [layer for layer, _ in gradient] == ["scores", "features"]
    assert gradient[-1][1] < 0.5  # every weight re-drawn: the gradient map changed
    prior = faithfulness.cascading_randomisation(method("segment_prior"), model, image, classes)
    # The segment prior with the regions fixed ignores the weights: it stays at 1.
    assert all(value == pytest.approx(1.0) for _, value in prior)


def test_over_seeds_pairs_methods_within_each_seed():
    def summary(fixations, gradcam):
        entry = lambda v: {m: {"mean": v} for m in faithfulness.METRICS}  # noqa: E731
        return {"methods": {"fixations": entry(fixations), "gradcam": entry(gradcam)}}

    table = faithfulness.over_seeds([summary(0.5, 0.4), summary(0.7, 0.5), summary(0.6, 0.6)])
    deletion = table["gradcam"]["deletion_auc"]
    assert deletion["values"] == pytest.approx([0.1, 0.2, 0.0]) and deletion["n"] == 3
    text = faithfulness.over_seeds_markdown(table, metrics=("deletion_auc",))
    assert "| gradcam | +0.100 [" in text and "(includes 0)" in text


@pytest.mark.slow  # two models through the whole experiment: a few minutes on 2 cores
def test_faithfulness_over_seeds_pairs_each_model_and_resumes(
    tmp_path, shapes_data_dir, monkeypatch
):
    from tests.helpers import save_tiny_largefov
    from tf_segunravel import experiments
    from tf_segunravel.data import load_split
    from tf_segunravel.data.shapes import CLASS_KINDS, CLASS_NAMES
    from tf_segunravel.experiment_registry import ExperimentSettings
    from tf_segunravel.unravel.graph import ModelGraph
    from tf_segunravel.unravel.settings import FixationSettings

    seeds = (3, 4)
    names = [str(tmp_path / f"seed{seed}.keras") for seed in seeds]
    networks = [ModelGraph(save_tiny_largefov(tmp_path / f"seed{s}.keras", 6, s)) for s in seeds]
    methods = ("fixations", "random", "segment_prior")  # no [baselines] extra needed
    inputs = experiments.AnalysisInputs(
        networks[0],
        load_split("segunravel_shapes", "val", shapes_data_dir),
        6,
        list(CLASS_NAMES),
        list(CLASS_KINDS),
        FixationSettings(sigma=6.0),
        ExperimentSettings(
            max_images=2,
            pad_size=129,
            methods=methods,
            faithfulness_steps=4,
            min_pixels=16,
            randomisation_images=1,
            randomisation_layers=2,
        ),
    )
    out = tmp_path / "out"
    result = experiments.run_over_seeds(
        "faithfulness_over_seeds", networks, names, inputs, str(out)
    )
    per_model = [
        json.loads((out / "per_model" / experiments.model_key(n) / "faithfulness.json").read_text())
        for n in names
    ]
    for name in names:  # each model's own figures
        model_dir = out / "per_model" / experiments.model_key(name)
        assert (model_dir / "faithfulness_curves.png").exists()
        assert (model_dir / "faithfulness_example0.png").exists()
    assert result["models"] == names and result["pairs"] == [
        p["summary"]["pairs"] for p in per_model
    ]
    for method in methods:
        for metric in faithfulness.METRICS:
            means = [p["summary"]["methods"][method][metric]["mean"] for p in per_model]
            assert result["methods"][method][metric]["values"] == pytest.approx(means)
    # Fixations minus each other method, one value per model, paired within the model.
    deletion = result["over_seeds"]["fixations"]["random"]["deletion_auc"]
    expected = [
        p["summary"]["methods"]["fixations"]["deletion_auc"]["mean"]
        - p["summary"]["methods"]["random"]["deletion_auc"]["mean"]
        for p in per_model
    ]
    assert deletion["values"] == pytest.approx(expected) and deletion["n"] == 2
    assert len(result["curves"]["fixations"]["deletion"]) == 5
    assert "| fixations minus |" in (out / "faithfulness_over_seeds.md").read_text()
    assert (out / "faithfulness_over_seeds_curves.png").exists()
    assert json.loads((out / "faithfulness_over_seeds.json").read_text()) == json.loads(
        json.dumps(result)
    )

    # A second call with the same settings reuses both models' results.
    def refuse(_):
        raise AssertionError("a cached model was run again")

    from tf_segunravel.experiments import faithfulness as experiment

    monkeypatch.setattr(experiment, "run", refuse)
    again = experiments.run_over_seeds("faithfulness_over_seeds", networks, names, inputs, str(out))
    assert json.loads(json.dumps(again)) == json.loads(json.dumps(result))
    # Other settings do not match the cache: the models run again.
    with pytest.raises(AssertionError, match="run again"):
        steps = dataclasses.replace(inputs.options, faithfulness_steps=5)
        changed = dataclasses.replace(inputs, options=steps)
        experiments.run_over_seeds("faithfulness_over_seeds", networks, names, changed, str(out))
    with pytest.raises(AssertionError, match="run again"):  # nor do other images
        other_images = dataclasses.replace(inputs, source="segunravel_shapes/train")
        experiments.run_over_seeds(
            "faithfulness_over_seeds", networks, names, other_images, str(out)
        )
    # Nor does a model saved again at the same path (retrained: a newer file).
    info = os.stat(names[1])
    os.utime(names[1], ns=(info.st_atime_ns, info.st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="run again"):
        experiments.run_over_seeds("faithfulness_over_seeds", networks, names, inputs, str(out))


@pytest.mark.slow
def test_cost_leaves_the_first_calls_tracing_out(tmp_path, shapes_data_dir, monkeypatch):
    """`seconds_per_image` times a method's maps, not the tracing of its compiled walk: each
    method is called once untimed on the first scored image, then once per image."""
    from tests.helpers import save_tiny_largefov
    from tf_segunravel.data import load_split

    model = save_tiny_largefov(tmp_path / "tiny.keras", 6)
    calls = []
    from tf_segunravel.experiments import faithfulness as experiment

    maps = experiment._maps

    def counted(method, *args):
        calls.append(method)
        return maps(method, *args)

    monkeypatch.setattr(experiment, "_maps", counted)
    _, summary = experiment.score_methods(
        model,
        load_split("segunravel_shapes", "val", shapes_data_dir),
        6,
        methods=("fixations", "random"),
        max_images=2,
        steps=2,
        min_pixels=16,
        randomisation_images=0,
    )
    images = summary["methods"]["fixations"]["seconds_per_image"]["n"]
    assert images == 2
    assert calls.count("fixations") == calls.count("random") == images + 1
