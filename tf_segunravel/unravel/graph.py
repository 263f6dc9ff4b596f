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
import tensorflow as tf

if typing.TYPE_CHECKING:
    from tf_segunravel.unravel.binary_head import BinarySplit
    from tf_segunravel.unravel.rules import LayerKind
    from tf_segunravel.unravel.settings import InputSettings


# A recorded forward pass: {tensor id: its value}, the images as given under IMAGES.
Values: typing.TypeAlias = dict[int, tf.Tensor]


@dataclasses.dataclass(frozen=True)
class Step:
    """One layer or op application: `layer(inputs) -> outputs`, tensors named by integer ids.

    `layer` is a Keras layer or a Keras op (`x + 3.0` in a functional model is an op node);
    `inputs` are the tensor arguments only, in call order. `arguments` and `keras_ids` replay
    the call exactly, constants and keyword arguments included.
    """

    layer: typing.Any  # a keras.Layer or a keras.Operation
    inputs: tuple
    outputs: tuple
    arguments: typing.Any = None  # Keras' own record of the call (its Node's arguments)
    keras_ids: tuple = ()
    shapes: tuple = ()  # the outputs' static shapes


def _functional(model):
    if isinstance(model, keras.Sequential):
        model = model._functional  # Sequential models keep their graph here once built
    return model if hasattr(model, "_nodes_by_depth") else None


def flatten_graph(model: keras.Model) -> tuple[list[Step], int, tuple[int, ...]]:
    """(steps, input id, output ids) of `model` with nested models expanded in place."""
    inner = _functional(model)
    if inner is None:
        raise ValueError(
            f"unravel needs a functional or Sequential Keras model, got {type(model).__name__}"
        )
    if len(inner.inputs) != 1:
        raise ValueError(f"unravel needs a model with one image input, got {len(inner.inputs)}")
    alias: dict[int, int] = {}
    steps: list[Step] = []
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
            shapes = tuple(tuple(t.shape) for t in node.outputs)
            steps.append(Step(node.operation, inputs, outputs, node.arguments, keras_ids, shapes))


def record(steps: list[Step], input_id: int, images: tf.Tensor) -> Values:
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


# The final activations the unravel steps over: it starts from the scores before them.
_FINAL_ACTIVATIONS = ("sigmoid", "softmax")
# Where a recorded pass keeps the images as given (before resizing and the input settings).
IMAGES = -1
BINARY_CLASS_NAMES = ("background", "foreground")


def _final_activation(layer):
    """ "sigmoid" or "softmax" where `layer` applies one (an `Activation`, a `Softmax`, or a
    layer's own `activation`), else None."""
    if isinstance(layer, keras.layers.Softmax):
        return "softmax"
    activation = getattr(layer, "activation", None)
    for name in _FINAL_ACTIVATIONS:
        if activation is keras.activations.get(name):
            return name
    return None


# The layers that weigh input channels: a final sigmoid or softmax of their own is stepped
# over by recomputing their output without it (`_linear_part`).
WEIGHTED_LAYERS = (
    keras.layers.Conv2D,
    keras.layers.Conv2DTranspose,
    keras.layers.DepthwiseConv2D,
    keras.layers.SeparableConv2D,
    keras.layers.Dense,
)


def _linear_part(layer, x):
    """A weighted layer's output before its activation: Keras' own ops, as its `call` runs
    them up to the activation (the layer itself is left untouched)."""
    ops = keras.ops
    window = dict(  # the window options the three convolution ops share
        strides=getattr(layer, "strides", None),
        padding=getattr(layer, "padding", None),
        dilation_rate=getattr(layer, "dilation_rate", None),
        data_format=getattr(layer, "data_format", None),
    )
    if isinstance(layer, keras.layers.Dense):
        y = ops.matmul(x, layer.kernel)
    elif isinstance(layer, keras.layers.Conv2DTranspose):
        window["strides"] = list(layer.strides)  # as Keras' own call passes them
        y = ops.conv_transpose(x, layer.kernel, output_padding=layer.output_padding, **window)
    elif isinstance(layer, keras.layers.DepthwiseConv2D):
        y = ops.depthwise_conv(x, layer.kernel, **window)
    elif isinstance(layer, keras.layers.SeparableConv2D):
        y = ops.separable_conv(x, layer.depthwise_kernel, layer.pointwise_kernel, **window)
    else:
        y = layer.convolution_op(x, layer.kernel)
    return y + layer.bias if layer.use_bias else y


