"""Where a model's score grid sits on the image, composed from its layers' step maps.

Per axis, a tensor's position i covers image pixel `scale * i + offset`: the centre of its
receptive field. The map starts as (1, 0) at the image and every layer composes the step map
its `LayerKind` declares (`unravel/rules/positions.py` states each one). A layer whose kind
declares none (a registered rule without `geometry=`, or an unknown layer in a `ScoreMap`)
is taken to keep the map only while its output has its input's spatial size; one that
changes the size is refused, never assumed to be the identity.

Paddings depend on the input size, so the map is computed from the sizes of one recorded
pass, with TensorFlow ops that also run inside a SavedModel signature. DeepLab-LargeFOV's map
is (8, 0) on both axes: score i over pixel 8i, DeepLab's aligned-corner rule (tested).
"""

import functools
import typing

import keras
import tensorflow as tf

from tf_segunravel.unravel.graph import Values, as_graph
from tf_segunravel.unravel.rules import KEEPS_MAP, refuse
from tf_segunravel.unravel.rules.base import spatial_size

if typing.TYPE_CHECKING:
    from tf_segunravel.unravel.graph import ModelGraph
    from tf_segunravel.unravel.settings import InputSettings


def _spatial(value):
    """(height, width) of a map; a vector is one position (tokens: `_token_grid`)."""
    if len(value.shape) == 4:
        return spatial_size(value)
    return tf.constant(1), tf.constant(1)


def _undeclared(step, values):
    """Checks that a layer with no declared geometry keeps its input's spatial size: refuses
    it now where the sizes are static, else returns a run-time assertion."""
    layer = step.layer
    message = (
        f"it changes the spatial size and declares no geometry: register it with "
        f"register_rule({type(layer).__name__}, rule, geometry=...), where geometry is a step "
        f"map (for example window_geometry(kernel_size, strides, padding=...)) or "
        f"{KEEPS_MAP!r}"
    )
    checks = []
    source = values[step.inputs[0]]
    for output in step.outputs:
        target = values[output]
        static_in = source.shape[1:3] if len(source.shape) == 4 else (1, 1)
        static_out = target.shape[1:3] if len(target.shape) == 4 else (1, 1)
        if None not in (*static_in, *static_out):
            if tuple(static_in) != tuple(static_out):
                raise refuse(layer, f"{message} ({tuple(static_in)} -> {tuple(static_out)})")
            continue
        checks.append(
            tf.debugging.assert_equal(
                tf.stack(_spatial(source)),
                tf.stack(_spatial(target)),
                message=str(refuse(layer, message)),
            )
        )
    return checks


def _token_grid(step, kind, in_grid, source, target, checks):
    """(h, w) of the grid that the tokens `target` [B, N, C] lie on: a layer that makes
    tokens from a map declares it (`LayerKind.token_grid`); tokens from tokens keep their
    grid; tokens flattened from a map are that map's positions. Checked: N = h w."""
    layer = step.layer
    if kind is not None and kind.token_grid is not None and len(source.shape) == 4:
        grid = kind.token_grid(layer, *in_grid)
    else:
        grid = in_grid
    message = str(
        refuse(layer, "its tokens are not the positions of the grid they come from, row by row")
    )
    checks.append(
        tf.debugging.assert_equal(tf.shape(target)[1], grid[0] * grid[1], message=message)
    )
    return grid


def _finest_map(step, maps, coarsest):
    """(map, coarsest scale) that a step's output inherits: its input's; for a merge, the
    input whose positions stayed finest on the way from the image (the smallest coarsest
    scale, the first among equals). Branches that meet at a merge cover the same grid, but
    a branch that went down to a coarse grid and was resized back carries the offsets of
    that coarse grid's centres (SegFormer's stride-32 stage, resized to its 1/4 grid, sits
    14 pixels off its stride-4 stage), while the finest branch's positions are where the
    merged features were last located exactly. Chosen with tensor ops: the scales depend
    on the recorded sizes."""
    candidates = [i for i in step.inputs if i in maps]
    if len(set(candidates)) < 2:
        return maps[step.inputs[0]], coarsest[step.inputs[0]]
    chosen = tf.argmin(tf.stack([coarsest[i] for i in candidates]), output_type=tf.int32)

    def pick(values):
        return tf.gather(tf.stack(values), chosen)

    source = tuple(
        (
            pick([maps[i][axis][0] for i in candidates]),
            pick([tf.cast(maps[i][axis][1], tf.float32) for i in candidates]),
        )
        for axis in (0, 1)
    )
    return source, pick([coarsest[i] for i in candidates])


