"""tools/fixations.py end to end on a tiny model, and every bad input it must name."""

import json

import numpy as np
import pytest
from PIL import Image

from tests.helpers import last_line, run_tool, save_tiny_largefov
from tf_segunravel.unravel import SegUnravel


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    return path, save_tiny_largefov(path, num_classes=3)


def write_images(directory):
    directory.mkdir()
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (37, 45, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(directory / "rgb.png")
    Image.fromarray(rgb).convert("L").save(directory / "grey.png")
    Image.fromarray(rgb).convert("RGBA").save(directory / "alpha.png")
    Image.fromarray(rgb).save(directory / "photo.jpg", quality=95)
    Image.fromarray(rng.integers(0, 65535, (30, 33), dtype=np.uint16)).save(directory / "deep.png")
    return rgb


@pytest.mark.slow
def test_writes_every_output(tmp_path, tiny_model):
    model_path, model = tiny_model
    rgb = write_images(tmp_path / "images")
    masks = tmp_path / "masks"
    masks.mkdir()
    truth = np.zeros((37, 45), np.uint8)
    truth[5:20, 5:30] = 1
    truth[0] = 255
    Image.fromarray(truth, mode="L").save(masks / "rgb.png")
    out = tmp_path / "out"
    proc = run_tool(
        "fixations",
        f"--model={model_path}",
        f"--images={tmp_path / 'images'}",
        f"--output_dir={out}",
        f"--masks={masks}",
        "--sigma=3",
        "--flow",
        "--class_names=sky,road,car",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for stem in ("rgb", "grey", "alpha", "photo", "deep"):
        for suffix in (".npz", ".png", ".json", "_flow.gif"):
            assert (out / f"{stem}{suffix}").exists(), stem + suffix
        with Image.open(out / f"{stem}.png") as figure:
            figure.verify()
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp")]

    data = np.load(out / "rgb.npz")
    points, counts, classes = data["points"], data["counts"], data["classes"]
    assert points.dtype == np.int32 and counts.dtype == np.int32 and classes.dtype == np.int32
    assert [tuple(p) for p in points] == sorted(tuple(p) for p in points)
    assert data["labels"].shape == (37, 45) and data["maps"].shape == (len(classes), 37, 45)
    assert 0 <= data["maps"].min() and data["maps"].max() <= 1
    # The same points as the engine on the same image.
    engine_points, engine_counts = SegUnravel(model)(rgb[None].astype(np.float32)).for_image(0)
    np.testing.assert_array_equal(points, engine_points)
    np.testing.assert_array_equal(counts, engine_counts)

    summary = json.loads((out / "rgb.json").read_text())
    for cls in classes:
        entry = summary["classes"][str(cls)]
        assert entry["seeds"] > 0 and entry["name"] == ["sky", "road", "car"][cls]
        for key in ("inside_predicted", "inside_predicted_weighted", "inside_truth"):
            assert 0.0 <= entry[key] <= 1.0
        mine = points[:, 0] == cls
        want = np.mean(truth[points[mine, 1], points[mine, 2]] == cls)
        assert entry["inside_truth"] == pytest.approx(want)
        assert 0 <= entry["outliers_dropped"] < entry["fixation_points"] == mine.sum()
    grey = json.loads((out / "grey.json").read_text())["classes"]
    assert grey and all("inside_truth" not in entry for entry in grey.values())


@pytest.mark.slow
def test_max_side_maps_points_back(tmp_path, tiny_model):
    model_path, _ = tiny_model
    image = np.random.default_rng(5).integers(0, 256, (90, 70, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "big.png")
    proc = run_tool(
        "fixations",
        f"--model={model_path}",
        f"--images={tmp_path}/*.png",
        f"--output_dir={tmp_path / 'out'}",
        "--max_side=45",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = np.load(tmp_path / "out" / "big.npz")
    assert data["labels"].shape == (90, 70) and data["maps"].shape[1:] == (90, 70)
    assert data["points"][:, 1].max() < 90 and data["points"][:, 2].max() < 70


@pytest.mark.slow
def test_bad_images_are_named_and_keep_going_summarises(tmp_path, tiny_model):
    model_path, _ = tiny_model
    images = tmp_path / "images"
    write_images(images)
    (images / "broken.png").write_bytes(b"\x89PNG\r\n not really")
    out = tmp_path / "out"
    args = [f"--model={model_path}", f"--images={images}", f"--output_dir={out}"]
    proc = run_tool("fixations", *args)
    assert proc.returncode == 1
    assert last_line(proc.stderr).startswith("fixations: error: ")
    assert "broken.png: not a readable image" in last_line(proc.stderr)
    assert not (out / "broken.npz").exists()

    proc = run_tool("fixations", *args, "--keep_going")
    assert proc.returncode == 1
    assert "1 of 6 images failed" in proc.stderr and "broken.png" in proc.stderr
    assert (out / "rgb.npz").exists() and not (out / "broken.npz").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--images=/nonexistent/*.png"], "/nonexistent/*.png: matches no file"),
        (["--images=/nonexistent/a.png"], "/nonexistent/a.png: no such file"),
        (["--classes=zebra"], "--classes: 'zebra'"),
        (["--classes=7"], "--classes: 7 is not below the model's 3"),
        (["--model=/nonexistent/model.keras"], "/nonexistent/model.keras: no such file"),
        (["--shift=diagonal"], "shift"),
        (["--seed_from_masks"], "--seed_from_masks needs --masks"),
    ],
)
@pytest.mark.slow
def test_bad_arguments(tmp_path, tiny_model, extra, message):
    model_path, _ = tiny_model
    write_images(tmp_path / "images")
    base = {"model": f"--model={model_path}", "images": f"--images={tmp_path / 'images'}"}
    for flag in extra:
        base[flag.split("=")[0].lstrip("-")] = flag
    proc = run_tool("fixations", *base.values(), f"--output_dir={tmp_path / 'out'}")
    assert proc.returncode != 0
    assert message in proc.stderr


@pytest.mark.slow
def test_mask_size_mismatch_is_named(tmp_path, tiny_model):
    model_path, _ = tiny_model
    write_images(tmp_path / "images")
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.zeros((5, 5), np.uint8), mode="L").save(tmp_path / "masks" / "rgb.png")
    proc = run_tool(
        "fixations",
        f"--model={model_path}",
        f"--images={tmp_path}/images/rgb.png",
        f"--output_dir={tmp_path / 'out'}",
        f"--masks={tmp_path / 'masks'}",
    )
    assert proc.returncode == 1
    assert "rgb.png: mask is 5x5 but the image is 45x37" in last_line(proc.stderr)


@pytest.mark.slow
def test_contrast_by_name_matches_the_engine(tmp_path, tiny_model):
    model_path, model = tiny_model
    rgb = np.random.default_rng(3).integers(0, 256, (37, 45, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    common = [f"--model={model_path}", f"--images={tmp_path / 'a.png'}", "--sigma=3"]
    proc = run_tool(
        "fixations",
        *common,
        f"--output_dir={tmp_path / 'out'}",
        "--class_names=sky,road,car",
        "--contrast=road",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = np.load(tmp_path / "out" / "a.npz")
    engine = SegUnravel(model, contrast="1")(rgb[None].astype(np.float32))
    np.testing.assert_array_equal(data["points"], engine.for_image(0)[0])
    assert 1 not in data["classes"]  # road's own seeds have no margin over road
    for contrast, message in [
        ("plane", "--contrast=plane: --contrast='plane' is neither 'runner_up', a class id"),
        ("5", "--contrast=5: --contrast='5' is not a class of this 3-class model"),
    ]:
        proc = run_tool(
            "fixations", *common, f"--output_dir={tmp_path / contrast}", f"--contrast={contrast}"
        )
        assert proc.returncode == 1 and message in last_line(proc.stderr), proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr and not (tmp_path / contrast).exists()


def test_impossible_output_dir_is_one_line(tmp_path, tiny_model):
    model_path, _ = tiny_model
    write_images(tmp_path / "images")
    (tmp_path / "file").write_text("in the way")
    proc = run_tool(
        "fixations",
        f"--model={model_path}",
        f"--images={tmp_path / 'images'}",
        f"--output_dir={tmp_path / 'file' / 'out'}",
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert last_line(proc.stderr) == (
        f"fixations: error: flag --output_dir={tmp_path / 'file' / 'out'}: {tmp_path / 'file'} "
        "is a file, not a directory"
    )


def test_rescaled_counts_add_up_and_saturate():
    """Points merged by the --max_side rescale add their counts; a sum past int64 saturates
    at its largest value, as the engine's counts do, instead of wrapping to negative."""
    from tf_segunravel.fixation_files import rescale_points
    from tf_segunravel.unravel.tracer import MAX_COUNT, UnravelResult

    points = np.array([[0, 1, 0, 0], [0, 1, 0, 1], [0, 2, 3, 3], [0, 2, 3, 2]], np.int32)
    big = np.int64(2**62)
    result = UnravelResult(points, np.array([2, 3, big, big]), None, None, None)
    rescaled = rescale_points(result, (4, 4), (2, 2))
    np.testing.assert_array_equal(rescaled.points, [[0, 1, 0, 0], [0, 2, 1, 1]])
    np.testing.assert_array_equal(rescaled.counts, [5, MAX_COUNT])


@pytest.mark.slow
def test_compare_draws_baselines_beside_the_fixations(tmp_path, tiny_model):
    from tf_segunravel import baselines
    from tf_segunravel.export import export_saved_model
    from tf_segunravel.unravel.graph import ModelGraph

    if not baselines.available():
        pytest.skip(baselines.INSTALL_HINT)
    model_path, model = tiny_model
    rgb = np.random.default_rng(4).integers(0, 256, (37, 45, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    common = [f"--model={model_path}", f"--images={tmp_path / 'a.png'}", "--sigma=3"]
    out = tmp_path / "out"
    proc = run_tool(
        "fixations", *common, f"--output_dir={out}", "--compare=gradcam,saliency,segment_prior"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = np.load(out / "a.npz")
    classes = [int(c) for c in data["classes"]]
    for method in ("gradcam", "saliency", "segment_prior"):
        maps = data[f"compare_{method}"]
        assert maps.shape == data["maps"].shape
        want = baselines.explain(method, ModelGraph(model, strict=False), rgb, classes)
        np.testing.assert_allclose(maps, want, atol=1e-5)
    with Image.open(out / "a_compare.png") as figure:
        figure.verify()
    # Bad input: one line naming the flag, nothing written.
    saved = tmp_path / "sm"
    export_saved_model(model, str(saved))
    for extra, message in [
        (["--compare=lime"], "--compare: unknown ['lime']"),
        ([f"--model={saved}", "--compare=saliency"], "--compare: needs a Keras model"),
        (["--compare=gradcam", "--gradcam_layer=nope"], "--gradcam_layer=nope: no such layer"),
    ]:
        bad = tmp_path / "bad"
        proc = run_tool("fixations", *common, f"--output_dir={bad}", *extra)
        assert proc.returncode == 1 and message in last_line(proc.stderr), proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr and not bad.exists()


def test_the_rescale_moves_the_geometry_with_the_points():
    """A blur in score cells (`sigma_unit=score_cells`) reads the stride from the geometry,
    so the --max_side rescale must place the score grid on the new pixels too: pixel
    centres scaled, as the points are."""
    from tf_segunravel.fixation_files import rescale_points
    from tf_segunravel.unravel import FixationSettings
    from tf_segunravel.unravel.maps import heatmap_sigma
    from tf_segunravel.unravel.tracer import UnravelResult

    points = np.array([[0, 1, 3, 3]], np.int32)
    geometry = np.array([[8.0, 3.5], [8.0, 0.0]], np.float32)
    result = UnravelResult(points, np.array([1]), None, None, None, geometry)
    rescaled = rescale_points(result, (64, 32), (128, 16))
    np.testing.assert_allclose(rescaled.geometry, [[16.0, 7.5], [4.0, -0.25]])
    # Score position 1 sat over pixel 11.5 (y) and 8 (x); rescaled, over 23.5 and 3.75.
    settings = FixationSettings(sigma=1.5, sigma_unit="score_cells")
    assert heatmap_sigma(settings, rescaled.geometry, 128, 16) == (24.0, 6.0)
