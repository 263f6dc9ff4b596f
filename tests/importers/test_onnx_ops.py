"""Every op of the ONNX importer's table (docs/importers.md), in each attribute variant,
checked against onnxruntime on graphs built with `onnx.helper`."""

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from tf_segunravel.importers import onnx_model  # noqa: E402
from tf_segunravel.importers.onnx_model import OnnxImportError  # noqa: E402

RNG = np.random.default_rng(0)


def weights(*shape, scale=0.5):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def graph(nodes, inputs_shape, constants=(), output="y", opset=17, dynamic=False):
    """A model: one float input "x" [1, C, H, W] (H and W dynamic with `dynamic`), the
    `nodes`, their `constants` {name: array}, one output."""
    shape = list(inputs_shape)
    if dynamic:
        shape[2:] = ["h", "w"]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info(output, TensorProto.FLOAT, None)
    initialisers = [numpy_helper.from_array(np.asarray(v), k) for k, v in dict(constants).items()]
    built = helper.make_graph(nodes, "g", [x], [y], initialisers)
    return helper.make_model(built, opset_imports=[helper.make_opsetid("", opset)])


def imported(model, tmp_path, **kwargs):
    """(keras model, worst relative difference from onnxruntime) of `model` saved and
    imported; the import itself refuses anything above the tolerance."""
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    network = onnx_model.import_onnx(path, **kwargs)
    return network, onnx_model.compare(onnx_model.read_onnx(str(path)), network, str(path))


def node(op, inputs, output="y", **attrs):
    return helper.make_node(op, inputs, [output], **attrs)


CONV_CASES = {
    "plain": dict(w=(4, 3, 3, 3), attrs={}),
    "padded_strided": dict(w=(4, 3, 3, 3), attrs=dict(pads=[1, 1, 1, 1], strides=[2, 2])),
    "uneven_pads": dict(w=(4, 3, 3, 3), attrs=dict(pads=[0, 1, 2, 1])),
    "dilated": dict(w=(4, 3, 3, 3), attrs=dict(pads=[2, 2, 2, 2], dilations=[2, 2])),
    "grouped": dict(w=(6, 2, 3, 3), c=6, attrs=dict(group=3, pads=[1, 1, 1, 1])),
    "grouped_wide": dict(w=(4, 3, 3, 3), c=6, attrs=dict(group=2)),
    "depthwise": dict(w=(6, 1, 3, 3), c=6, attrs=dict(group=6, pads=[1, 1, 1, 1])),
    "depthwise_multiplier": dict(w=(12, 1, 3, 3), c=6, attrs=dict(group=6)),
    "rectangular": dict(w=(4, 3, 1, 3), attrs=dict(pads=[0, 1, 0, 1])),
    "same_upper": dict(w=(4, 3, 3, 3), attrs=dict(auto_pad="SAME_UPPER", strides=[2, 2])),
    "no_bias": dict(w=(4, 3, 1, 1), attrs={}, bias=False),
}


@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_conv(case, tmp_path):
    spec = CONV_CASES[case]
    channels = spec.get("c", 3)
    constants = {"w": weights(*spec["w"])}
    inputs = ["x", "w"]
    if spec.get("bias", True):
        constants["b"] = weights(spec["w"][0])
        inputs.append("b")
    model = graph([node("Conv", inputs, **spec["attrs"])], [1, channels, 9, 11], constants)
    _, worst = imported(model, tmp_path)
    assert worst < 1e-5


@pytest.mark.parametrize(
    "attrs",
    [
        dict(strides=[2, 2]),
        dict(strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1]),
        dict(strides=[2, 2], pads=[1, 1, 1, 1]),
        dict(strides=[1, 1], pads=[1, 0, 1, 0]),
        dict(strides=[2, 2], output_shape=[10, 12]),
        dict(strides=[2, 2], output_shape=[9, 11]),
    ],
    ids=["plain", "output_padding", "padded", "stride1", "output_shape", "output_shape_odd"],
)
def test_conv_transpose(attrs, tmp_path):
    constants = {"w": weights(3, 4, 3, 3), "b": weights(4)}
    model = graph([node("ConvTranspose", ["x", "w", "b"], **attrs)], [1, 3, 5, 6], constants)
    _, worst = imported(model, tmp_path)
    assert worst < 1e-5


