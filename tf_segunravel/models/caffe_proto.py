"""Reads the weight blobs of a `.caffemodel` without Caffe installed.

A caffemodel is a binary `caffe.NetParameter` protobuf. Caffe's generated `caffe_pb2` module is
not on PyPI, so we declare the handful of messages and fields we need (numbers as in Caffe's
`caffe.proto`) and let the protobuf runtime parse the file; every other field is skipped as
unknown. Both layer formats are read: the current `layer` (LayerParameter, field 100) and the
legacy V1 `layers` (V1LayerParameter, field 2) that the released DeepLab models use.
"""

import functools

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message, message_factory

from tf_segunravel.errors import InputError

_FIELD = descriptor_pb2.FieldDescriptorProto

# message -> [(field name, number, type, label, message type or None, packed)]
_CAFFE_SUBSET: dict[str, list[tuple]] = {
    "BlobShape": [("dim", 1, _FIELD.TYPE_INT64, _FIELD.LABEL_REPEATED, None, True)],
    "BlobProto": [
        ("num", 1, _FIELD.TYPE_INT32, _FIELD.LABEL_OPTIONAL, None, False),
        ("channels", 2, _FIELD.TYPE_INT32, _FIELD.LABEL_OPTIONAL, None, False),
        ("height", 3, _FIELD.TYPE_INT32, _FIELD.LABEL_OPTIONAL, None, False),
        ("width", 4, _FIELD.TYPE_INT32, _FIELD.LABEL_OPTIONAL, None, False),
        ("data", 5, _FIELD.TYPE_FLOAT, _FIELD.LABEL_REPEATED, None, True),
        ("shape", 7, _FIELD.TYPE_MESSAGE, _FIELD.LABEL_OPTIONAL, ".caffe.BlobShape", False),
        ("double_data", 8, _FIELD.TYPE_DOUBLE, _FIELD.LABEL_REPEATED, None, True),
    ],
    "LayerParameter": [
        ("name", 1, _FIELD.TYPE_STRING, _FIELD.LABEL_OPTIONAL, None, False),
        ("type", 2, _FIELD.TYPE_STRING, _FIELD.LABEL_OPTIONAL, None, False),
        ("blobs", 7, _FIELD.TYPE_MESSAGE, _FIELD.LABEL_REPEATED, ".caffe.BlobProto", False),
    ],
    # `type` is an enum in Caffe; an int32 reads the same varint without declaring the enum.
    "V1LayerParameter": [
        ("name", 4, _FIELD.TYPE_STRING, _FIELD.LABEL_OPTIONAL, None, False),
        ("type", 5, _FIELD.TYPE_INT32, _FIELD.LABEL_OPTIONAL, None, False),
        ("blobs", 6, _FIELD.TYPE_MESSAGE, _FIELD.LABEL_REPEATED, ".caffe.BlobProto", False),
    ],
    "NetParameter": [
        ("name", 1, _FIELD.TYPE_STRING, _FIELD.LABEL_OPTIONAL, None, False),
        ("layers", 2, _FIELD.TYPE_MESSAGE, _FIELD.LABEL_REPEATED, ".caffe.V1LayerParameter", False),
        ("layer", 100, _FIELD.TYPE_MESSAGE, _FIELD.LABEL_REPEATED, ".caffe.LayerParameter", False),
    ],
}


@functools.cache
def net_parameter_class() -> type:
    """The protobuf class for the subset of `caffe.NetParameter` declared above."""
    file_proto = descriptor_pb2.FileDescriptorProto(
        name="tf_segunravel/caffe_subset.proto", package="caffe", syntax="proto2"
    )
    for message_name, fields in _CAFFE_SUBSET.items():
        message_proto = file_proto.message_type.add(name=message_name)
        for field_name, number, field_type, label, type_name, packed in fields:
            field = message_proto.field.add(
                name=field_name, number=number, type=field_type, label=label
            )
            if type_name:
                field.type_name = type_name
            if packed:
                field.options.packed = True
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file_proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("caffe.NetParameter"))


def _blob_to_array(blob):
    if blob.HasField("shape"):
        shape = tuple(blob.shape.dim)
    else:  # Legacy 4-D blobs store their shape in num/channels/height/width.
        shape = (blob.num, blob.channels, blob.height, blob.width)
    values = blob.data if len(blob.data) else blob.double_data
    array = np.asarray(values, dtype=np.float32)
    if array.size != int(np.prod(shape)):
        raise InputError(f"blob of shape {shape} holds {array.size} values")
    return array.reshape(shape)


def read_caffemodel(path: str) -> dict[str, list[np.ndarray]]:
    """Returns {layer name: [blob arrays in Caffe layout]} for every layer that has blobs.

    Convolution kernels come back as (out, in, height, width) and biases as (out,), exactly as
    Caffe stores them; `tf_segunravel.models.weights` maps them onto a Keras model.

    Raises:
      InputError: the file is missing, is not a caffemodel, or holds no weights.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise InputError(f"{path}: cannot read caffemodel ({e.strerror})") from e
    net = net_parameter_class()()
    try:
        net.ParseFromString(data)
    except message.DecodeError as e:
        raise InputError(f"{path}: not a caffemodel (binary protobuf parse failed: {e})") from e
    weights = {}
    for layer in list(net.layer) + list(net.layers):
        if len(layer.blobs):
            try:
                weights[layer.name] = [_blob_to_array(blob) for blob in layer.blobs]
            except InputError as e:
                raise InputError(f"{path}: layer {layer.name!r}: {e}") from e
    if not weights:
        raise InputError(f"{path}: not a caffemodel with weights (no layer has blobs)")
    return weights
