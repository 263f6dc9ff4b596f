"""FixationWriter computes an image's fixations apart from writing its files."""

import json
import os

import keras
import numpy as np
from PIL import Image

from tf_segunravel.fixation_files import FixationWriter, ImageFixations
from tf_segunravel.unravel import FixationSettings

L = keras.layers


def test_compute_writes_nothing_and_write_gives_the_files(tmp_path):
    keras.utils.set_random_seed(0)
    inp = keras.Input((None, None, 3))
    x = L.Conv2D(4, 3, padding="same", activation="relu")(inp)
    model = keras.Model(inp, L.Conv2D(3, 1)(x))
    image = np.random.default_rng(0).integers(0, 255, (20, 24, 3)).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "photo.png")
    out = tmp_path / "out"
    writer = FixationWriter(
        model, str(out), FixationSettings(sigma=2.0), class_names=["a", "b", "c"]
    )

    fixations = writer.compute(str(tmp_path / "photo.png"))
    assert isinstance(fixations, ImageFixations)
    assert not out.exists()  # computing writes nothing
    assert fixations.labels.shape == (20, 24) and fixations.maps.shape == (
        len(fixations.classes),
        20,
        24,
    )
    assert {entry["name"] for entry in fixations.statistics.values()} <= {"a", "b", "c"}

    summary = writer.write(fixations)
    assert sorted(os.listdir(out)) == ["photo.json", "photo.npz", "photo.png"]
    assert json.loads((out / "photo.json").read_text()) == json.loads(json.dumps(summary))
    arrays = np.load(out / "photo.npz")
    np.testing.assert_array_equal(arrays["points"], fixations.points)
    np.testing.assert_array_equal(arrays["labels"], fixations.labels)
    # process() is compute() then write(): the same files again.
    again = FixationWriter(model, str(tmp_path / "again"), FixationSettings(sigma=2.0))
    again.process(str(tmp_path / "photo.png"))
    np.testing.assert_array_equal(np.load(tmp_path / "again" / "photo.npz")["maps"], arrays["maps"])


def test_the_maps_are_fixation_maps_of_the_engines_result(tmp_path):
    """compute() draws the maps from the inlier mask it also counts with; they must be what
    `fixation_maps` draws from the engine's result (outlier removal on)."""
    from tf_segunravel.unravel import SegUnravel, fixation_maps

    keras.utils.set_random_seed(0)
    inp = keras.Input((None, None, 3))
    x = L.Conv2D(4, 3, padding="same", activation="relu")(inp)
    model = keras.Model(inp, L.Conv2D(3, 1)(x))
    image = np.random.default_rng(2).integers(0, 255, (40, 36, 3)).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "photo.png")
    settings = FixationSettings(sigma=2.0, outlier_radius=0.05)
    fixations = FixationWriter(model, str(tmp_path / "out"), settings).compute(
        str(tmp_path / "photo.png")
    )
    result = SegUnravel(model, settings)(image[None])
    want = fixation_maps(result, 40, 36, settings).numpy()[0][fixations.classes]
    np.testing.assert_allclose(fixations.maps, want, atol=1e-6)
    dropped = sum(entry["outliers_dropped"] for entry in fixations.statistics.values())
    assert dropped > 0  # the case exercises the outlier removal
