"""A naive, per-point segmentation unravel written straight from docs/method.md section 2.

Python loops over points, taps and channels, numpy values, and no code shared with the
package: the engine's vectorised rules are tested against this, and bench/unravel.py times
it for the speed-up figure.
"""

import collections
import math

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


def same_before(size_in, size_out, kernel, stride, dilation):
    effective = (kernel - 1) * dilation + 1
    return max((size_out - 1) * stride + effective - size_in, 0) // 2


def keep_channels(scores, k, mass, max_k, positive=False):
    order = sorted(range(len(scores)), key=lambda c: (-scores[c], c))
    if positive:
        kept = [c for c in range(len(scores)) if scores[c] > 0]
        return kept or [order[0]]
    if mass is None:
        return order[:k]
    total = sum(max(s, 0.0) for s in scores)
    kept, running = [], 0.0
    for c in order[: min(max_k, len(scores))]:
        kept.append(c)
        running += scores[c]
        if running >= mass * total:
            break
    return kept


def margin_kernel(layer, ch, against):
    """The layer's kernel with filter `ch` replaced by w_ch - w_against (contrastive seeds)."""
    kernel = layer.kernel.numpy().copy()
    if against is not None:
        kernel[..., ch] = kernel[..., ch] - kernel[..., against]
    return kernel


