"""A naive, per-point segmentation unravel written straight from docs/method.md section 2.

Python loops over points, taps and channels, numpy values, and no code shared with the
package: the engine's vectorised rules are tested against this, and bench/unravel.py times
it for the speed-up figure.
"""

import collections
import math
import typing

import keras
import numpy as np

from tf_segunravel.models.layers import CaffePooling2D, CaffePreprocess

PASS = (
    keras.layers.InputLayer,
    keras.layers.Activation,
    keras.layers.ReLU,
    keras.layers.Dropout,
    keras.layers.BatchNormalization,
    keras.layers.Rescaling,
    keras.layers.LayerNormalization,
    keras.layers.Normalization,
    CaffePreprocess,
)


class Options(typing.NamedTuple):
    """The unravel settings the reference implements (FixationSettings' unravel fields)."""

    k: int = 1
    mass: float | None = None
    max_k: int = 16
    shift: str = "partial"
    dense_rule: str = "topk"
    ties: str = "first"
    padded_taps: bool = False
    resize_mapping: str = "centres"

    def full(self, dilation):
        return self.shift == "full" or (self.shift == "partial" and max(dilation) == 1)

    def better(self, value, best):
        """Whether a candidate met later in index order replaces the best so far."""
        return value >= best if self.ties == "last" else value > best


def same_padding(size_in, size_out, kernel, stride, dilation):
    """(before, after) padding of one axis under 'same'."""
    effective = (kernel - 1) * dilation + 1
    total = max((size_out - 1) * stride + effective - size_in, 0)
    return total // 2, total - total // 2


def same_before(size_in, size_out, kernel, stride, dilation):
    return same_padding(size_in, size_out, kernel, stride, dilation)[0]


def keep_channels(scores, opt, positive=False):
    if opt.ties == "last":
        order = sorted(range(len(scores)), key=lambda c: (-scores[c], -c))
    else:
        order = sorted(range(len(scores)), key=lambda c: (-scores[c], c))
    if positive:
        kept = [c for c in range(len(scores)) if scores[c] > 0]
        return kept or [order[0]]
    if opt.mass is None:
        return order[: opt.k]
    total = sum(max(s, 0.0) for s in scores)
    kept, running = [], 0.0
    for c in order[: min(opt.max_k, len(scores))]:
        kept.append(c)
        running += scores[c]
        if running >= opt.mass * total:
            break
    return kept


def with_shares(moved, scores, columns):
    """`moved` [(input, point)] as [(input, point, share)]: each point's chosen channel
    (`columns[i]`) as a share of the unit's positive contribution `scores` (path weights);
    a unit with none shares equally among its children."""
    total = sum(max(s, 0.0) for s in scores)
    shares = [max(scores[c], 0.0) / total if total > 0 else 1.0 / len(moved) for c in columns]
    return [(index, point, share) for (index, point), share in zip(moved, shares, strict=True)]


def best_of(values, opt):
    """Index of the largest of `values` (None entries are no candidates), ties by `opt`."""
    best, where = -math.inf, None
    for index, value in enumerate(values):
        if value is not None and (where is None or opt.better(value, best)):
            best, where = value, index
    return where


def clamp(yy, xj, h, w):
    return min(max(yy, 0), h - 1), min(max(xj, 0), w - 1)


def margin_kernel(layer, ch, against):
    """The layer's kernel with filter `ch` replaced by w_ch - w_against (contrastive seeds)."""
    kernel = layer.kernel.numpy().copy()
    if against is not None:
        kernel[..., ch] = kernel[..., ch] - kernel[..., against]
    return kernel