def score_geometry(model_graph: "ModelGraph", values: Values) -> tf.Tensor:
    """float32 [2, 2]: rows (height, width), columns (scale, offset) of the map from the
    score grid to image pixels, from a `graph.ModelGraph` and the recorded values of one
    pass.

    Tokens [B, N, C] (a transformer's) lie on the grid of the map they were made from,
    row by row: they carry its map and its size, and a Reshape back to a map must give
    that grid again (checked)."""
    one, zero = tf.constant(1.0), tf.constant(0.0)
    # Per tensor and axis, (scale, offset) from its positions to the image's.
    maps: dict[int, typing.Any] = {model_graph.input_id: ((one, zero), (one, zero))}
    # Per tensor, the (height, width) of its positions: a token tensor's are its grid's.
    grids: dict[int, typing.Any] = {model_graph.input_id: _spatial(values[model_graph.input_id])}
    # Per tensor, the coarsest scale its positions had on the way from the image: a merge
    # follows the input that stayed finest (below).
    coarsest: dict[int, typing.Any] = {model_graph.input_id: one}
    checks: list[typing.Any] = []
    for step in model_graph.steps:
        if step.inputs[0] not in maps:
            continue
        source, finest = _finest_map(step, maps, coarsest)
        in_grid = grids[step.inputs[0]]
        kind = model_graph.kind(step)
        for output in step.outputs:
            target = values[output]
            if len(target.shape) == 3:
                grids[output] = _token_grid(
                    step, kind, in_grid, values[step.inputs[0]], target, checks
                )
            else:
                grids[output] = _spatial(target)
                if len(values[step.inputs[0]].shape) == 3 and len(target.shape) == 4:
                    message = str(refuse(step.layer, "a map of another grid than its tokens'"))
                    checks.append(
                        tf.debugging.assert_equal(
                            tf.stack(grids[output]), tf.stack(in_grid), message=message
                        )
                    )
        step_map = None if kind is None else kind.geometry
        if step_map is None:
            checks.extend(_undeclared(step, values))
            step_map = KEEPS_MAP
        if isinstance(step_map, str):  # KEEPS_MAP: no ops for the many layers that move nothing
            maps.update((output, source) for output in step.outputs)
            coarsest.update((output, finest) for output in step.outputs)
            continue
        for output in step.outputs:
            out_grid = grids[output]
            composed = []
            for axis in (0, 1):
                a, b = step_map(step.layer, in_grid[axis], out_grid[axis], axis)
                scale, offset = source[axis]
                composed.append((scale * a, offset + scale * tf.cast(b, tf.float32)))
            maps[output] = tuple(composed)
            coarsest[output] = tf.maximum(finest, composed[0][0])
    (scale_y, offset_y), (scale_x, offset_x) = maps[model_graph.output_id]
    with tf.control_dependencies(checks):
        return tf.stack([tf.stack([scale_y, offset_y]), tf.stack([scale_x, offset_x])])


def image_geometry(model_graph: "ModelGraph", values: Values) -> tf.Tensor:
    """float32 [2, 2] (`score_geometry`) on the images' own pixels: composed with the resize
    to a fixed input size, pixel centres matched."""
    geometry = score_geometry(model_graph, values)
    if model_graph.input_size is None:
        return geometry
    ratio = tf.cast(model_graph.image_size(values), tf.float32) / tf.cast(
        model_graph.fed_size(values), tf.float32
    )
    scale, offset = geometry[:, 0] * ratio, (geometry[:, 1] + 0.5) * ratio - 0.5
    return tf.stack([scale, offset], axis=1)


class ScoreMap:
    """A model's scores together with where they sit on the image.

        scores, geometry = ScoreMap(model)(images)
        full = grids.scores_at_size(scores, height, width, geometry)

    One recorded pass (the same computation as `model(images, training=False)`) gives the
    scores and the sizes `score_geometry` needs. `model`, `input` and `output` are as for
    `SegUnravel`: the scores are the logits the unravel starts from, on the images' pixels.
    """

    def __init__(
        self,
        model: "keras.Model | ModelGraph",
        *,
        input: "InputSettings | None" = None,
        output: str | None = None,
    ) -> None:
        self.graph = as_graph(model, input=input, output=output, strict=False)

    @tf.autograph.experimental.do_not_convert  # static Python over the graph (see tracer)
    def __call__(self, images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """(logits [B, h, w, classes], geometry [2, 2]) as `graph.ModelGraph` reads them."""
        values = self.graph.record(images)
        return self.graph.scores(values), image_geometry(self.graph, values)

    def at_image_size(self, images: tf.Tensor) -> tf.Tensor:
        """Scores [B, H, W, C] on the images' own pixels (`grids.scores_at_size`)."""
        from tf_segunravel.grids import scores_at_size

        scores, geometry = self(images)
        return scores_at_size(scores, tf.shape(images)[1], tf.shape(images)[2], geometry)

    @functools.cached_property
    def compiled_at_image_size(self) -> typing.Callable[[tf.Tensor], tf.Tensor]:
        """`at_image_size` as one compiled function (traced per image shape, the batch left
        free after the second), for callers that score many batches from Python: run eagerly,
        every call would walk the model layer by layer and redo the geometry (the main job's
        faithfulness curves spent most of their time there)."""
        return tf.function(self.at_image_size, autograph=False, reduce_retracing=True)