def conv_point(layer, x, out, point, k, mass, max_k, shift, against=None):
    b, y, xx, ch = point
    kernel = margin_kernel(layer, ch, against)
    kh, kw, group_in, filters = kernel.shape
    (sh, sw), (dh, dw) = layer.strides, layer.dilation_rate
    h, w = x.shape[1:3]
    top = same_before(h, out.shape[1], kh, sh, dh) if layer.padding == "same" else 0
    left = same_before(w, out.shape[2], kw, sw, dw) if layer.padding == "same" else 0
    group = ch // (filters // layer.groups)
    channel_scores = [0.0] * group_in
    taps = {}
    for i in range(kh):
        for j in range(kw):
            yy, xj = y * sh - top + i * dh, xx * sw - left + j * dw
            inside = 0 <= yy < h and 0 <= xj < w
            taps[(i, j)] = (yy, xj, inside)
            for c in range(group_in):
                value = x[b, yy, xj, group * group_in + c] if inside else 0.0
                contribution = float(value) * float(kernel[i, j, c, ch])
                channel_scores[c] += contribution
    full = shift == "full" or (shift == "partial" and max(dh, dw) == 1)
    moved = []
    for c in keep_channels(channel_scores, k, mass, max_k):
        if full:
            best, best_tap = -math.inf, None
            for i in range(kh):
                for j in range(kw):
                    yy, xj, inside = taps[(i, j)]
                    if not inside:
                        continue
                    p = float(x[b, yy, xj, group * group_in + c]) * float(kernel[i, j, c, ch])
                    if p > best:
                        best, best_tap = p, (yy, xj)
            yy, xj = best_tap
        else:
            yy, xj, _ = taps[((kh - 1) // 2, (kw - 1) // 2)]
        moved.append((0, (b, yy, xj, group * group_in + c)))
    return moved


def dense_point(layer, x, point, k, mass, max_k, positive, against=None):
    b, y, xx, ch = point
    kernel = margin_kernel(layer, ch, against)
    vector = x[b, y, xx] if x.ndim == 4 else x[b]
    scores = [float(vector[c]) * float(kernel[c, ch]) for c in range(len(vector))]
    return [(0, (b, y, xx, c)) for c in keep_channels(scores, k, mass, max_k, positive)]


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


def depthwise_point(x, out, point, kernel, strides, dilation, padding, k, mass, max_k, shift):
    """One input channel per output channel: K picks taps (full shift) or the centre."""
    b = point[0]
    taps, channel = depthwise_taps(x, out, point, kernel, strides, dilation, padding)
    kh, kw = kernel.shape[:2]
    full = shift == "full" or (shift == "partial" and max(dilation) == 1)
    if not full:
        _, yy, xj, _, _ = taps[((kh - 1) // 2) * kw + (kw - 1) // 2]
        return [(0, (b, yy, xj, channel))]
    inside = [t for t in taps if t[3]]
    scores = [t[4] for t in inside]
    return [
        (0, (b, inside[c][1], inside[c][2], channel)) for c in keep_channels(scores, k, mass, max_k)
    ]


def separable_point(layer, x, out, point, k, mass, max_k, shift):
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
    moved = []
    for c in keep_channels(scores, k, mass, max_k):
        moved += depthwise_point(x, out, (b, y, xx, c), depthwise, *args, k, mass, max_k, shift)
    return moved


def transpose_point(layer, x, out, point, k, mass, max_k, shift):
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
    full = shift == "full" or (shift == "partial" and max(dh, dw) == 1)
    moved = []
    for c in keep_channels(scores, k, mass, max_k):
        if full:
            best = max(
                candidates,
                key=lambda t: float(x[b, t[2], t[3], c]) * float(kernel[t[0], t[1], ch, c]),
            )
        else:
            best = min(
                candidates, key=lambda t: (t[0] - (kh - 1) // 2) ** 2 + (t[1] - (kw - 1) // 2) ** 2
            )
        moved.append((0, (b, best[2], best[3], c)))
    return moved


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


def merge_point(layer, inputs, out, point):
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
    best = max((v, -i) for i, v in enumerate(values) if full[i])
    return [(-best[1], point)]


def pool_point(layer, x, out, point):
    b, y, xx, ch = point
    if isinstance(layer, CaffePooling2D):
        (kh, kw), (sh, sw) = (layer.pool_size,) * 2, (layer.strides,) * 2
        top = left = layer.padding
    else:
        (kh, kw), (sh, sw) = layer.pool_size, layer.strides
        same = layer.padding == "same"
        top = same_before(x.shape[1], out.shape[1], kh, sh, 1) if same else 0
        left = same_before(x.shape[2], out.shape[2], kw, sw, 1) if same else 0
    best, where = -math.inf, None
    for i in range(kh):
        for j in range(kw):
            yy, xj = y * sh - top + i, xx * sw - left + j
            if 0 <= yy < x.shape[1] and 0 <= xj < x.shape[2] and x[b, yy, xj, ch] > best:
                best, where = x[b, yy, xj, ch], (yy, xj)
    return [(0, (b, *where, ch))]


def move(layer, inputs, out, point, k, mass, max_k, shift, dense_rule, against=None):
    """[(input index, new point)] for one point at the layer's output; `against`, at the score
    layer of a contrastive unravel, is the class whose score the seed's margin subtracts."""
    b, y, xx, ch = point
    x = inputs[0]
    if against is not None:
        assert isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)), layer
        if isinstance(layer, keras.layers.Conv2D):
            return conv_point(layer, x, out, point, k, mass, max_k, shift, against)
        return dense_point(layer, x, point, k, mass, max_k, dense_rule == "positive", against)
    if isinstance(layer, PASS):
        return [(0, point)]
    if isinstance(layer, keras.layers.Conv2DTranspose):
        return transpose_point(layer, x, out, point, k, mass, max_k, shift)
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        args = (tuple(layer.strides), tuple(layer.dilation_rate), layer.padding)
        return depthwise_point(x, out, point, layer.kernel.numpy(), *args, k, mass, max_k, shift)
    if isinstance(layer, keras.layers.SeparableConv2D):
        return separable_point(layer, x, out, point, k, mass, max_k, shift)
    if isinstance(layer, keras.layers.ZeroPadding2D):
        (top, _), (left, _) = layer.padding
        yy = min(max(y - top, 0), x.shape[1] - 1)
        xj = min(max(xx - left, 0), x.shape[2] - 1)
        return [(0, (b, yy, xj, ch))]
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
        return merge_point(layer, inputs, out, point)
    if isinstance(layer, keras.layers.Conv2D):
        return conv_point(layer, x, out, point, k, mass, max_k, shift)
    if isinstance(layer, keras.layers.Dense):
        return dense_point(layer, x, point, k, mass, max_k, dense_rule == "positive")
    if isinstance(
        layer, (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D, CaffePooling2D)
    ):
        return pool_point(layer, x, out, point)
    if isinstance(layer, (keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D)):
        plane = x[b, :, :, ch]
        flat = int(np.argmax(plane))
        return [(0, (b, flat // plane.shape[1], flat % plane.shape[1], ch))]
    if isinstance(layer, keras.layers.Flatten):
        _, _, width, channels = x.shape
        return [(0, (b, ch // (width * channels), (ch // channels) % width, ch % channels))]
    if isinstance(layer, keras.layers.Add):
        values = [t[b, y, xx, ch] if t.ndim == 4 else t[b, ch] for t in inputs]
        return [(int(np.argmax(values)), point)]
    if isinstance(layer, keras.layers.Concatenate):
        offset = 0
        for index, t in enumerate(inputs):
            if offset <= ch < offset + t.shape[-1]:
                return [(index, (b, y, xx, ch - offset))]
            offset += t.shape[-1]
    if isinstance(layer, (keras.layers.UpSampling2D, keras.layers.Resizing)):
        yy = min(math.floor((y + 0.5) * x.shape[1] / out.shape[1]), x.shape[1] - 1)
        xj = min(math.floor((xx + 0.5) * x.shape[2] / out.shape[2]), x.shape[2] - 1)
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


def naive_unravel(
    model,
    images,
    k=1,
    mass=None,
    max_k=16,
    shift="partial",
    dense_rule="topk",
    seed_limit=None,
    contrast=None,
):
    """{(b, class, y, x): count} at the image, for a functional model of single-use layers.

    `seed_limit` keeps only the first seeds (row-major), for timing on full-size networks.
    `contrast` ("runner_up" or a class id) unravels each seed's margin over that class: the
    seed carries the other class down to the score layer, whose kernel column becomes the
    difference; seeds of the contrast class itself are skipped.
    """
    tensors = [layer.output for layer in model.layers]
    values = keras.Model(model.input, tensors)(images, training=False)
    value_of = {id(t): np.asarray(v) for t, v in zip(tensors, values, strict=True)}
    value_of[id(model.input)] = np.asarray(images, np.float32)
    scores = _logits(model, value_of)
    if scores.ndim == 2:
        scores = scores[:, None, None, :]
    labels = np.argmax(scores, axis=-1)
    points = collections.defaultdict(collections.Counter)
    for number, (b, y, xx) in enumerate(np.ndindex(labels.shape)):
        if seed_limit is not None and number >= seed_limit:
            break
        c = int(labels[b, y, xx])
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
            args = (k, mass, max_k, shift, dense_rule, *against)
            for index, new in move(layer, in_values, out, point, *args):
                if in_values[index].ndim == 2:
                    new = (new[0], 0, 0, new[3])
                points[id(inputs[index])][(cls, new)] += count
    at_image = collections.Counter()
    for (cls, (b, y, xx, _)), count in points[id(model.input)].items():
        at_image[(b, cls, y, xx)] += count
    return at_image