def test_batch_norm(tmp_path):
    c = 5
    constants = {
        "g": weights(c),
        "b": weights(c),
        "m": weights(c),
        "v": np.abs(weights(c)) + 0.1,
    }
    model = graph(
        [node("BatchNormalization", ["x", "g", "b", "m", "v"], epsilon=1e-3)],
        [1, c, 4, 4],
        constants,
    )
    assert imported(model, tmp_path)[1] < 1e-5


ACTIVATIONS = {
    "Relu": ({}, {}),
    "LeakyRelu": ({"alpha": 0.2}, {}),
    "Sigmoid": ({}, {}),
    "Tanh": ({}, {}),
    "HardSigmoid": ({"alpha": 1 / 6, "beta": 0.5}, {}),
    "HardSigmoid_paddle": ({"alpha": 0.2, "beta": 0.5}, {}),
    "HardSwish": ({}, {}),
    "Softmax": ({"axis": 1}, {}),
    "Clip": ({}, {"lo": np.float32(0), "hi": np.float32(6)}),
    "PRelu": ({}, {"slope": weights(4, 1, 1)}),
}


@pytest.mark.parametrize("op", sorted(ACTIVATIONS))
def test_activation(op, tmp_path):
    attrs, constants = ACTIVATIONS[op]
    inputs = ["x", *constants]
    model = graph([node(op.split("_")[0], inputs, **attrs)], [1, 4, 5, 5], constants)
    _, worst = imported(model, tmp_path)
    assert worst < 1e-5


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize("operand", ["scalar", "channel", "channel_first", "tensor"])
def test_arithmetic(op, operand, tmp_path):
    if operand == "tensor":
        if op == "Div":
            pytest.skip("division of two tensors is refused (test_refusals)")
        nodes = [node("Relu", ["x"], "r"), node(op, ["x", "r"])]
        model = graph(nodes, [1, 4, 5, 5])
    else:
        constant = {"scalar": np.float32(1.7), "channel": weights(4, 1, 1) + 2.0}
        constant["channel_first"] = constant["channel"]
        order = ["c", "x"] if operand == "channel_first" and op != "Div" else ["x", "c"]
        model = graph([node(op, order)], [1, 4, 5, 5], {"c": constant[operand]})
    assert imported(model, tmp_path)[1] < 1e-5


def test_squeeze_excitation_broadcasts_a_gate(tmp_path):
    nodes = [
        node("GlobalAveragePool", ["x"], "pooled"),
        node("Conv", ["pooled", "w"], "gate_logits"),
        node("Sigmoid", ["gate_logits"], "gate"),
        node("Mul", ["x", "gate"]),
    ]
    model = graph(nodes, [1, 4, 6, 6], {"w": weights(4, 4, 1, 1)})
    assert imported(model, tmp_path)[1] < 1e-5


POOLS = {
    "max_plain": ("MaxPool", dict(kernel_shape=[2, 2], strides=[2, 2])),
    "max_padded": ("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    "max_ceil": ("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)),
    "max_padded_ceil": (
        "MaxPool",
        dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1),
    ),
    "avg_plain": ("AveragePool", dict(kernel_shape=[2, 2], strides=[2, 2])),
    "avg_exclude_pad": (
        "AveragePool",
        dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    ),
    "avg_include_pad": (
        "AveragePool",
        dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1),
    ),
    "avg_ceil_include_pad": (
        "AveragePool",
        dict(
            kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1, count_include_pad=1
        ),
    ),
    "avg_ceil": ("AveragePool", dict(kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)),
}


