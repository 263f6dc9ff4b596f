"""The TFLite importer's ops (docs/importers.md), each from a Keras model through TensorFlow's
own converter, imported back and checked against LiteRT; and the refusals."""

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")

import keras
import tensorflow as tf

from tf_segunravel.importers import tflite_model
from tf_segunravel.importers.tflite_model import TfliteImportError
from tf_segunravel.models.framework_layers import ConstantPadding2D

L = keras.layers


def converted(model, tmp_path, name="model.tflite", float16=False, int8=False):
    """`model` through tf.lite.TFLiteConverter, saved; returns the path."""
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if float16 or int8:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if float16:
        converter.target_spec.supported_types = [tf.float16]
    path = tmp_path / name
    path.write_bytes(converter.convert())
    return str(path)


def imported(model, tmp_path, **kwargs):
    """(imported Keras model, worst difference from LiteRT over every tensor) of `model`."""
    path = converted(model, tmp_path, **kwargs)
    network = tflite_model.import_tflite(path)
    network_values = tflite_model.build_keras(tflite_model.read_tflite(path), path)
    worst = tflite_model.compare(path, network_values[0], values=network_values[1])
    return network, worst


def _model(shape, *layers):
    inputs = keras.Input(shape)
    x = inputs
    for layer in layers:
        x = layer(x)
    model = keras.Model(inputs, x)
    rng = np.random.default_rng(0)
    model.set_weights([rng.standard_normal(w.shape).astype("f4") * 0.3 for w in model.weights])
    return model


