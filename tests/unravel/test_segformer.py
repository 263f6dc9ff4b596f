"""keras-hub's SegFormer through the unravel: its attention rule against a naive numpy
implementation point for point, the whole segmenter traced, the recomputation check, and
the fixation tool on a saved SegFormer and on a Keras MultiHeadAttention segmenter."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tests.helpers import run_tool
from tests.unravel.test_attention import every_output_element, seeded, token_segmenter
from tf_segunravel.cli import graph_refusal
from tf_segunravel.grids import labels_at_size
from tf_segunravel.unravel import FixationSettings, SegUnravel
from tf_segunravel.unravel.geometry import ScoreMap
from tf_segunravel.unravel.rules.attention import square_side
from tf_segunravel.unravel.rules.base import UntraceableLayerError
from tf_segunravel.unravel.rules.segformer import attention_rule

keras_hub = pytest.importorskip("keras_hub")
mit_layers = pytest.importorskip("keras_hub.src.models.mit.mit_layers")


def tiny_segformer(size=64, num_classes=4, seed=0):
    """MiT with two stages (8 and 16 channels, strides 4 and 2, reductions 4 and 2) under
    SegFormer's decoder, weights drawn from a seed at a moderate scale."""
    encoder = keras_hub.models.MiTBackbone(
        layerwise_depths=[1, 1],
        num_layers=2,
        hidden_dims=[8, 16],
        image_shape=(size, size, 3),
        layerwise_num_heads=[1, 2],
        layerwise_sr_ratios=[4, 2],
        max_drop_path_rate=0.1,
        layerwise_patch_sizes=[7, 3],
        layerwise_strides=[4, 2],
    )
    backbone = keras_hub.models.SegFormerBackbone(image_encoder=encoder, projection_filters=8)
    model = keras_hub.models.SegFormerImageSegmenter(backbone=backbone, num_classes=num_classes)
    rng = np.random.default_rng(seed)
    weights = []
    for w in model.weights:
        value = w.numpy()
        if "gamma" in w.path or "variance" in w.path:
            weights.append(np.ones_like(value))
        elif "beta" in w.path or "mean" in w.path or "bias" in w.path:
            weights.append(np.zeros_like(value))
        else:
            fan_in = np.prod(value.shape[:-1]) if value.ndim > 1 else 1
            weights.append((rng.standard_normal(value.shape) / np.sqrt(fan_in)).astype("f4"))
    model.set_weights(weights)
    return model


