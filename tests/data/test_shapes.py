"""segunravel_shapes: builds offline, and its labels carry exactly the evidence we designed."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tf_segunravel.data import shapes
from tf_segunravel.data.labels import IGNORE_LABEL

BOAT, CAR = shapes.CLASS_NAMES.index("boat"), shapes.CLASS_NAMES.index("car")


@pytest.mark.slow
def test_loads_with_the_documented_splits_and_metadata(shapes_data_dir):
    builder = tfds.builder("segunravel_shapes", data_dir=shapes_data_dir)
    assert builder.info.splits["train"].num_examples == 2000
    assert builder.info.splits["val"].num_examples == 500
    meta = builder.info.metadata
    assert meta["class_names"] == list(shapes.CLASS_NAMES)
    assert dict(zip(meta["class_names"], meta["class_kinds"], strict=True))["car"] == "contextual"
    example = next(iter(tfds.load("segunravel_shapes", split="val", data_dir=shapes_data_dir)))
    assert example["image"].dtype == "uint8" and example["image"].shape == (129, 129, 3)
    assert example["segmentation"].shape == (129, 129, 1)


def test_stored_labels_are_the_generator_truth(shapes_data_dir):
    stored = tfds.load("segunravel_shapes", split="val[:40]", data_dir=shapes_data_dir)
    for example in tfds.as_numpy(stored):
        index = int(example["filename"].decode().split("_")[1])
        image, labels, truth = shapes.generate_example("val", index)
        np.testing.assert_array_equal(example["segmentation"][..., 0], labels)
        np.testing.assert_array_equal(example["image"], image)
        for obj in truth["objects"]:
            inside = labels[obj["mask"]]
            assert set(np.unique(inside)) <= {obj["class"], IGNORE_LABEL}
            assert (inside == obj["class"]).mean() > 0.4
            if obj["class"] in (BOAT, CAR):
                assert obj["class"] == shapes.HULL_CLASS_BY_SCENE[truth["scene"]]


def test_void_band_on_every_object_boundary():
    _, labels, truth = next(
        shapes.generate_example("train", i)
        for i in range(100)
        if shapes.generate_example("train", i)[2]["objects"]
    )
    for obj in truth["objects"]:
        band = shapes.boundary_band(obj["mask"])
        assert (labels[band] == IGNORE_LABEL).all()
    assert set(np.unique(labels)) <= {0, *range(1, 6), IGNORE_LABEL}


def test_contextual_classes_look_identical_without_context():
    """Boat and car object pixels follow one law; only the scene differs."""
    pixels = {BOAT: [], CAR: []}
    areas = {BOAT: [], CAR: []}
    scenes = {BOAT: set(), CAR: set()}
    for index in range(600):
        image, _, truth = shapes.generate_example("train", index)
        for obj in truth["objects"]:
            if obj["class"] in pixels:
                pixels[obj["class"]].append(image[obj["mask"]].astype(float))
                areas[obj["class"]].append(obj["mask"].sum())
                scenes[obj["class"]].add(truth["scene"])
    boat, car = np.concatenate(pixels[BOAT]), np.concatenate(pixels[CAR])
    assert len(areas[BOAT]) > 50 and len(areas[CAR]) > 50
    np.testing.assert_allclose(boat.mean(0), car.mean(0), atol=3.0)
    np.testing.assert_allclose(boat.std(0), car.std(0), rtol=0.1)
    # Grey: the channels agree, so colour cannot tell boat from car either.
    assert np.ptp(boat.mean(0)) < 1.0 and np.ptp(car.mean(0)) < 1.0
    assert abs(np.mean(areas[BOAT]) - np.mean(areas[CAR])) < 0.1 * np.mean(areas[BOAT])
    assert scenes == {BOAT: {"water"}, CAR: {"road"}}


def test_generation_is_deterministic():
    a = shapes.generate_example("train", 7)
    b = shapes.generate_example("train", 7)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], shapes.generate_example("train", 8)[0])
