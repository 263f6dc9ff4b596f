"""One loader of models (`tf_segunravel/loading.py`): every path the tools accept, and the
SavedModel-or-Keras choice made once."""

import keras
import numpy as np
import pytest
from PIL import Image

from tests.helpers import last_line, run_tool
from tf_segunravel.errors import InputError
from tf_segunravel.export import export_saved_model
from tf_segunravel.fixation_files import FixationWriter
from tf_segunravel.loading import LoadedModel, as_loaded, load_model
from tf_segunravel.unravel import SegUnravel
from tf_segunravel.unravel.graph import ModelGraph
from tf_segunravel.unravel.settings import FixationSettings, InputSettings

L = keras.layers


def binary_net():
    images = keras.Input((None, None, 3))
    x = L.Conv2D(4, 3, padding="same", activation="relu")(images)
    return keras.Model(images, L.Activation("sigmoid")(L.Conv2D(1, 1, name="logit")(x)))


def image(seed=0):
    return np.random.default_rng(seed).integers(0, 256, (1, 12, 10, 3)).astype(np.uint8)


def test_a_keras_file_and_a_model_dir_load_as_graphs(tmp_path):
    model = binary_net()
    model.save(tmp_path / "net.keras")
    (tmp_path / "run").mkdir()
    model.save(tmp_path / "run" / "model.keras")  # a training dir's final model
    settings = InputSettings(scale=1 / 255)
    for path in (tmp_path / "net.keras", tmp_path / "run"):
        loaded = load_model(path, input=settings)
        assert loaded.saved_model is None and isinstance(loaded.graph, ModelGraph)
        assert loaded.graph.input_settings == settings
        assert loaded.num_classes == 2 and loaded.class_names == ["background", "foreground"]
        assert loaded.keras("this") is loaded.graph
        got = SegUnravel(loaded.graph)(image())
        want = SegUnravel(model, input=settings)(image())
        np.testing.assert_array_equal(got.points, want.points)


def test_bad_paths_and_outputs_are_named(tmp_path):
    with pytest.raises(InputError, match=r"missing\.keras: no such file"):
        load_model(tmp_path / "missing.keras")
    with pytest.raises(InputError, match=r"neither model\.keras nor a checkpoint"):
        load_model(tmp_path)
    binary_net().save(tmp_path / "net.keras")
    with pytest.raises(ValueError, match="output='nope'"):
        load_model(tmp_path / "net.keras", output="nope")


def test_as_loaded_takes_what_the_writer_is_given():
    model = binary_net()
    loaded = as_loaded(model)
    assert isinstance(loaded, LoadedModel) and loaded.graph.model is model
    assert as_loaded(loaded) is loaded
    graph = ModelGraph(model)
    assert as_loaded(graph).graph is graph


@pytest.mark.slow
def test_a_saved_model_loads_as_its_reader_and_is_refused_where_keras_is_needed(tmp_path):
    model = binary_net()
    # The image below is 12 x 10: the SavedModel's own maps need a blur narrower than it
    # (the default 20 px is refused, by the signature and by the writer).
    export_saved_model(model, str(tmp_path / "default_blur"))
    Image.fromarray(image()[0]).save(tmp_path / "a.png")
    writer = FixationWriter(str(tmp_path / "default_blur"), str(tmp_path / "refused"))
    with pytest.raises(InputError, match=r"exported with sigma=20 px, .* wider than this 12 x 10"):
        writer.compute(str(tmp_path / "a.png"))
    export_saved_model(model, str(tmp_path / "saved"), FixationSettings(sigma=3.0))
    loaded = load_model(tmp_path / "saved")
    assert loaded.graph is None and loaded.saved_model is not None
    assert loaded.num_classes == 2 and loaded.class_names == ["background", "foreground"]
    with pytest.raises(InputError, match=r"the flow: needs a Keras model .* not the SavedModel"):
        loaded.keras("the flow")
    # The writer reads either through the same object: the same points.
    keras_file = tmp_path / "net.keras"
    model.save(keras_file)
    points = []
    settings = FixationSettings(sigma=3.0)
    for source in (loaded, load_model(keras_file), str(tmp_path / "saved")):
        writer = FixationWriter(source, str(tmp_path / "out"), settings)
        points.append(writer.compute(str(tmp_path / "a.png")).points)
    np.testing.assert_array_equal(points[0], points[1])
    np.testing.assert_array_equal(points[0], points[2])
    # A tool that needs a Keras model says so in one line.
    proc = run_tool(
        "experiments",
        "--experiment=fixation_location",
        f"--model={tmp_path / 'saved'}",
        "--dataset=segunravel_shapes",
        f"--output_dir={tmp_path / 'exp'}",
    )
    assert proc.returncode == 1
    assert "needs a Keras model (a .keras file or a training dir), not the SavedModel" in (
        last_line(proc.stderr)
    )
