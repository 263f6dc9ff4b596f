"""Importers: networks from other frameworks as Keras 3 functional models made of the layer
kinds the unravel's table knows, each checked against its source's own runtime before use.

- `onnx_model.import_onnx(path)`: an ONNX file (PyTorch's exporters' output), checked against
  onnxruntime. Needs the `onnx` extra.
- `tflite_model.import_tflite(path)`: a TFLite file (TensorFlow's converter's output,
  MediaPipe's segmenters), checked against LiteRT. Needs the `tflite` extra.

The op table, what each op becomes and to what tolerance, is in docs/importers.md.
"""
