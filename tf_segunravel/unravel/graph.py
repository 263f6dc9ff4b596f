"""Activation bookkeeping: the flattened layer graph of a Keras model and one recorded pass.

`flatten_graph` turns a functional (or Sequential) model, nested models included, into a
list of steps in topological order, each naming its layer and the ids of the tensors it reads
and writes. `record` runs those steps once on a batch and keeps every tensor: the input of
every layer between the image and the scores, which is all segmentation unravel needs. No
gradients are involved anywhere.
"""

import dataclasses
import typing

import keras

if typing.TYPE_CHECKING:
    from tf_segunravel.unravel.rules import LayerKind


@dataclasses.dataclass(frozen=True)
class Step:
    """One layer or op application: `layer(inputs) -> outputs`, tensors named by integer ids.

    `layer` is a Keras layer or a Keras op (`x + 3.0` in a functional model is an op node);
    `inputs` are the tensor arguments only, in call order. `arguments` and `keras_ids` replay
    the call exactly, constants and keyword arguments included.
    """

    layer: object
    inputs: tuple
    outputs: tuple
    arguments: object = None
    keras_ids: tuple = ()


def _functional(model):
    if isinstance(model, keras.Sequential):
        model = model._functional  # Sequential models keep their graph here once built
    return model if hasattr(model, "_nodes_by_depth") else None


def flatten_graph(model):
    """(steps, input id, output ids) of `model` with nested models expanded in place."""
    inner = _functional(model)
    if inner is None:
        raise ValueError(
            f"unravel needs a functional or Sequential Keras model, got {type(model).__name__}"
        )
    if len(inner.inputs) != 1:
        raise ValueError(f"unravel needs a model with one image input, got {len(inner.inputs)}")
    alias = {}
    steps = []
    _flatten_into(inner, alias, steps)

    def resolve(tensor):
        return alias.get(id(tensor), id(tensor))

    return steps, resolve(inner.inputs[0]), tuple(resolve(t) for t in inner.outputs)


def _flatten_into(model, alias, steps):
    def resolve(tensor):
        return alias.get(id(tensor), id(tensor))

    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            if node.is_input or node.operation is None:
                continue
            inputs = tuple(resolve(t) for t in node.input_tensors)
            nested = _functional(node.operation)
            if nested is not None:
                for inner_input, outer in zip(nested.inputs, inputs, strict=True):
                    alias[id(inner_input)] = outer
                _flatten_into(nested, alias, steps)
                for outer, inner_output in zip(node.outputs, nested.outputs, strict=True):
                    alias[id(outer)] = resolve(inner_output)
                continue
            outputs = tuple(id(t) for t in node.outputs)
            keras_ids = tuple(id(t) for t in node.input_tensors)
            steps.append(Step(node.operation, inputs, outputs, node.arguments, keras_ids))


def record(steps, input_id, images):
    """Runs the steps on `images` (inference mode); returns {tensor id: value}.

    Each node is called as Keras' own functional model calls it (`node.arguments` filled in
    with the recorded values, `training=False` where the layer takes it).
    """
    values = {input_id: images}
    for step in steps:
        filled = {k: values[i] for k, i in zip(step.keras_ids, step.inputs, strict=True)}
        args, kwargs = step.arguments.fill_in(filled)
        if "training" in getattr(step.layer, "_call_context_args", ()):
            kwargs["training"] = False
        result = step.layer(*args, **kwargs)
        results = result if isinstance(result, (list, tuple)) else [result]
        for key, value in zip(step.outputs, results, strict=True):
            values[key] = value
    return values


class ModelGraph:
    """A Keras model as the unravel sees it: its flattened steps, each step's `LayerKind`
    (the one table in `unravel/rules`), the image input and the score output. The engine
    (`SegUnravel`) and `ScoreMap` share it, so they flatten, look up and record alike.

    Args:
      model: a functional or Sequential Keras model with one image input and one output.
      strict: every layer must have a kind (the engine); with False (`ScoreMap`, which only
        needs positions) a layer without one gets None and is treated as an undeclared
        geometry: fine while it keeps the spatial size, refused where it changes it.
    """

    def __init__(self, model, *, strict: bool = True):
        from tf_segunravel.unravel.rules import UntraceableLayerError, kind_for

        self.model = model
        self.steps, self.input_id, outputs = flatten_graph(model)
        if len(outputs) != 1:
            raise ValueError(f"unravel needs a model with one score output, got {len(outputs)}")
        self.output_id = outputs[0]
        self.kinds: dict[int, LayerKind | None] = {}
        for step in self.steps:
            try:
                self.kinds[id(step)] = kind_for(step.layer, len(step.inputs))
            except UntraceableLayerError:
                if strict:
                    raise
                self.kinds[id(step)] = None
        self.score_step = next(s for s in self.steps if self.output_id in s.outputs)

    def kind(self, step: Step) -> "LayerKind | None":
        """The step's `LayerKind` (None only in a non-strict graph)."""
        return self.kinds[id(step)]

    def record(self, images):
        """One forward pass (inference mode): {tensor id: value} for every tensor."""
        return record(self.steps, self.input_id, images)