@pytest.mark.parametrize("case", sorted(POOLS))
def test_pooling(case, tmp_path):
    """Odd sizes and negative inputs, where a padded max or an uncounted pad would show."""
    op, attrs = POOLS[case]
    model = graph([node(op, ["x"], **attrs)], [1, 3, 10, 9])
    assert imported(model, tmp_path)[1] < 1e-5


@pytest.mark.parametrize(
    "nodes",
    [
        [node("GlobalAveragePool", ["x"])],
        [node("GlobalMaxPool", ["x"])],
        [node("ReduceMean", ["x"], axes=[2, 3], keepdims=1)],
    ],
    ids=["global_avg", "global_max", "reduce_mean"],
)
def test_global_pooling(nodes, tmp_path):
    assert imported(graph(nodes, [1, 3, 5, 7]), tmp_path)[1] < 1e-5


def test_concat(tmp_path):
    nodes = [
        node("Relu", ["x"], "r"),
        node("Sigmoid", ["x"], "s"),
        node("Concat", ["r", "s"], axis=1),
    ]
    assert imported(graph(nodes, [1, 3, 4, 4]), tmp_path)[1] < 1e-6


RESIZES = [
    ("linear", "half_pixel", None),
    ("linear", "pytorch_half_pixel", None),
    ("linear", "align_corners", None),
    ("linear", "asymmetric", None),
    ("nearest", "asymmetric", "floor"),
    ("nearest", "half_pixel", "floor"),
    ("nearest", "align_corners", "floor"),
]


@pytest.mark.parametrize("mode,coordinates,nearest", RESIZES)
@pytest.mark.parametrize("by", ["scales", "sizes"])
def test_resize(mode, coordinates, nearest, by, tmp_path):
    attrs = dict(mode=mode, coordinate_transformation_mode=coordinates)
    if nearest:
        attrs["nearest_mode"] = nearest
    if by == "scales":
        constants = {"roi": np.zeros(0, np.float32), "scales": np.array([1, 1, 2, 3], "f4")}
        inputs = ["x", "roi", "scales"]
    else:
        constants = {"sizes": np.array([1, 3, 11, 7], np.int64)}
        inputs = ["x", "", "", "sizes"]
    model = graph([node("Resize", inputs, **attrs)], [1, 3, 5, 4], constants)
    assert imported(model, tmp_path)[1] < 1e-5


def test_resize_sizes_folded_from_the_input_shape(tmp_path):
    """PyTorch's `F.interpolate(x, size=y.shape[-2:])`: Shape, Slice and Concat feed the
    sizes, here with a dynamic height and width given at import."""
    nodes = [
        node("MaxPool", ["x"], "small", kernel_shape=[2, 2], strides=[2, 2]),
        node("Shape", ["x"], "shape"),
        node("Slice", ["shape", "start", "end"], "hw"),
        node("Shape", ["small"], "small_shape"),
        node("Slice", ["small_shape", "zero", "start"], "nc"),
        node("Concat", ["nc", "hw"], "sizes", axis=0),
        node("Resize", ["small", "", "", "sizes"], mode="linear",
             coordinate_transformation_mode="align_corners"),
    ]  # fmt: skip
    constants = {
        "start": np.array([2], np.int64),
        "end": np.array([4], np.int64),
        "zero": np.array([0], np.int64),
    }
    model = graph(nodes, [1, 3, 8, 10], constants, dynamic=True)
    with pytest.raises(
        OnnxImportError,
        match="dynamic height or width; give the size to build it for as input_size=",
    ):
        imported(model, tmp_path)
    network, worst = imported(model, tmp_path, input_size=(12, 10))
    assert worst < 1e-5 and network.output.shape[1:3] == (12, 10)


