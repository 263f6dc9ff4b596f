"""What every unravel rule shares: points, channel choice, windows, the refusal error.

A rule is called as `rule(layer, inputs, output, points, settings)`: `inputs` is the layer's
recorded input tensor (a list of them for multi-input layers), `output` its recorded output,
`points` the `Points` arriving at the output, `settings` the `FixationSettings`. It returns
one `Points` per input, or a `Moved` that also carries the per-point channel scores of a
layer that chooses channels (for the K analysis). docs/method.md section 2 states each rule.

Every rule moves a batch of points in a handful of vectorised TensorFlow ops: gather every
point's input window at once, score, pick. A point is (image b, seed class, y, x, channel,
count); rank-2 tensors (Dense inputs) use y = x = 0, and rank-3 tensors of tokens [B, N, C]
(a transformer's) use y = 0, x = the token (`as_map`). Ties go to the lowest index (row-major
taps, then channel order), as numpy.argmax does, or with `ties="last"` to the highest (as
Seg-Unravel's code; `best_index` and `top_indices` are the only places a rule breaks ties).
"""

import typing

import numpy as np
import tensorflow as tf

from tf_segunravel.grids import first_argmax

if typing.TYPE_CHECKING:
    from tf_segunravel.unravel.settings import FixationSettings

# A length along an axis: a Python int where the size is static, else a scalar tensor.
Size: typing.TypeAlias = int | tf.Tensor
# A layer or Keras op of the traced model. Each rule reads its own kind's attributes
# (pool_size, strides, padding, ...), which no common base class declares.
AnyLayer: typing.TypeAlias = typing.Any


class Points(typing.NamedTuple):
    """Parallel int tensors [N]; `count` is int64 (paths multiply when K > 1)."""

    b: tf.Tensor
    cls: tf.Tensor
    y: tf.Tensor
    x: tf.Tensor
    ch: tf.Tensor
    count: tf.Tensor

    def take(self, indices: tf.Tensor) -> "Points":
        return Points(*(tf.gather(field, indices) for field in self))

    def moved(self, parents: tf.Tensor, **fields: tf.Tensor) -> "Points":
        """Points `parents` with the named fields replaced: the others are gathered, the
        replaced ones are not (a rule that moves y, x and ch gathers three fields, not six;
        a one-seed walk's cost is its op count)."""
        kept = {
            name: tf.gather(value, parents)
            for name, value in self._asdict().items()
            if name not in fields
        }
        return Points(**kept, **fields)

    def where(self, mask: tf.Tensor) -> "Points":
        # One index for every field (tf.boolean_mask per field builds several ops each).
        return self.take(tf.reshape(tf.where(mask), [-1]))

    def replace(self, **fields: tf.Tensor) -> "Points":
        return self._replace(**fields)


def concat_points(parts: typing.Sequence[Points]) -> Points:
    """The points of every part, in order (one part is returned as it is)."""
    if len(parts) == 1:
        return parts[0]
    return Points(*(tf.concat(fields, axis=0) for fields in zip(*parts, strict=True)))


class Moved(typing.NamedTuple):
    """What a channel-choosing rule returns: one `Points` per input, and the channel scores
    [N, C_in] it chose from (row i for arriving point i)."""

    points: list
    channel_scores: tf.Tensor | None = None


class UntraceableLayerError(ValueError):
    """A layer type the unravel rules do not cover."""


def best_index(values: tf.Tensor, ties: str = "first") -> tf.Tensor:
    """Index of the largest value along the last axis: the lowest among tied maxima
    (ties="first"), or the highest (ties="last")."""
    if ties == "first":
        return first_argmax(values)
    # The lowest index of the reversed row is the highest of the row (as `top_indices`).
    return tf.shape(values)[-1] - 1 - first_argmax(tf.reverse(values, axis=[-1]))


def top_indices(scores: tf.Tensor, k: int, ties: str = "first") -> tuple[tf.Tensor, tf.Tensor]:
    """(values, indices) of the k largest of each row of `scores` [N, C], largest first; equal
    values in index order (ties="first") or in reverse index order (ties="last")."""
    if ties == "first":
        return tf.math.top_k(scores, k)  # stable: equal values keep channel order
    values, top = tf.math.top_k(tf.reverse(scores, axis=[1]), k)
    return values, tf.shape(scores)[1] - 1 - top


def as_map(tensor: tf.Tensor) -> tf.Tensor:
    """`tensor` seen as a [B, H, W, C] map, the layout every point reads: a vector [B, C] as
    one position [B, 1, 1, C], tokens [B, N, C] as one row of N positions [B, 1, N, C] (a
    token is a position; which grid it lies on is the geometry's business, not the
    point's)."""
    rank = len(tensor.shape)
    if rank == 4:
        return tensor
    if rank == 2:
        return tensor[:, None, None, :]
    if rank == 3:
        return tensor[:, None, :, :]
    raise UntraceableLayerError(
        f"a rank-{rank} tensor has no (y, x, channel) layout: the unravel reads vectors "
        f"[B, C], tokens [B, N, C] and maps [B, H, W, C]"
    )