CASES = {
    "conv_same_strided_relu": lambda: [L.Conv2D(4, 3, strides=2, padding="same",
                                                activation="relu")],
    "conv_valid_dilated": lambda: [L.Conv2D(4, 3, dilation_rate=2)],
    "conv_same_dilated": lambda: [L.Conv2D(4, 3, dilation_rate=(2, 3), padding="same")],
    "depthwise_dilated": lambda: [L.DepthwiseConv2D(3, dilation_rate=2, padding="same")],
    "conv_grouped": lambda: [L.Conv2D(6, 3, padding="same", groups=3)],
    "conv_rectangular_no_bias": lambda: [L.Conv2D(4, (1, 3), use_bias=False)],
    "depthwise_multiplier_relu6": lambda: [L.DepthwiseConv2D(3, depth_multiplier=2,
                                                             padding="same"), L.ReLU(6.0)],
    "depthwise_strided": lambda: [L.DepthwiseConv2D(3, strides=2, padding="same")],
    "transpose_same": lambda: [L.Conv2DTranspose(4, 3, strides=2, padding="same")],
    "transpose_valid": lambda: [L.Conv2DTranspose(4, 2, strides=2)],
    "max_pool_same": lambda: [L.MaxPooling2D(3, strides=2, padding="same")],
    "average_pool_same": lambda: [L.AveragePooling2D(3, strides=2, padding="same")],
    "average_pool_valid": lambda: [L.AveragePooling2D(2)],
    "pad_then_conv": lambda: [L.ZeroPadding2D(((1, 2), (0, 1))), L.Conv2D(4, 3)],
    "bilinear_upsampling": lambda: [L.UpSampling2D(2, interpolation="bilinear")],
    "nearest_resizing": lambda: [L.Resizing(18, 22, interpolation="nearest")],
    "resizing_bilinear_half_pixel": lambda: [L.Resizing(13, 7, interpolation="bilinear")],
    "resize_bilinear_align_corners": lambda: [L.Lambda(
        lambda t: tf.compat.v1.image.resize_bilinear(t, (13, 17), align_corners=True))],
    "resize_bilinear_asymmetric": lambda: [L.Lambda(
        lambda t: tf.compat.v1.image.resize_bilinear(t, (13, 17)))],
    "activations": lambda: [L.LeakyReLU(0.2), L.Activation("sigmoid"), L.Activation("tanh"),
                            L.Activation("hard_silu"), L.Softmax()],
    "prelu": lambda: [L.PReLU(shared_axes=[1, 2])],
    "crop_strided_slice": lambda: [L.Cropping2D(((1, 0), (0, 2)))],
    "constant_pad_padv2": lambda: [ConstantPadding2D(((1, 1), (2, 0)), -1.0)],
    "batch_norm_folded_or_scaled": lambda: [L.Conv2D(4, 1), L.BatchNormalization()],
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_op(case, tmp_path):
    _, worst = imported(_model((9, 11, 3 if "grouped" not in case else 6), *CASES[case]()),
                        tmp_path)  # fmt: skip
    assert worst < 1e-5


def test_blocks_with_merges_a_squeeze_excitation_gate_and_a_dense_head(tmp_path):
    """Add and Concatenate between tensors, a gate multiplied over the map, the spatial mean
    (MEAN), a per-channel constant, and Dense on the pooled vector."""
    inputs = keras.Input((8, 10, 4))
    a = L.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    b = L.Add()([a, inputs])
    gate = L.GlobalAveragePooling2D(keepdims=True)(b)
    gate = L.Conv2D(4, 1, activation="sigmoid")(gate)
    c = L.Multiply()([b, gate])
    d = L.Concatenate()([c, L.Rescaling(2.0, offset=-1.0)(inputs)])
    pooled = L.GlobalAveragePooling2D()(d)
    scores = L.Dense(3)(pooled)
    model = keras.Model(inputs, [d, scores])
    network, worst = imported(model, tmp_path)
    assert worst < 1e-5
    assert len(network.outputs) == 2


def test_float16_weights_are_dequantised_exactly(tmp_path):
    model = _model((8, 8, 3), L.Conv2D(4, 3, padding="same"), L.DepthwiseConv2D(3))
    path = converted(model, tmp_path, float16=True)
    content = tflite_model.read_tflite(path)
    assert any(c.builtinCode == 6 for c in content.operatorCodes)  # DEQUANTIZE
    network = tflite_model.import_tflite(path)
    x = np.random.default_rng(1).standard_normal((1, 8, 8, 3)).astype("f4")
    want = model(x)  # the float16-rounded weights are what LiteRT and the import both use
    assert np.abs(np.asarray(network(x)) - np.asarray(want)).max() < 5e-2


def test_an_imported_model_keeps_its_layers_standard(tmp_path):
    model = _model((16, 16, 3), L.Conv2D(4, 3, strides=2, padding="same", activation="relu"),
                   L.UpSampling2D(2, interpolation="bilinear"))  # fmt: skip
    network, _ = imported(model, tmp_path)
    kinds = {type(layer).__name__ for layer in network.layers}
    assert {"Conv2D", "ReLU", "Resize2D"} <= kinds
    assert not kinds & {"Lambda", "TFOpLambda", "Permute"}


def test_a_dynamic_range_quantised_model_is_refused(tmp_path):
    model = _model((8, 8, 3), L.Conv2D(64, 3, padding="same"), L.Conv2D(64, 3))
    path = converted(model, tmp_path, int8=True)
    with pytest.raises(TfliteImportError) as caught:
        tflite_model.import_tflite(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and "quantised" in message and "\n" not in message


@pytest.mark.parametrize(
    "content,message",
    [
        (b"", "not a TFLite file"),
        (b"\x18\x00\x00\x00TFL3" + b"\xff" * 40, "not a readable TFLite file"),
        (b"garbage that is not a model at all", "not a TFLite file"),
    ],
)
def test_a_corrupt_file_is_refused(content, message, tmp_path):
    path = tmp_path / "bad.tflite"
    path.write_bytes(content)
    with pytest.raises(TfliteImportError, match=message):
        tflite_model.import_tflite(path)


def test_an_unknown_op_is_refused_by_its_operator(tmp_path):
    model = _model((8, 8, 3), L.Conv2D(4, 3), L.Lambda(lambda t: tf.math.cumsum(t, axis=1)))
    path = converted(model, tmp_path)
    with pytest.raises(TfliteImportError) as caught:
        tflite_model.import_tflite(path)
    assert "CUMSUM operator" in str(caught.value) and "no importer" in str(caught.value)


def test_an_import_that_differs_from_litert_is_refused(tmp_path, monkeypatch):
    path = converted(_model((8, 8, 3), L.Conv2D(4, 3, activation="relu")), tmp_path)
    wrong = lambda name: L.Activation("tanh", name=name)  # noqa: E731 - a fused ReLU as tanh
    monkeypatch.setitem(tflite_model._FUSED, 1, wrong)
    with pytest.raises(TfliteImportError, match=r"differs from LiteRT by .* refused"):
        tflite_model.import_tflite(path)


def test_an_unknown_custom_op_is_refused_by_name(tmp_path):
    """A converted model whose first operator is rewritten into a custom op "MyBlur"."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    path = converted(_model((8, 8, 3), L.Conv2D(4, 3), L.ReLU()), tmp_path)
    model = schema.ModelT.InitFromPackedBuf(open(path, "rb").read(), 0)
    code = model.operatorCodes[model.subgraphs[0].operators[0].opcodeIndex]
    code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.CUSTOM
    code.customCode = "MyBlur"
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    custom = tmp_path / "custom.tflite"
    custom.write_bytes(bytes(builder.Output()))
    with pytest.raises(TfliteImportError) as caught:
        tflite_model.import_tflite(custom)
    message = str(caught.value)
    assert message.startswith(f"{custom}: MyBlur operator ")
    assert "no importer for this custom op" in message


def _rewritten(path, tmp_path, change):
    """The model at `path` with `change(model, schema)` applied to its object tree, saved."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(open(path, "rb").read(), 0)
    change(model, schema)
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    out = tmp_path / "rewritten.tflite"
    out.write_bytes(bytes(builder.Output()))
    return str(out)


def test_sub_between_tensors_and_div_by_a_channel_constant(tmp_path):
    """SUB of two tensors from the converter; DIV by a per-channel constant written into the
    file by hand (the converter turns a division by a constant into MUL by its inverse): the
    MUL's operator and constant are rewritten into DIV by the constant's inverse."""
    inputs = keras.Input((6, 7, 3))
    difference = L.Subtract()([inputs, L.Conv2D(3, 1)(inputs)])
    model = keras.Model(inputs, L.Rescaling([0.5, 0.25, 2.0])(difference))
    path = converted(model, tmp_path)

    def to_div(model, schema):
        graph = model.subgraphs[0]
        for op in graph.operators:
            code = model.operatorCodes[op.opcodeIndex]
            if max(code.builtinCode, code.deprecatedBuiltinCode) != schema.BuiltinOperator.MUL:
                continue
            model.operatorCodes.append(schema.OperatorCodeT())
            model.operatorCodes[-1].builtinCode = schema.BuiltinOperator.DIV
            model.operatorCodes[-1].deprecatedBuiltinCode = schema.BuiltinOperator.DIV
            op.opcodeIndex = len(model.operatorCodes) - 1
            op.builtinOptionsType = schema.BuiltinOptions.DivOptions
            op.builtinOptions = schema.DivOptionsT()
            constant = graph.tensors[op.inputs[1]]
            buffer = model.buffers[constant.buffer]
            values = np.frombuffer(bytes(buffer.data), np.float32)
            buffer.data = np.frombuffer((1.0 / values).astype(np.float32).tobytes(), np.uint8)

    rewritten = _rewritten(path, tmp_path, to_div)
    codes = [c.builtinCode for c in tflite_model.read_tflite(rewritten).operatorCodes]
    assert 42 in codes  # BuiltinOperator.DIV
    network = tflite_model.import_tflite(rewritten)
    x = np.random.default_rng(2).standard_normal((1, 6, 7, 3)).astype("f4")
    np.testing.assert_allclose(np.asarray(network(x)), np.asarray(model(x)), atol=1e-5)
    kinds = {type(layer).__name__ for layer in network.layers}
    assert {"Subtract", "Rescaling"} <= kinds