def test_pad_flatten_gemm(tmp_path):
    nodes = [
        node("Pad", ["x", "pads", "value"], "padded", mode="constant"),
        node("GlobalAveragePool", ["padded"], "pooled"),
        node("Flatten", ["pooled"], "flat"),
        node("Gemm", ["flat", "w", "b"], transB=1, alpha=0.5),
    ]
    constants = {
        "pads": np.array([0, 0, 1, 2, 0, 0, 3, 0], np.int64),
        "value": np.array(-2.0, np.float32),
        "w": weights(7, 3),
        "b": weights(7),
    }
    assert imported(graph(nodes, [1, 3, 4, 4], constants), tmp_path)[1] < 1e-5


def test_output_names_are_kept(tmp_path):
    model = graph([node("Relu", ["x"], "scores")], [1, 3, 4, 4], output="scores")
    network, _ = imported(model, tmp_path)
    assert network.output_names == ["scores"]


def test_an_import_that_differs_from_onnxruntime_is_refused(tmp_path, monkeypatch):
    """The check is live: a converter that is off by a little is caught."""
    model = graph([node("LeakyRelu", ["x"], alpha=0.2)], [1, 3, 4, 4])
    real = onnx_model.OPS["LeakyRelu"]
    monkeypatch.setitem(
        onnx_model.OPS, "LeakyRelu", lambda ctx, n, attrs: real(ctx, n, {"alpha": 0.21})
    )
    with pytest.raises(
        OnnxImportError,
        match=r"differs from onnxruntime by [0-9.e-]+ of a tensor's range first at LeakyRelu "
        r"node 'y'",
    ):
        imported(model, tmp_path)
    assert not (tmp_path / "model.keras").exists()


@pytest.mark.parametrize(
    "nodes,constants,message",
    [
        ([node("Div", ["x", "r"])], {}, "Div node 'y': input 'r' is made by no node before it"),
        ([node("Relu", ["x"], "r"), node("Div", ["x", "r"])], {}, "division of two tensors"),
        ([node("Erf", ["x"])], {}, "Erf node 'y': no importer for this op"),
        (
            [node("Clip", ["x", "lo", "hi"])],
            {"lo": np.float32(-1), "hi": np.float32(1)},
            "only Clip\\(0, max\\)",
        ),
        (
            [node("Pad", ["x", "pads"], mode="reflect")],
            {"pads": np.zeros(8, np.int64)},
            "only constant padding",
        ),
        (
            [node("Resize", ["x", "", "", "s"], mode="cubic")],
            {"s": np.array([1, 3, 8, 8])},
            "mode=cubic",
        ),
    ],
    ids=["missing", "tensor_div", "unknown_op", "clip", "reflect", "cubic"],
)
def test_refusals_name_the_file_the_node_and_the_reason(nodes, constants, message, tmp_path):
    model = graph(nodes, [1, 3, 4, 4], constants)
    with pytest.raises(OnnxImportError, match=message) as raised:
        imported(model, tmp_path)
    text = str(raised.value)
    assert text.startswith(f"{tmp_path / 'model.onnx'}: ") and "\n" not in text


def test_a_corrupt_file_and_external_data_outside_the_folder_are_refused(tmp_path):
    path = tmp_path / "broken.onnx"
    onnx.save(graph([node("Relu", ["x"])], [1, 3, 4, 4]), path)
    path.write_bytes(path.read_bytes()[:-7] + b"garbage")
    with pytest.raises(OnnxImportError, match=r"broken\.onnx: not a readable ONNX file"):
        onnx_model.import_onnx(path)
    # A weight stored beside the model loads; one that points outside its folder is refused.
    model = graph([node("Conv", ["x", "w"])], [1, 3, 4, 4], {"w": weights(2, 3, 1, 1)})
    inside = tmp_path / "inside"
    inside.mkdir()
    onnx.save(model, inside / "m.onnx", save_as_external_data=True, location="m.data",
              size_threshold=0)  # fmt: skip
    assert onnx_model.import_onnx(inside / "m.onnx").output.shape[-1] == 2
    escaped = onnx.load(inside / "m.onnx", load_external_data=False)
    for tensor in escaped.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../secret.data"
    (tmp_path / "secret.data").write_bytes((inside / "m.data").read_bytes())
    onnx.save(escaped, inside / "escaped.onnx")
    with pytest.raises(OnnxImportError, match="outside the model's folder; refused"):
        onnx_model.import_onnx(inside / "escaped.onnx")


