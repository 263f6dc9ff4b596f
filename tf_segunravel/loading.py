"""One loader of models: every path the tools accept, read once.

    from tf_segunravel.loading import load_model

    loaded = load_model("runs/shapes_base", input=InputSettings(scale=1 / 255))
    loaded.graph          # a Keras model as the unravel reads it (None for a SavedModel)
    loaded.saved_model    # an exported SavedModel's reader (None for a Keras model)

A path is a training model dir (its `model.keras`, else its latest checkpoint), a checkpoint
prefix, a `.keras` file, an exported SavedModel directory, an `.onnx` file (imported as a
Keras model and checked against onnxruntime: `importers/onnx_model.py`, the `onnx` extra) or
a `.tflite` file (checked against LiteRT: `importers/tflite_model.py`, the `tflite` extra).
Which of these it is is decided here and nowhere else: everything downstream (the fixation
files, the tools) reads `LoadedModel`.
"""

import dataclasses
import os
import typing

from tf_segunravel.errors import InputError
from tf_segunravel.export import SavedModelReader, is_saved_model
from tf_segunravel.training.checkpoints import load_network
from tf_segunravel.unravel.graph import ModelGraph, as_graph
from tf_segunravel.unravel.settings import InputSettings


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A model as the tools read it: exactly one of `graph` (a Keras model, with its input
    settings and score output) and `saved_model` (an exported SavedModel, whose settings
    were fixed at export) is set."""

    path: str | None
    graph: ModelGraph | None = None
    saved_model: SavedModelReader | None = None

    @property
    def num_classes(self) -> int:
        if self.graph is not None:
            return int(self.graph.num_classes)
        assert self.saved_model is not None
        return self.saved_model.num_classes

    @property
    def class_names(self) -> list[str] | None:
        """The names the model itself gives (a binary head's two, or those recorded at
        export), else None."""
        if self.graph is not None:
            return list(self.graph.class_names) if self.graph.class_names else None
        assert self.saved_model is not None
        return self.saved_model.class_names

    def keras(self, needed_for: str) -> ModelGraph:
        """The Keras model's graph, or an InputError saying that `needed_for` (a parameter,
        a flag or a tool) needs one."""
        if self.graph is None:
            raise InputError(
                f"{needed_for}: needs a Keras model (a .keras file or a training dir), not the "
                f"SavedModel {self.path}"
            )
        return self.graph


ONNX_SUFFIX = ".onnx"
TFLITE_SUFFIX = ".tflite"


def load_model(
    path: str | os.PathLike,
    *,
    input: InputSettings | None = None,
    output: str | None = None,
    input_size: typing.Sequence[int] | None = None,
) -> LoadedModel:
    """The model at `path` (see the module docstring). `input` and `output` say how a Keras
    or ONNX model is fed and which output holds the scores; a SavedModel has its own, fixed
    at export. `input_size` (height, width) is the size an ONNX model with a dynamic height
    and width is built for. A model the unravel's graph cannot read is a ValueError naming
    what is wrong; a missing or unreadable file an InputError naming it."""
    path = os.fspath(path)
    if os.path.isdir(path) and is_saved_model(path):
        return LoadedModel(path, saved_model=SavedModelReader(path))
    if path.lower().endswith(ONNX_SUFFIX):
        network = import_onnx_model(path, input_size)
    elif path.lower().endswith(TFLITE_SUFFIX):
        network = import_tflite_model(path, input_size)
    else:
        network = load_network(path)
    return LoadedModel(path, graph=ModelGraph(network, input=input, output=output, strict=False))


def as_loaded(model: typing.Any) -> LoadedModel:
    """`model` as a `LoadedModel`: one as it is, a Keras model or `ModelGraph` wrapped, a
    path loaded with the default settings."""
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, (str, os.PathLike)):
        return load_model(model)
    return LoadedModel(None, graph=as_graph(model, strict=False))


def import_onnx_model(path: str, input_size: typing.Sequence[int] | None) -> typing.Any:
    """The ONNX file at `path` as a checked Keras model (`importers.onnx_model.import_onnx`),
    or an InputError naming the `onnx` extra when it is not installed."""
    try:
        from tf_segunravel.importers.onnx_model import import_onnx
    except ImportError as e:  # onnx or onnxruntime missing
        raise InputError(
            f"{path}: ONNX models need the onnx extra: pip install 'tf-segunravel[onnx]' ({e})"
        ) from e
    return import_onnx(path, input_size=input_size)


def import_tflite_model(path: str, input_size: typing.Sequence[int] | None) -> typing.Any:
    """The TFLite file at `path` as a checked Keras model (`importers.tflite_model`), or an
    InputError naming the `tflite` extra when LiteRT is not installed. A TFLite model has one
    input size, so `input_size` must be that size or None."""
    try:
        from tf_segunravel.importers.tflite_model import import_tflite
    except ImportError as e:  # ai-edge-litert missing
        raise InputError(
            f"{path}: TFLite models need the tflite extra: pip install 'tf-segunravel[tflite]' "
            f"({e})"
        ) from e
    network = import_tflite(path)
    size = list(network.inputs[0].shape[1:3])
    if input_size is not None and [int(v) for v in input_size] != size:
        raise InputError(
            f"{path}: a TFLite model has one input size, {size[0]}x{size[1]}; "
            f"--input_size={','.join(str(v) for v in input_size)} differs"
        )
    return network