def naive_segformer_attention_points(layer, x, grid):
    """Per output element (b, token i, channel c), where the attention rule must move it, in
    float64 loops: the (head h, value token j, value channel d) with the largest
    A[h, i, j] v[j, h D + d] W_p[h D + d, c]; the source channel e with the largest
    s[j, e] W_v[e, h D + d]; under reduction, the reduction convolution's rule: the input
    channel with the largest contribution summed over the window, then its tap with the
    largest (docs/method.md); returned as (b, token, channel)."""
    x = x.astype("f8")
    batch, tokens, channels = x.shape
    heads, ratio = layer.num_heads, layer.sr_ratio
    depth = channels // heads
    side = int(np.sqrt(tokens))

    def dense(d, t):
        return t @ d.kernel.numpy().astype("f8") + d.bias.numpy().astype("f8")

    q = dense(layer.q, x)
    if ratio > 1:
        image = x.reshape(batch, side, side, channels)
        kernel = layer.sr.kernel.numpy().astype("f8")
        small = side // ratio
        reduced = np.zeros((batch, small, small, channels))
        for b, y, xx in np.ndindex(batch, small, small):
            window = image[b, y * ratio : (y + 1) * ratio, xx * ratio : (xx + 1) * ratio]
            reduced[b, y, xx] = np.einsum("yxe,yxef->f", window, kernel)
        reduced += layer.sr.bias.numpy()
        flat = reduced.reshape(batch, -1, channels)
        mean, var = flat.mean(-1, keepdims=True), flat.var(-1, keepdims=True)
        gamma, beta = (v.numpy().astype("f8") for v in (layer.norm.gamma, layer.norm.beta))
        sources = (flat - mean) / np.sqrt(var + layer.norm.epsilon) * gamma + beta
    else:
        sources = x
    k, v = dense(layer.k, sources), dense(layer.v, sources)
    wp, wv = layer.proj.kernel.numpy().astype("f8"), layer.v.kernel.numpy().astype("f8")
    want = []
    for b, i, c in grid:
        contributions = np.zeros((heads, sources.shape[1], depth))
        for h in range(heads):
            units = slice(h * depth, (h + 1) * depth)
            logits = k[b, :, units] @ q[b, i, units] * depth**-0.5
            weights = np.exp(logits - logits.max())
            weights /= weights.sum()
            contributions[h] = weights[:, None] * v[b, :, units] * wp[units, c]
        h, j, d = np.unravel_index(np.argmax(contributions), contributions.shape)
        e = int(np.argmax(sources[b, j] * wv[:, h * depth + d]))
        if ratio == 1:
            want.append([b, j, e])
            continue
        jy, jx = divmod(j, side // ratio)
        window = image[b, jy * ratio : (jy + 1) * ratio, jx * ratio : (jx + 1) * ratio]
        contributions = window * kernel[:, :, :, e]  # [ratio, ratio, channels]
        channel = int(np.argmax(contributions.sum(axis=(0, 1))))
        ty, tx = divmod(int(np.argmax(contributions[:, :, channel])), ratio)
        want.append([b, (jy * ratio + ty) * side + jx * ratio + tx, channel])
    return np.array(want)


@pytest.mark.parametrize("ratio", [1, 2])
def test_the_segformer_attention_rule_follows_the_strongest_value_pathway(ratio):
    layer = mit_layers.SegFormerMultiheadAttention(8, 2, ratio)
    x = np.random.default_rng(ratio).standard_normal((2, 16, 8)).astype("f4")
    output = layer(x)
    rng = np.random.default_rng(10 + ratio)
    layer.set_weights([rng.standard_normal(w.shape).astype("f4") for w in layer.get_weights()])
    output = layer(x)
    grid, points = every_output_element(2, 16, 8)
    moved = attention_rule(layer, tf.constant(x), output, points, FixationSettings())
    (at_x,) = moved.points
    assert np.all(np.asarray(at_x.y) == 0)
    got = np.stack([at_x.b, at_x.x, at_x.ch], axis=1)
    np.testing.assert_array_equal(got, naive_segformer_attention_points(layer, x, grid))


def photos(size=64, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (2, size, size, 3)).astype("f4")


def test_keras_hubs_segformer_unravels_inside_its_image():
    model = tiny_segformer()
    images = photos()
    logits = np.asarray(model(images, training=False))
    for settings in (FixationSettings(), FixationSettings(k=2), FixationSettings(mass=0.5)):
        result = SegUnravel(model, settings)(images)
        np.testing.assert_array_equal(np.asarray(result.labels), logits.argmax(-1))
        for b in range(2):
            points, counts = result.for_image(b)
            assert len(points) and (counts > 0).all()
            assert points[:, 1:].min() >= 0 and points[:, 1:].max() < 64
    _, geometry = ScoreMap(model)(images)
    # The decoder concatenates the stage-2 branch (tokens 8 pixels apart, resized 8 -> 16)
    # before the stage-1 one (4 pixels apart); the map follows the finer, stage 1: token j
    # over pixel 4 j, resized 16 -> 64, so a score pixel j sits over image pixel j - 1.5.
    np.testing.assert_allclose(np.asarray(geometry), [[1.0, -1.5], [1.0, -1.5]])


def test_a_segformer_block_that_computes_otherwise_is_refused():
    """A block whose call is not what its rule recomputes (a keras-hub release that changed
    it) is refused by name, not traced wrongly."""

    class Doubled(mit_layers.HierarchicalTransformerEncoder):
        def call(self, x):
            return x + 2.0 * self.attn(self.norm1(x)) + self.mlp(self.norm2(x))

    inputs = keras.Input((32, 32, 3))
    tokens = mit_layers.OverlappingPatchingAndEmbedding(8, 7, 4)(inputs)
    tokens = Doubled(8, 1, sr_ratio=2, name="doubled")(tokens)
    grid = keras.layers.Reshape((8, 8, 8))(tokens)
    model = seeded(keras.Model(inputs, keras.layers.Conv2D(3, 1)(grid)))
    with pytest.raises(tf.errors.InvalidArgumentError) as refused:
        SegUnravel(model)(photos(32))
    # The tools print it as one line (cli.graph_refusal).
    assert graph_refusal(refused.value) == (
        "unravel cannot trace layer 'doubled' (Doubled): its rule's recomputation differs "
        "from the layer's output (a keras-hub version whose layer works differently)"
    )


def test_tokens_that_are_not_a_square_grid_are_refused():
    """keras-hub's layers take N tokens as a square of side int(sqrt(N)); the rules refuse
    any other count rather than guess a grid."""
    layer = mit_layers.HierarchicalTransformerEncoder(8, 1, name="oblong")
    assert square_side(49, layer) == 7
    with pytest.raises(UntraceableLayerError, match=r"'oblong'.*48 tokens are not a square"):
        square_side(48, layer)


@pytest.mark.slow
@pytest.mark.parametrize("network", ["segformer", "multi_head_attention"])
def test_the_fixation_tool_traces_transformers(tmp_path, network):
    model = tiny_segformer() if network == "segformer" else seeded(token_segmenter())
    size = 64 if network == "segformer" else 16
    model_path = tmp_path / "model.keras"
    model.save(model_path)
    (tmp_path / "images").mkdir()
    rgb = (photos(size)[0]).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "images" / "photo.png")
    out = tmp_path / "out"
    proc = run_tool(
        "fixations",
        f"--model={model_path}",
        f"--images={tmp_path / 'images'}",
        f"--output_dir={out}",
        # A blur narrower than the 16-pixel image (the default 20 px is refused there).
        "--sigma=4",
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "photo.json").read_text())
    data = np.load(out / "photo.npz")
    assert len(data["points"]) and summary
    # The tool's labels are the engine's scores placed on the image by the score geometry.
    want = SegUnravel(model)(rgb[None].astype("f4"))
    labels = labels_at_size(want.scores, size, size, want.geometry)
    np.testing.assert_array_equal(data["labels"], np.asarray(labels)[0])