def test_upsample(tmp_path):
    """Upsample (opset 9, before Resize replaced it): nearest, by scales."""
    constants = {"scales": np.array([1, 1, 2, 3], "f4")}
    model = graph(
        [node("Upsample", ["x", "scales"], mode="nearest")], [1, 3, 4, 5], constants, opset=9
    )
    assert imported(model, tmp_path)[1] < 1e-6


def test_reshape_of_a_pooled_map_then_matmul(tmp_path):
    """PyTorch's `x.view(n, -1)` after global pooling, then a bias-free linear layer."""
    nodes = [
        node("GlobalAveragePool", ["x"], "pooled"),
        node("Reshape", ["pooled", "shape"], "flat"),
        node("MatMul", ["flat", "w"]),
    ]
    constants = {"shape": np.array([0, -1], np.int64), "w": weights(3, 5)}
    network, worst = imported(graph(nodes, [1, 3, 4, 4], constants), tmp_path)
    assert worst < 1e-5 and network.output.shape[-1] == 5


@pytest.mark.parametrize("groups", [1, 2, 6])
def test_group_norm_as_pytorch_exports_it(groups, tmp_path):
    """PyTorch's GroupNorm: reshape to [N, G, -1], InstanceNormalization with per-group
    scale and bias, reshape back to the map's own Shape, then the affine Mul and Add. One
    Keras GroupNormalization (and the Mul and Add); the reshapes leave no layer."""
    scale, bias = 1 + weights(groups), weights(groups)
    constants = {
        "grouped": np.array([0, groups, -1], np.int64),
        "scale": scale, "bias": bias, "gamma": weights(6, 1, 1), "beta": weights(6, 1, 1),
    }  # fmt: skip
    nodes = [
        node("Reshape", ["x", "grouped"], "g"),
        node("InstanceNormalization", ["g", "scale", "bias"], "n", epsilon=1e-5),
        node("Shape", ["x"], "shape"),
        node("Reshape", ["n", "shape"], "back"),
        node("Mul", ["back", "gamma"], "scaled"),
        node("Add", ["scaled", "beta"]),
    ]
    network, worst = imported(graph(nodes, [1, 6, 7, 9], constants), tmp_path)
    assert worst < 1e-5
    kinds = [type(layer).__name__ for layer in network.layers]
    assert kinds.count("GroupNormalization") == 1 and "Reshape" not in kinds


def test_instance_norm_of_a_map(tmp_path):
    constants = {"scale": 1 + weights(4), "bias": weights(4)}
    nodes = [node("InstanceNormalization", ["x", "scale", "bias"], epsilon=1e-3)]
    _, worst = imported(graph(nodes, [1, 4, 6, 5], constants), tmp_path)
    assert worst < 1e-5


@pytest.mark.parametrize("op,merge", [("ReduceSum", "Add"), ("ReduceMax", "Maximum"),
                                      ("ReduceMean", "Average")])  # fmt: skip
def test_maps_stacked_then_reduced_are_merged(op, merge, tmp_path):
    """`sum(features)` in a decoder: each map unsqueezed on a new axis 0, concatenated on it,
    reduced over it (axes as an input, opset 18) is one merge layer."""
    constants = {"w": weights(4, 4, 1, 1), "axis": np.array([0], np.int64)}
    nodes = [
        node("Conv", ["x", "w"], "c"),
        node("Relu", ["x"], "r"),
        node("Unsqueeze", ["x", "axis"], "u0"),
        node("Unsqueeze", ["c", "axis"], "u1"),
        node("Unsqueeze", ["r", "axis"], "u2"),
        node("Concat", ["u0", "u1", "u2"], "stack", axis=0),
        node(op, ["stack", "axis"], keepdims=0),
    ]
    network, worst = imported(graph(nodes, [1, 4, 5, 6], constants, opset=18), tmp_path)
    assert worst < 1e-5
    assert merge in {type(layer).__name__ for layer in network.layers}


