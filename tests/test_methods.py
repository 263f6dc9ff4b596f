"""The table of explanation methods (`tf_segunravel/methods.py`): one contract over every
entry, on a small random network with fixed regions, and registration. Entries whose extra
is missing are skipped one by one."""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_segunravel import baselines, methods
from tf_segunravel.errors import InputError
from tf_segunravel.unravel import FixationSettings
from tf_segunravel.unravel.graph import ModelGraph

L = keras.layers
CLASSES = [2, 0]  # not in id order: the maps must follow the order asked for
# A blur narrower than the 14 x 11 images (the default 20 px is refused there).
OPTIONS = methods.MethodOptions(FixationSettings(sigma=3.0))


@pytest.fixture(scope="module")
def graph():
    keras.utils.set_random_seed(3)
    images = keras.Input((None, None, 3))
    x = L.Conv2D(6, 3, padding="same", activation="relu", name="features")(images)
    return ModelGraph(keras.Model(images, L.Conv2D(3, 1, name="scores")(x)))


@pytest.fixture(scope="module")
def batch():
    return np.random.default_rng(0).integers(0, 256, (2, 14, 11, 3)).astype(np.uint8)


def regions_for(batch):
    """Fixed regions (a stride-1 network: grid = pixels): class 0 left, 2 right, 1 a band."""
    labels = np.zeros(batch.shape[:3], np.int64)
    labels[:, :, 6:] = 2
    labels[:, 5:8, :] = 1
    return labels, labels


def entry(name):
    method = methods.get(name)
    if not method.available():
        pytest.skip(f"{name} needs the {method.extra} extra")
    return method


@pytest.mark.parametrize("name", methods.names())
def test_every_method_keeps_the_contract(graph, batch, name):
    method = entry(name)
    regions = regions_for(batch)
    options = OPTIONS
    tf.random.set_seed(21)
    np.random.seed(11)  # noqa: NPY002 (the legacy stream some libraries draw from)
    expected = (tf.random.uniform([]).numpy(), np.random.random())  # noqa: NPY002
    tf.random.set_seed(21)
    np.random.seed(11)  # noqa: NPY002
    maps = method.maps(graph, batch, CLASSES, regions, 5, options)
    # The caller's TensorFlow and numpy random streams are where they were.
    assert (tf.random.uniform([]).numpy(), np.random.random()) == expected  # noqa: NPY002
    # Shape, type, range, each map scaled to [0, 1].
    assert maps.shape == (2, len(CLASSES), 14, 11) and maps.dtype == np.float32
    assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    # Deterministic under a seed; a batch of 2 is two batches of 1; the class order is kept.
    np.testing.assert_array_equal(maps, method.maps(graph, batch, CLASSES, regions, 5, options))
    for index in range(2):
        one = (regions[0][index : index + 1], regions[1][index : index + 1])
        single = method.maps(graph, batch[index : index + 1], CLASSES, one, 5, options)
        np.testing.assert_array_equal(single[0], maps[index])
    swapped = method.maps(graph, batch, CLASSES[::-1], regions, 5, options)
    np.testing.assert_array_equal(swapped, maps[:, ::-1])


@pytest.mark.parametrize("name", methods.names())
def test_a_compiled_unravel_is_not_traced_again(graph, batch, name):
    method = entry(name)
    regions = regions_for(batch)
    method.maps(graph, batch, CLASSES, regions, options=OPTIONS)
    compiled = [getattr(value, "_traced", value) for value in graph.engines.values()]
    before = [function.experimental_get_tracing_count() for function in compiled]
    method.maps(graph, batch, CLASSES, regions, seed=1, options=OPTIONS)
    after = [function.experimental_get_tracing_count() for function in compiled]
    assert after == before


def test_the_table_lists_the_fixations_and_every_baseline():
    assert methods.names()[:2] == ["fixations", "fixations_contrastive"]
    assert methods.names(fixations=True)[:2] == ["fixations", "fixations_contrastive"]
    assert all(name.startswith("fixations") for name in methods.names(fixations=True))
    fixations = methods.names(fixations=True)
    assert set(methods.names(fixations=False)) == set(methods.names()) - set(fixations)
    assert set(baselines.METHODS) <= set(methods.names())
    assert methods.get("smoothgrad").cost.forward == baselines.SMOOTH_SAMPLES
    assert not methods.get("random").reads_weights and methods.get("fixations").reads_weights
    with pytest.raises(InputError, match=r"compare: unknown \['lime'\]"):
        methods.check(["fixations", "lime"], flag="compare")