class ModelGraph:
    """A Keras model as the unravel sees it: its flattened steps, each step's `LayerKind`
    (the one table in `unravel/rules`), the image input and the score output, and how the
    model is fed and read. The engine (`SegUnravel`) and `ScoreMap` share it, so they
    flatten, look up, feed and record alike.

    Args:
      model: a functional or Sequential Keras model with one image input.
      strict: every layer must have a kind (the engine); with False (`ScoreMap`, which only
        needs positions) a layer without one gets None and is treated as an undeclared
        geometry: fine while it keeps the spatial size, refused where it changes it.
      input: an `InputSettings`, how RGB 0..255 pixels become the model's input.
      output: the score output of a model with several, by output name or by the name of
        any layer inside the model (whose output then holds the scores).

    How the scores are read: a final sigmoid or softmax (an `Activation` or `Softmax` layer,
    or the score layer's own activation) is stepped over, so the unravel starts from the
    logits before it. A score map with one channel (a sigmoid head) is a two-class problem,
    background and foreground split at logit 0: its scores become (-z / 2, z / 2), whose
    softmax is (1 - sigmoid(z), sigmoid(z)), and its last channel-mixing layer's kernel is
    split into the two classes' (`binary_head.py`; `split`). A model built for a fixed input
    size gets images of any size resized to it, and everything it returns is mapped back
    onto the images' own pixels.
    """

    def __init__(
        self,
        model: keras.Model,
        *,
        strict: bool = True,
        input: "InputSettings | None" = None,
        output: str | None = None,
    ) -> None:
        from tf_segunravel.unravel.binary_head import find_split
        from tf_segunravel.unravel.rules import UntraceableLayerError, kind_for
        from tf_segunravel.unravel.settings import InputSettings

        self.model = model
        self.input_settings = input or InputSettings()
        self.output_name = output
        steps, self.input_id, outputs = flatten_graph(model)
        score_id = self._pick_output(steps, outputs, output)
        # Final activations are stepped over: their steps leave the graph.
        self.stepped_over: list[str] = []
        self.activation_inside = False  # the score layer's own activation is stepped over
        producers = {o: step for step in steps for o in step.outputs}
        while score_id in producers:
            step = producers[score_id]
            activation = _final_activation(step.layer)
            if activation is None:
                break
            if isinstance(step.layer, (keras.layers.Activation, keras.layers.Softmax)):
                self.stepped_over.append(step.layer.name)
                score_id = step.inputs[0]
                continue
            if not isinstance(step.layer, WEIGHTED_LAYERS):
                raise ValueError(
                    f"the score layer {step.layer.name!r} ({type(step.layer).__name__}) ends "
                    f"in a {activation}; the unravel starts from the logits before it, which "
                    f"only a convolution's or Dense's own activation can be stepped over for"
                )
            self.stepped_over.append(f"{step.layer.name}.activation")
            self.activation_inside = True
            break
        self.output_id = score_id
        self.steps = _ancestors(steps, score_id)
        if not self.steps:
            raise ValueError("the score output is the image input itself")
        self.score_step = self.steps[-1]  # every kept step is an ancestor of the scores
        shape = self.score_step.shapes[self.score_step.outputs.index(score_id)]
        if len(shape) not in (2, 4):
            raise ValueError(
                f"output {self._output_label()} is not a score map: it needs shape "
                f"[B, h, w, classes] (or [B, classes]), got {tuple(shape)}"
            )
        channels = shape[-1]
        self.binary = channels == 1
        self.num_classes = 2 if self.binary else channels
        self.class_names = BINARY_CLASS_NAMES if self.binary else None
        input_shape = tuple(model.inputs[0].shape[1:3]) if hasattr(model, "inputs") else ()
        self.input_size = input_shape if len(input_shape) == 2 and None not in input_shape else None
        self.kinds: dict[int, LayerKind | None] = {}
        for step in self.steps:
            try:
                kind = kind_for(step.layer, len(step.inputs))
                _check_call(step, kind)
                self.kinds[id(step)] = kind
            except UntraceableLayerError:
                if strict:
                    raise
                self.kinds[id(step)] = None
        # A one-channel head's split (binary_head.py); only the walk needs it, so a
        # non-strict graph keeps the refusal for `require_kinds`.
        self.split: BinarySplit | None = None
        self._split_error: ValueError | None = None
        if self.binary:
            try:
                self.split = find_split(
                    producers,  # every step's, made above for the final activation
                    self.output_id,
                    self.kind,
                    self.activation_inside,
                )
            except UntraceableLayerError as error:
                if strict:
                    raise
                self._split_error = error
        # Engines built on this graph by their settings (`methods.engine_for`): they live
        # as long as the graph does.
        self.engines: dict = {}
        # Compiled explanation baselines by (method, layer) (`baselines.compiled_gradcam`),
        # kept the same way: each is traced once per graph.
        self.baselines: dict = {}
        # The step whose rule reads a replaced kernel (a binary split's, or a contrastive
        # margin's), and the steps from it to the scores, whose points carry class channels.
        self.kernel_step = self.split.step if self.split else self.score_step
        self.head_steps = (
            (self.kernel_step, *self.split.through) if self.split else (self.score_step,)
        )

    def _output_label(self):
        return repr(self.output_name) if self.output_name else "the model's output"

    def _pick_output(self, steps, outputs, name):
        model_names = list(getattr(self.model, "output_names", None) or [])
        if name is None:
            if len(outputs) == 1:
                return outputs[0]
            raise ValueError(
                f"the model has {len(outputs)} outputs ({', '.join(model_names)}); choose the "
                f"score output with output=NAME"
            )
        if name in model_names and len(model_names) == len(outputs):
            return outputs[model_names.index(name)]
        for step in steps:
            if getattr(step.layer, "name", None) == name:
                return step.outputs[0]
        raise ValueError(
            f"output={name!r}: the model has no output or layer of that name (its outputs: "
            f"{', '.join(model_names) or 'unnamed'})"
        )

    def require_kinds(self) -> None:
        """Raises `UntraceableLayerError` for the first step without a kind, or the reason
        a one-channel head cannot be split (a graph built with strict=False, handed to the
        engine)."""
        from tf_segunravel.unravel.rules import kind_for

        for step in self.steps:
            if self.kinds[id(step)] is None:
                _check_call(step, kind_for(step.layer, len(step.inputs)))
        if self._split_error is not None:
            raise self._split_error

    def kind(self, step: Step) -> "LayerKind | None":
        """The step's `LayerKind` (None only in a non-strict graph)."""
        return self.kinds[id(step)]

    def feed(self, images: tf.Tensor) -> tf.Tensor:
        """The model's input from RGB 0..255 images: resized to a fixed input size where the
        model has one (bilinear), then `InputSettings` applied."""
        x = tf.cast(images, tf.float32)
        if self.input_size is not None and tuple(x.shape[1:3]) != self.input_size:
            x = tf.image.resize(x, self.input_size, method="bilinear")
        return self.input_settings.apply(x)

    def record(self, images: tf.Tensor) -> Values:
        """One forward pass (inference mode): {tensor id: value} for every tensor, and the
        images as given under `IMAGES`."""
        values = record(self.steps, self.input_id, self.feed(images))
        values[IMAGES] = images
        return values

    def scores(self, values: Values) -> tf.Tensor:
        """float32 [B, h, w, classes]: the logits the unravel starts from (see the class
        docstring), from a recorded pass; a classifier's are one position."""
        if self.activation_inside:
            scores = _linear_part(self.score_step.layer, values[self.score_step.inputs[0]])
        else:
            scores = values[self.output_id]
        return self.class_scores(scores)

    def class_scores(self, scores: tf.Tensor) -> tf.Tensor:
        """The score tensor's values (before any final activation) as per-class logits
        [B, h, w, classes]: a classifier's as one position, a one-channel head's as its two
        classes (-z / 2, z / 2). Gradient baselines read a logits model's output through it
        too, so every method sees the same classes."""
        scores = tf.cast(scores, tf.float32)
        if len(scores.shape) == 2:
            scores = scores[:, None, None, :]
        if self.binary:
            scores = tf.concat([-0.5 * scores, 0.5 * scores], axis=-1)
        return scores

    def score_kernel(self) -> tf.Tensor | None:
        """The kernel `kernel_step`'s rule reads: for a binary head, the two classes'
        filters (-s w / 2, s w / 2) of its split layer (`BinarySplit.kernel`); else None
        (the rule reads the layer's own)."""
        if not self.binary:
            return None
        if self.split is None:
            self.require_kinds()  # raises the reason
        assert self.split is not None
        return self.split.kernel()

    def kernel_kind(self) -> "LayerKind":
        """The kind of `kernel_step` (its `kernel` and `kernel_axis`)."""
        kind = self.kind(self.kernel_step)
        if kind is None:
            self.require_kinds()
        assert kind is not None
        return kind

    def image_size(self, values: Values) -> tf.Tensor:
        """int32 [2]: the (height, width) of the images as given."""
        return tf.shape(values[IMAGES])[1:3]

    def fed_size(self, values: Values) -> tf.Tensor:
        return tf.shape(values[self.input_id])[1:3]


def _check_call(step: Step, kind: "LayerKind") -> None:
    """Refuses a call of a layer that its kind cannot follow (`LayerKind.check`)."""
    from tf_segunravel.unravel.rules import refuse

    reason = kind.check(step) if kind.check is not None else None
    if reason:
        raise refuse(step.layer, reason)


def _ancestors(steps, output_id):
    """The steps the tensor `output_id` depends on, in their topological order."""
    needed, kept = {output_id}, []
    for step in reversed(steps):
        if needed.intersection(step.outputs):
            kept.append(step)
            needed.update(step.inputs)
    return kept[::-1]


def as_graph(
    model: "keras.Model | ModelGraph",
    *,
    input: "InputSettings | None" = None,
    output: str | None = None,
    strict: bool = True,
) -> "ModelGraph":
    """`model` as a `graph.ModelGraph` (a graph is taken as it is)."""
    if isinstance(model, ModelGraph):
        if input is not None or output is not None:
            raise ValueError("input= and output= belong to the ModelGraph already given")
        if strict:
            model.require_kinds()
        return model
    return ModelGraph(model, input=input, output=output, strict=strict)