def conv_point(layer, x, out, point, opt, against=None):
    b, y, xx, ch = point
    kernel = margin_kernel(layer, ch, against)
    kh, kw, group_in, filters = kernel.shape
    (sh, sw), (dh, dw) = layer.strides, layer.dilation_rate
    h, w = x.shape[1:3]
    top = same_before(h, out.shape[1], kh, sh, dh) if layer.padding == "same" else 0
    left = same_before(w, out.shape[2], kw, sw, dw) if layer.padding == "same" else 0
    group = ch // (filters // layer.groups)
    channel_scores = [0.0] * group_in
    taps = []
    for i in range(kh):
        for j in range(kw):
            yy, xj = y * sh - top + i * dh, xx * sw - left + j * dw
            inside = 0 <= yy < h and 0 <= xj < w
            taps.append((i, j, yy, xj, inside))
            for c in range(group_in):
                value = x[b, yy, xj, group * group_in + c] if inside else 0.0
                contribution = float(value) * float(kernel[i, j, c, ch])
                channel_scores[c] += contribution
    moved, columns = [], []
    for c in keep_channels(channel_scores, opt):
        columns.append(c)
        if opt.full((dh, dw)):
            values = []
            for i, j, yy, xj, inside in taps:
                if inside:
                    p = float(x[b, yy, xj, group * group_in + c]) * float(kernel[i, j, c, ch])
                    values.append(p)
                else:  # a padded zero
                    values.append(0.0 if opt.padded_taps else None)
            _, _, yy, xj, _ = taps[best_of(values, opt)]
            yy, xj = clamp(yy, xj, h, w)
        else:
            _, _, yy, xj, _ = taps[((kh - 1) // 2) * kw + (kw - 1) // 2]
        moved.append((0, (b, yy, xj, group * group_in + c)))
    return with_shares(moved, channel_scores, columns)


def dense_point(layer, x, point, opt, against=None):
    b, y, xx, ch = point
    kernel = margin_kernel(layer, ch, against)
    vector = x[b, y, xx] if x.ndim == 4 else x[b]
    scores = [float(vector[c]) * float(kernel[c, ch]) for c in range(len(vector))]
    kept = keep_channels(scores, opt, opt.dense_rule == "positive")
    return with_shares([(0, (b, y, xx, c)) for c in kept], scores, kept)


def depthwise_taps(x, out, point, kernel, strides, dilation, padding):
    """[(tap index, y, x, inside, contribution)] of a depthwise point, row-major taps."""
    b, y, xx, ch = point
    kh, kw, _, multiplier = kernel.shape
    (sh, sw), (dh, dw) = strides, dilation
    h, w = x.shape[1:3]
    top = same_before(h, out.shape[1], kh, sh, dh) if padding == "same" else 0
    left = same_before(w, out.shape[2], kw, sw, dw) if padding == "same" else 0
    channel = ch // multiplier
    taps = []
    for i in range(kh):
        for j in range(kw):
            yy, xj = y * sh - top + i * dh, xx * sw - left + j * dw
            inside = 0 <= yy < h and 0 <= xj < w
            value = float(x[b, yy, xj, channel]) if inside else 0.0
            taps.append(
                (i * kw + j, yy, xj, inside, value * float(kernel[i, j, channel, ch % multiplier]))
            )
    return taps, channel


def depthwise_point(x, out, point, kernel, strides, dilation, padding, opt):
    """One input channel per output channel: K picks taps (full shift) or the centre; with
    padded taps, taps on the padding compete with a zero contribution and are clamped."""
    b = point[0]
    taps, channel = depthwise_taps(x, out, point, kernel, strides, dilation, padding)
    kh, kw = kernel.shape[:2]
    if not opt.full(dilation):
        _, yy, xj, _, _ = taps[((kh - 1) // 2) * kw + (kw - 1) // 2]
        return [(0, (b, yy, xj, channel))]
    candidates = taps if opt.padded_taps else [t for t in taps if t[3]]
    scores = [t[4] if t[3] else 0.0 for t in candidates]
    h, w = x.shape[1:3]
    return [
        (0, (b, *clamp(candidates[c][1], candidates[c][2], h, w), channel))
        for c in keep_channels(scores, opt)
    ]


def separable_point(layer, x, out, point, opt):
    """Pointwise 1x1 step on the depthwise output (computed at this position only), then
    the depthwise step; the depthwise output has the layer output's spatial size."""
    b, y, xx, ch = point
    depthwise = layer.depthwise_kernel.numpy()
    pointwise = layer.pointwise_kernel.numpy()
    args = (tuple(layer.strides), tuple(layer.dilation_rate), layer.padding)
    middle = [
        sum(t[4] for t in depthwise_taps(x, out, (b, y, xx, c), depthwise, *args)[0])
        for c in range(pointwise.shape[2])
    ]
    scores = [middle[c] * float(pointwise[0, 0, c, ch]) for c in range(len(middle))]
    moved, columns = [], []
    for c in keep_channels(scores, opt):
        children = depthwise_point(x, out, (b, y, xx, c), depthwise, *args, opt)
        moved += children
        columns += [c] * len(children)
    return with_shares(moved, scores, columns)


def transpose_point(layer, x, out, point, opt):
    """Input i feeds output i * s - pad + t * d: the candidates of an output position."""
    b, y, xx, ch = point
    kernel = layer.kernel.numpy()  # [kh, kw, filters, C_in]
    kh, kw, _, channels = kernel.shape
    (sh, sw), (dh, dw) = layer.strides, layer.dilation_rate
    h, w = x.shape[1:3]
    top = same_before(out.shape[1], h, kh, sh, dh) if layer.padding == "same" else 0
    left = same_before(out.shape[2], w, kw, sw, dw) if layer.padding == "same" else 0
    candidates = []
    for i in range(kh):
        for j in range(kw):
            ny, nx = y + top - i * dh, xx + left - j * dw
            if ny % sh or nx % sw or not (0 <= ny // sh < h and 0 <= nx // sw < w):
                continue
            candidates.append((i, j, ny // sh, nx // sw))
    if not candidates:
        return []
    scores = [
        sum(float(x[b, iy, ix, c]) * float(kernel[i, j, ch, c]) for i, j, iy, ix in candidates)
        for c in range(channels)
    ]
    moved, columns = [], []
    for c in keep_channels(scores, opt):
        columns.append(c)
        if opt.full((dh, dw)):
            values = [
                float(x[b, t[2], t[3], c]) * float(kernel[t[0], t[1], ch, c]) for t in candidates
            ]
        else:
            values = [
                -((t[0] - (kh - 1) // 2) ** 2 + (t[1] - (kw - 1) // 2) ** 2) for t in candidates
            ]
        best = candidates[best_of(values, opt)]
        moved.append((0, (b, best[2], best[3], c)))
    return with_shares(moved, scores, columns)


def broadcast_value(tensor, point):
    b, y, xx, ch = point
    if tensor.ndim == 2:
        return float(tensor[b, min(ch, tensor.shape[1] - 1)])
    return float(
        tensor[
            b,
            min(y, tensor.shape[1] - 1),
            min(xx, tensor.shape[2] - 1),
            min(ch, tensor.shape[3] - 1),
        ]
    )


def merge_point(layer, inputs, out, point, opt):
    """The input a merge routes the point to: larger value (sum, average, maximum, product
    among full-size factors), smaller (minimum), larger contribution (a - b)."""
    values = [broadcast_value(t, point) for t in inputs]
    if isinstance(layer, keras.layers.Minimum):
        values = [-v for v in values]
    if isinstance(layer, keras.layers.Subtract):
        values = [values[0], -values[1]]
    full = [t.shape[1:] == out.shape[1:] for t in inputs]
    if not any(full):
        full = [True] * len(inputs)
    return [(best_of([v if full[i] else None for i, v in enumerate(values)], opt), point)]


def pool_point(layer, x, out, point, opt):
    """The window's largest input; with padded taps, the taps on the padding (not those a
    Caffe ceil-mode window reaches beyond it) hold zeros that compete, then are clamped."""
    b, y, xx, ch = point
    h, w = x.shape[1:3]
    if isinstance(layer, CaffePooling2D):
        (kh, kw), (sh, sw) = (layer.pool_size,) * 2, (layer.strides,) * 2
        (top, bottom), (left, right) = (layer.padding,) * 2, (layer.padding,) * 2
    else:
        (kh, kw), (sh, sw) = layer.pool_size, layer.strides
        if layer.padding == "same":
            top, bottom = same_padding(h, out.shape[1], kh, sh, 1)
            left, right = same_padding(w, out.shape[2], kw, sw, 1)
        else:
            top = bottom = left = right = 0
    values, where = [], []
    for i in range(kh):
        for j in range(kw):
            yy, xj = y * sh - top + i, xx * sw - left + j
            where.append((yy, xj))
            if 0 <= yy < h and 0 <= xj < w:
                values.append(float(x[b, yy, xj, ch]))
            elif opt.padded_taps and -top <= yy < h + bottom and -left <= xj < w + right:
                values.append(0.0)
            else:
                values.append(None)
    return [(0, (b, *clamp(*where[best_of(values, opt)], h, w), ch))]


def resize_position(p, size_in, size_out, opt):
    if opt.resize_mapping == "corners":  # Caffe's Interp: first to first, last to last
        return min(math.floor(p * (size_in - 1) / max(size_out - 1, 1)), size_in - 1)
    return min(math.floor((p + 0.5) * size_in / size_out), size_in - 1)


def move(layer, inputs, out, point, opt, against=None):
    """[(input index, new point)] for one point at the layer's output; `against`, at the score
    layer of a contrastive unravel, is the class whose score the seed's margin subtracts."""
    b, y, xx, ch = point
    x = inputs[0]
    if against is not None:
        assert isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)), layer
        if isinstance(layer, keras.layers.Conv2D):
            return conv_point(layer, x, out, point, opt, against)
        return dense_point(layer, x, point, opt, against)
    if isinstance(layer, PASS):
        return [(0, point)]
    if isinstance(layer, keras.layers.Conv2DTranspose):
        return transpose_point(layer, x, out, point, opt)
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        args = (tuple(layer.strides), tuple(layer.dilation_rate), layer.padding)
        return depthwise_point(x, out, point, layer.kernel.numpy(), *args, opt)
    if isinstance(layer, keras.layers.SeparableConv2D):
        return separable_point(layer, x, out, point, opt)
    if isinstance(layer, keras.layers.ZeroPadding2D):
        (top, _), (left, _) = layer.padding
        return [(0, (b, *clamp(y - top, xx - left, x.shape[1], x.shape[2]), ch))]
    if isinstance(layer, keras.layers.Cropping2D):
        (top, _), (left, _) = layer.cropping
        return [(0, (b, y + top, xx + left, ch))]
    if isinstance(layer, keras.layers.Permute):
        where = [0, 0, 0]
        for axis, value in enumerate((y, xx, ch)):
            where[layer.dims[axis] - 1] = value
        return [(0, (b, *where))]
    if isinstance(layer, keras.layers.Reshape):
        flat = ch if out.ndim == 2 else int(np.ravel_multi_index((y, xx, ch), out.shape[1:]))
        if x.ndim == 2:
            return [(0, (b, 0, 0, flat))]
        return [(0, (b, *(int(v) for v in np.unravel_index(flat, x.shape[1:]))))]
    if isinstance(
        layer,
        (
            keras.layers.Multiply,
            keras.layers.Subtract,
            keras.layers.Average,
            keras.layers.Maximum,
            keras.layers.Minimum,
        ),
    ):
        return merge_point(layer, inputs, out, point, opt)
    if isinstance(layer, keras.layers.Conv2D):
        return conv_point(layer, x, out, point, opt)
    if isinstance(layer, keras.layers.Dense):
        return dense_point(layer, x, point, opt)
    if isinstance(
        layer, (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D, CaffePooling2D)
    ):
        return pool_point(layer, x, out, point, opt)
    if isinstance(layer, (keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D)):
        plane = x[b, :, :, ch]
        flat = best_of([float(v) for v in plane.ravel()], opt)
        return [(0, (b, flat // plane.shape[1], flat % plane.shape[1], ch))]
    if isinstance(layer, keras.layers.Flatten):
        _, _, width, channels = x.shape
        return [(0, (b, ch // (width * channels), (ch // channels) % width, ch % channels))]
    if isinstance(layer, keras.layers.Add):
        values = [float(t[b, y, xx, ch] if t.ndim == 4 else t[b, ch]) for t in inputs]
        return [(best_of(values, opt), point)]
    if isinstance(layer, keras.layers.Concatenate):
        offset = 0
        for index, t in enumerate(inputs):
            if offset <= ch < offset + t.shape[-1]:
                return [(index, (b, y, xx, ch - offset))]
            offset += t.shape[-1]
    if isinstance(layer, (keras.layers.UpSampling2D, keras.layers.Resizing)):
        yy = resize_position(y, x.shape[1], out.shape[1], opt)
        xj = resize_position(xx, x.shape[2], out.shape[2], opt)
        return [(0, (b, yy, xj, ch))]
    raise NotImplementedError(type(layer).__name__)


def _final(layer):
    """True for a final sigmoid or softmax (a layer of its own or a layer's activation)."""
    if isinstance(layer, keras.layers.Softmax):
        return True
    activation = getattr(layer, "activation", None)
    return any(activation is keras.activations.get(name) for name in ("sigmoid", "softmax"))


def _logits(model, value_of):
    """The scores before a final sigmoid or softmax, where the unravel starts."""
    tensor = model.output
    while True:
        layer = tensor._keras_history.operation
        if isinstance(layer, (keras.layers.Activation, keras.layers.Softmax)) and _final(layer):
            tensor = layer.input
            continue
        break
    if not _final(layer):
        return value_of[id(tensor)]
    x = value_of[id(layer.input)]
    if isinstance(layer, keras.layers.Dense):
        logits = x @ np.asarray(layer.kernel)
    else:
        logits = np.asarray(layer.convolution_op(x, layer.kernel))
    return logits + np.asarray(layer.bias) if layer.use_bias else logits


def upsampled_seeds(scores, height, width):
    """{(b, y, x, class)} as Seg-Unravel's code seeds: the scores upsampled to the input by
    Caffe's aligned-corner Interp (zoom (H - 1) / (h - 1), a whole number), each pixel's
    argmax seeding the score position floor(p / zoom)."""
    batch, h, w = scores.shape[:3]

    def axis(size, cells):
        zoom = 1 if cells == 1 else (size - 1) // (cells - 1)
        assert cells == 1 or (size - 1) % (cells - 1) == 0, (size, cells)
        rows = []
        for p in range(size):
            low = min(p // zoom, cells - 1)
            high = min(low + 1, cells - 1)
            rows.append((low, high, (p - low * zoom) / zoom))
        return rows

    seeds = set()
    for b in range(batch):
        for y0, y1, fy in axis(height, h):
            for x0, x1, fx in axis(width, w):
                top = scores[b, y0, x0] * (1 - fx) + scores[b, y0, x1] * fx
                bottom = scores[b, y1, x0] * (1 - fx) + scores[b, y1, x1] * fx
                value = top * (1 - fy) + bottom * fy
                seeds.add((b, y0, x0, int(np.argmax(value))))
    return seeds


def naive_unravel(
    model,
    images,
    k=1,
    mass=None,
    max_k=16,
    shift="partial",
    dense_rule="topk",
    seeding="grid",
    ties="first",
    padded_taps=False,
    resize_mapping="centres",
    seed_limit=None,
    contrast=None,
    path_weight="count",
):
    """{(b, class, y, x): count} at the image, for a functional model of single-use layers
    (with `path_weight="contribution"`, the summed products of each path's shares).

    The keyword arguments are FixationSettings' unravel fields. `seed_limit` keeps only the
    first seeds (row-major), for timing on full-size networks. `contrast` ("runner_up" or a
    class id) unravels each seed's margin over that class: the seed carries the other class
    down to the score layer, whose kernel column becomes the difference; seeds of the
    contrast class itself are skipped.
    """
    opt = Options(k, mass, max_k, shift, dense_rule, ties, padded_taps, resize_mapping)
    tensors = [layer.output for layer in model.layers]
    values = keras.Model(model.input, tensors)(images, training=False)
    value_of = {id(t): np.asarray(v) for t, v in zip(tensors, values, strict=True)}
    value_of[id(model.input)] = np.asarray(images, np.float32)
    scores = _logits(model, value_of)
    if scores.ndim == 2:
        scores = scores[:, None, None, :]
    if seeding == "upsampled":
        height, width = np.asarray(images).shape[1:3]
        start = sorted(upsampled_seeds(scores.astype(np.float64), height, width))
    else:
        labels = np.argmax(scores, axis=-1)
        start = [(b, y, xx, int(labels[b, y, xx])) for b, y, xx in np.ndindex(labels.shape)]
    points = collections.defaultdict(collections.Counter)
    for number, (b, y, xx, c) in enumerate(start):
        if seed_limit is not None and number >= seed_limit:
            break
        against = None
        if contrast == "runner_up":
            others = scores[b, y, xx].astype(np.float64).copy()
            others[c] = -np.inf
            against = int(np.argmax(others))
        elif contrast is not None:
            if c == contrast:
                continue
            against = int(contrast)
        points[id(model.output)][(c, (b, y, xx, c), against)] += 1
    for layer in reversed(model.layers):
        if isinstance(layer, keras.layers.InputLayer):
            continue
        arrived = points.pop(id(layer.output), None)
        if not arrived:
            continue
        inputs = layer.input if isinstance(layer.input, list) else [layer.input]
        in_values = [value_of[id(t)] for t in inputs]
        out = value_of[id(layer.output)]
        for (cls, point, *against), count in arrived.items():
            if out.ndim == 2:
                point = (point[0], 0, 0, point[3])
            for index, new, *share in move(layer, in_values, out, point, opt, *against):
                if in_values[index].ndim == 2:
                    new = (new[0], 0, 0, new[3])
                weighed = path_weight == "contribution" and share
                points[id(inputs[index])][(cls, new)] += count * share[0] if weighed else count
    at_image = collections.Counter()
    for (cls, (b, y, xx, _)), count in points[id(model.input)].items():
        at_image[(b, cls, y, xx)] += count
    return at_image