def test_without_the_extra_only_those_methods_are_refused(monkeypatch):
    monkeypatch.setattr(baselines, "available", lambda: False)
    with pytest.raises(InputError, match=r"methods: saliency needs the baselines"):
        methods.check(["fixations", "gradcam", "saliency", "gradient_x_input"])
    assert methods.check(["fixations", "random"]) == ["fixations", "random"]


def test_registration_adds_refuses_replaces_and_undoes(graph, batch):
    def flat(graph, images, classes, regions=None, seed=0, options=None):
        return np.ones((len(images), len(classes), *np.shape(images)[1:3]), np.float32)

    mine = methods.Method("flat", flat, reads_weights=False)
    with methods.register_method(mine):
        assert methods.names()[-1] == "flat" and methods.check(["flat"]) == ["flat"]
        assert methods.get("flat").maps(graph, batch, [0]).shape == (2, 1, 14, 11)
        with pytest.raises(ValueError, match="'flat' exists; pass replace=True"):
            methods.register_method(mine)
    assert "flat" not in methods.names()
    original = methods.get("random")
    other = dataclasses.replace(original, maps=flat)
    registration = methods.register_method(other, replace=True)
    assert methods.get("random") is other
    registration.remove()
    assert methods.get("random") is original
    registration.remove()  # a second undo changes nothing
    assert methods.get("random") is original


def test_a_graph_and_its_engines_are_freed_with_it(batch):
    """The fixation entries keep their compiled engine on the graph, so a graph made for a
    randomised model (one per layer in the randomisation check) goes when it is dropped."""
    import gc
    import weakref

    images = keras.Input((None, None, 3))
    model = keras.Model(images, L.Conv2D(3, 1)(L.Conv2D(4, 3, padding="same")(images)))
    graph = ModelGraph(model)
    methods.get("fixations").maps(graph, batch, [0], regions_for(batch), options=OPTIONS)
    assert len(graph.engines) == 2  # the engine and its compiled heat maps
    dropped = weakref.ref(graph)
    del graph
    gc.collect()
    assert dropped() is None


def test_variants_of_the_heat_maps_share_one_engine(batch):
    """fixations, fixations_density and fixations_stride_kernel differ only in their heat maps:
    one compiled unravel serves them; K = 3 needs its own."""
    from tf_segunravel.unravel.tracer import SegUnravel

    images = keras.Input((None, None, 3))
    graph = ModelGraph(keras.Model(images, L.Conv2D(3, 1)(L.Conv2D(4, 3, padding="same")(images))))
    for name in ("fixations", "fixations_density", "fixations_stride_kernel"):
        methods.get(name).maps(graph, batch, [0], regions_for(batch), options=OPTIONS)
    engines = [value for value in graph.engines.values() if isinstance(value, SegUnravel)]
    assert len(engines) == 1
    methods.get("fixations_k3").maps(graph, batch, [0], regions_for(batch), options=OPTIONS)
    engines = [value for value in graph.engines.values() if isinstance(value, SegUnravel)]
    assert sorted(engine.settings.k for engine in engines) == [1, 3]


def test_the_writer_and_the_location_experiment_share_the_graphs_engines(tmp_path, batch):
    """One graph handed to the fixation writer (without the flow), the location experiment
    and the methods table traces one engine per setting (the main job hands its baseline's
    graph to all three); the flow needs an engine of its own."""
    from tf_segunravel.experiments.location import fixation_location
    from tf_segunravel.fixation_files import KerasFixations
    from tf_segunravel.unravel.settings import RUNNER_UP
    from tf_segunravel.unravel.tracer import SegUnravel

    images = keras.Input((None, None, 3))
    graph = ModelGraph(keras.Model(images, L.Conv2D(3, 1)(L.Conv2D(4, 3, padding="same")(images))))
    plain, contrastive = (
        FixationSettings(sigma=3.0),
        FixationSettings(sigma=3.0, contrast=RUNNER_UP),
    )
    writer = KerasFixations(graph, contrastive)
    assert writer.engine is methods.engine_for(graph, contrastive)
    assert KerasFixations(graph, plain, flow=True).engine is not methods.engine_for(graph, plain)
    labels = np.zeros((2, 14, 11, 1), np.uint8)
    examples = tf.data.Dataset.from_tensor_slices({"image": batch, "segmentation": labels})
    rows = fixation_location(graph, examples, 3, settings=plain, max_images=2, pad_size=16)
    assert sum(row["images"] for row in rows) >= 2
    methods.get("fixations").maps(graph, batch, [0], regions_for(batch), options=OPTIONS)
    engines = [value for value in graph.engines.values() if isinstance(value, SegUnravel)]
    assert len(engines) == 2  # plain (location, then the table) and contrastive (the writer)
