"""An independent numpy Caffe: protobuf wire encoding of caffemodels and the LargeFOV forward.

Written from Caffe's sources (caffe.proto field numbers, conv_layer / pooling_layer loops),
sharing no code with the package, so the converter is checked against Caffe's semantics
rather than against itself.
"""

import math
import struct

import numpy as np

MEAN_BGR = np.array([104.008, 116.669, 122.675])

# (name, kernel, pad, dilation, relu) of LargeFOV's convolutions, with the pool after each block.
LARGEFOV_PROTOTXT = [
    ("conv1_1", 3, 1, 1),
    ("conv1_2", 3, 1, 1),
    ("pool", 2),
    ("conv2_1", 3, 1, 1),
    ("conv2_2", 3, 1, 1),
    ("pool", 2),
    ("conv3_1", 3, 1, 1),
    ("conv3_2", 3, 1, 1),
    ("conv3_3", 3, 1, 1),
    ("pool", 2),
    ("conv4_1", 3, 1, 1),
    ("conv4_2", 3, 1, 1),
    ("conv4_3", 3, 1, 1),
    ("pool", 1),
    ("conv5_1", 3, 2, 2),
    ("conv5_2", 3, 2, 2),
    ("conv5_3", 3, 2, 2),
    ("pool", 1),
    ("avgpool",),
    ("fc6", 3, 12, 12),
    ("fc7", 1, 0, 1),
    ("fc8", 1, 0, 1),
]


# ------------------------------------------------------------------ protobuf wire format


def varint(n):
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def key(field, wire_type):
    return varint(field << 3 | wire_type)


def length_delimited(field, payload):
    return key(field, 2) + varint(len(payload)) + payload


def int_field(field, value):
    return key(field, 0) + varint(value)


def string_field(field, text):
    return length_delimited(field, text.encode())


def blob_v2(array):
    """BlobProto with a BlobShape (field 7) and packed float data (field 5)."""
    shape = length_delimited(1, b"".join(varint(d) for d in array.shape))
    data = struct.pack(f"<{array.size}f", *array.astype(np.float32).ravel())
    return length_delimited(7, shape) + length_delimited(5, data)


def blob_v1(array):
    """Legacy BlobProto: num/channels/height/width (fields 1-4), unpacked float data."""
    dims = (1,) * (4 - array.ndim) + array.shape
    out = b"".join(int_field(i + 1, d) for i, d in enumerate(dims))
    return out + b"".join(key(5, 5) + struct.pack("<f", v) for v in array.ravel())


def caffemodel_bytes(layers, legacy):
    """NetParameter bytes; `layers` is [(name, [blob arrays])], with bottom/top noise fields."""
    net = string_field(1, "deeplab_largefov")
    for name, blobs in layers:
        if legacy:  # V1LayerParameter in NetParameter.layers (2); CONVOLUTION enum is 4.
            body = string_field(2, "bottom") + string_field(3, name) + string_field(4, name)
            body += int_field(5, 4) + b"".join(length_delimited(6, blob_v1(b)) for b in blobs)
            net += length_delimited(2, body)
        else:  # LayerParameter in NetParameter.layer (100).
            body = string_field(1, name) + string_field(2, "Convolution")
            body += string_field(3, "bottom") + string_field(4, name)
            body += b"".join(length_delimited(7, blob_v2(b)) for b in blobs)
            net += length_delimited(100, body)
    return net


# --------------------------------------------------------------------- Caffe forward


def conv(x, weights, bias, pad, dilation):
    """Caffe Convolution, stride 1: x (C, H, W), weights (O, I, kh, kw)."""
    _, height, width = x.shape
    _, _, kh, kw = weights.shape
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    out_h = height + 2 * pad - (dilation * (kh - 1) + 1) + 1
    out_w = width + 2 * pad - (dilation * (kw - 1) + 1) + 1
    out = np.zeros((weights.shape[0], out_h, out_w)) + bias[:, None, None]
    for i in range(kh):
        for j in range(kw):
            patch = padded[
                :, i * dilation : i * dilation + out_h, j * dilation : j * dilation + out_w
            ]
            out += np.einsum("oi,ihw->ohw", weights[:, :, i, j], patch)
    return out


def pool(x, mode, kernel, stride, pad):
    """Transcription of Caffe's PoolingLayer forward (MAX and AVE) for x (C, H, W)."""
    channels, height, width = x.shape

    def pooled(size):
        out = math.ceil((size + 2 * pad - kernel) / stride) + 1
        return out - 1 if (out - 1) * stride >= size + pad else out

    out = np.zeros((channels, pooled(height), pooled(width)))
    for ph in range(out.shape[1]):
        for pw in range(out.shape[2]):
            hstart, wstart = ph * stride - pad, pw * stride - pad
            hend, wend = min(hstart + kernel, height + pad), min(wstart + kernel, width + pad)
            pool_size = (hend - hstart) * (wend - wstart)
            hstart, wstart = max(hstart, 0), max(wstart, 0)
            hend, wend = min(hend, height), min(wend, width)
            window = x[:, hstart:hend, wstart:wend]
            if mode == "max":
                out[:, ph, pw] = window.max(axis=(1, 2))
            else:
                out[:, ph, pw] = window.sum(axis=(1, 2)) / pool_size
    return out


def largefov_forward(image_rgb, blobs):
    """Caffe's test-time LargeFOV forward: RGB uint8 (H, W, 3) -> scores (h, w, classes)."""
    x = (image_rgb[..., ::-1].astype(np.float64) - MEAN_BGR).transpose(2, 0, 1)
    for step in LARGEFOV_PROTOTXT:
        if step[0] == "pool":
            x = pool(x, "max", 3, step[1], 1)
        elif step[0] == "avgpool":
            x = pool(x, "avg", 3, 1, 1)
        else:
            name, _, pad, dilation = step
            weights, bias = blobs[name]
            x = conv(x, weights.astype(np.float64), bias.astype(np.float64), pad, dilation)
            if name != "fc8":
                x = np.maximum(x, 0)
    return x.transpose(1, 2, 0)