@pytest.mark.parametrize(
    "tail,message",
    [
        ([node("Relu", ["g"])], "input 'g' is an image tensor reshaped to [1, 2, 90]"),
        ([node("Reshape", ["g", "flat"])], "Reshape of [1, 2, 90] to [1, 180], not back to"),
    ],
)
def test_a_grouped_view_used_otherwise_is_refused(tail, message, tmp_path):
    constants = {"grouped": np.array([1, 2, -1], np.int64), "flat": np.array([1, 180], np.int64)}
    nodes = [node("Reshape", ["x", "grouped"], "g"), *tail]
    path = tmp_path / "model.onnx"
    onnx.save(graph(nodes, [1, 6, 5, 6], constants), path)
    with pytest.raises(OnnxImportError, match=None) as caught:
        onnx_model.import_onnx(path)
    assert message in str(caught.value) and str(path) in str(caught.value)


@pytest.mark.parametrize("joint", [True, False])
def test_attention_over_a_maps_positions(joint, tmp_path):
    """Queries, keys and values from 1 x 1 convolutions, flattened to positions; softmax
    over every pair (MAnet's, `joint`) or over each row, then the attended values either
    reshaped straight to a map (MAnet's) or transposed back first: one PositionAttention."""
    c, hw = 4, 4 * 5
    constants = {
        "wq": weights(2, c, 1, 1), "wk": weights(2, c, 1, 1), "wv": weights(c, c, 1, 1),
        "flat2": np.array([1, 2, -1], np.int64), "flatc": np.array([1, c, -1], np.int64),
        "pairs": np.array([1, hw * hw], np.int64), "square": np.array([1, hw, hw], np.int64),
        "map": np.array([1, c, 4, 5], np.int64),
    }  # fmt: skip
    nodes = [
        node("Conv", ["x", "wq"], "q"), node("Conv", ["x", "wk"], "k"),
        node("Conv", ["x", "wv"], "v"),
        node("Reshape", ["q", "flat2"], "qf"), node("Transpose", ["qf"], "qt", perm=[0, 2, 1]),
        node("Reshape", ["k", "flat2"], "kf"),
        node("Reshape", ["v", "flatc"], "vf"), node("Transpose", ["vf"], "vt", perm=[0, 2, 1]),
        node("MatMul", ["qt", "kf"], "s"),
    ]  # fmt: skip
    if joint:
        nodes += [node("Reshape", ["s", "pairs"], "sf"), node("Softmax", ["sf"], "af", axis=1),
                  node("Reshape", ["af", "square"], "a"), node("MatMul", ["a", "vt"], "m"),
                  node("Reshape", ["m", "map"], "attended")]  # fmt: skip
    else:
        nodes += [node("Softmax", ["s"], "a", axis=-1), node("MatMul", ["a", "vt"], "m"),
                  node("Transpose", ["m"], "mt", perm=[0, 2, 1]),
                  node("Reshape", ["mt", "map"], "attended")]  # fmt: skip
    nodes.append(node("Add", ["x", "attended"]))
    network, worst = imported(graph(nodes, [1, c, 4, 5], constants), tmp_path)
    assert worst < 1e-5
    layer = next(lay for lay in network.layers if type(lay).__name__ == "PositionAttention")
    assert (layer.joint_softmax, layer.channel_major) == (joint, joint)


def test_a_transpose_other_than_positions_and_channels_is_refused(tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save(graph([node("Transpose", ["x"], perm=[0, 2, 3, 1])], [1, 3, 4, 5]), path)
    with pytest.raises(OnnxImportError) as caught:
        onnx_model.import_onnx(path)
    assert "Transpose [0, 2, 3, 1]" in str(caught.value) and str(path) in str(caught.value)