def spatial_size(tensor: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(height, width) of a [B, H, W, C] tensor as scalar tensors, from one Shape op
    (indexing `tf.shape` builds four ops per axis, and graph building costs per op)."""
    _, height, width, _ = tf.unstack(tf.shape(tensor), num=4)
    return height, width


def pad_total(
    in_size: Size, out_size: Size, kernel: int, stride: int, dilation: int, padding: str
) -> Size:
    """Padding of one axis, both sides together (0 for 'valid')."""
    if padding == "valid":
        return tf.constant(0, tf.int32)
    effective = (kernel - 1) * dilation + 1
    return tf.maximum((out_size - 1) * stride + effective - in_size, 0)


def pad_before(
    in_size: Size, out_size: Size, kernel: int, stride: int, dilation: int, padding: str
) -> Size:
    """Leading padding of one axis: Keras/TF 'same' puts the smaller half first."""
    return pad_total(in_size, out_size, kernel, stride, dilation, padding) // 2


def window_taps(
    points: "Points",
    in_h: Size,
    in_w: Size,
    kernel: typing.Sequence[int],
    stride: typing.Sequence[int],
    dilation: typing.Sequence[int],
    before: typing.Sequence[Size],
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Tap coordinates [N, T] (row-major over the kernel) and which taps are inside."""
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    # The kernel's tap offsets are known when the graph is built: constants, not ops.
    ti = tf.constant(np.repeat(np.arange(kh) * dh, kw), tf.int32)
    tj = tf.constant(np.tile(np.arange(kw) * dw, kh), tf.int32)
    ys = points.y[:, None] * sh - before[0] + ti[None, :]
    xs = points.x[:, None] * sw - before[1] + tj[None, :]
    inside = (ys >= 0) & (ys < in_h) & (xs >= 0) & (xs < in_w)
    return ys, xs, inside


def clamp_taps(ys: tf.Tensor, xs: tf.Tensor, in_h: Size, in_w: Size) -> tuple[tf.Tensor, tf.Tensor]:
    """Tap coordinates moved into the input (a padded tap chosen under `padded_taps`)."""
    return tf.clip_by_value(ys, 0, in_h - 1), tf.clip_by_value(xs, 0, in_w - 1)


def gather_pixels(
    tensor: tf.Tensor, b: tf.Tensor, ys: tf.Tensor, xs: tf.Tensor, ch: tf.Tensor | None = None
) -> tf.Tensor:
    """tensor[b, ys, xs, :] for ys, xs [N, T] (clamped; callers mask what is outside), or
    with `ch` [N] only that channel, [N, T] (read element by element, not window by window).

    Read with one flat index into the tensor seen as rows of pixels (or of elements): the
    same values as `gather_nd` on (b, y, x[, ch]) tuples, without building the [N, T, 3]
    index (a third of the gather's time on LargeFOV's fc6)."""
    _, height, width, channels = tf.unstack(tf.shape(tensor), num=4)
    ys = tf.clip_by_value(ys, 0, height - 1)
    xs = tf.clip_by_value(xs, 0, width - 1)
    pixel = (b[:, None] * height + ys) * width + xs  # [N, T]: fewer than 2^31 pixels
    if ch is None:
        return tf.gather(tf.reshape(tensor, [-1, channels]), pixel)
    # Elements can outnumber int32 (10 images of 513 x 513 x 1024): int64 for these.
    element = tf.cast(pixel, tf.int64) * tf.cast(channels, tf.int64)
    element += tf.cast(ch, tf.int64)[:, None]
    return tf.gather(tf.reshape(tensor, [-1]), element)


def channels_to_reach(
    scores: tf.Tensor, fraction: float, cap: int | None = None, ties: str = "first"
) -> tuple[tf.Tensor, tf.Tensor]:
    """Per row of channel contributions [N, C], the fewest channels that, taken largest
    first, reach `fraction` of the row's positive total ("mass" K, docs/method.md).

    Returns (needed int32 [N], the channels largest first int32 [N, cap]). A row that never
    reaches it (later negative contributions can pull the running sum back under) needs all
    `cap` (default: every channel). Both the mass rule and the K analysis count with this.
    `ties` orders equal contributions as `top_indices` does.
    """
    channels = tf.shape(scores)[1]
    cap = channels if cap is None else tf.minimum(cap, channels)
    values, top = top_indices(scores, cap, ties)
    total = tf.reduce_sum(tf.maximum(scores, 0.0), axis=1, keepdims=True)
    # Compared in float64: float32's 0.6 is 0.6000000238, so a running sum of exactly 60%
    # (120 of 200) would not reach it, where the fraction as written is reached.
    running = tf.cast(tf.cumsum(values, axis=1), tf.float64)
    reached = running >= fraction * tf.cast(total, tf.float64)
    first = tf.cast(first_argmax(tf.cast(reached, tf.int32)), tf.int32) + 1
    return tf.where(tf.reduce_any(reached, axis=1), first, cap), top


def select_channels(
    scores: tf.Tensor, settings: "FixationSettings", rule: str = "topk"
) -> tuple[tf.Tensor, tf.Tensor]:
    """Channels to keep per point from channel scores [N, C]: (parent index, channel) [M]."""
    channels = tf.shape(scores)[1]
    ties = settings.ties
    if rule == "positive":  # CNN-Fixations' FC rule; the best channel when none is positive
        keep = (scores > 0) | (
            tf.one_hot(best_index(scores, ties), channels, on_value=True, off_value=False)
        )
        where = tf.cast(tf.where(keep), tf.int32)
        return where[:, 0], where[:, 1]
    if settings.mass is None:
        k = tf.minimum(settings.k, channels)
        _, top = top_indices(scores, k, ties)
        rows = tf.range(tf.shape(scores)[0])[:, None]  # (tf.repeat builds a dozen ops)
        return tf.reshape(tf.broadcast_to(rows, tf.shape(top)), [-1]), tf.reshape(top, [-1])
    needed, top = channels_to_reach(scores, settings.mass, settings.max_k, ties)
    keep = tf.range(tf.shape(top)[1])[None, :] < needed[:, None]
    where = tf.cast(tf.where(keep), tf.int32)
    return where[:, 0], tf.gather_nd(top, where)
