"""Exports the PyTorch segmentation networks that the ONNX importer is tested on, with both of
PyTorch's exporters, as small fixtures: the exporter's graph, every op and attribute as it
wrote them, without the large weight tensors, which the tests fill from a seed
(`fixtures.filled`).

    python3 -m pip install torch==2.14.1 torchvision==0.29.1 \
        segmentation-models-pytorch==0.6.0 onnxscript==0.7.2
    python3 tests/importers/pytorch/make_fixtures.py

The networks are random-weight (no download), as a user's own training would start. The
tests need no torch: a fixture holds what the exporter made, and a weight tensor of the same
shape drawn from a seed exercises the graph as the exporter's own values would.

Why strip the weights: a resnet18 U-Net is 57 MB of float32 that does not compress, and 32
of them do not belong in a repository. What an importer can get wrong is in the graph (ops,
attributes, layouts, shape subgraphs) and in the small tensors, which are kept exactly:
biases, batch-norm statistics, GroupNorm's affine terms, shape constants.
"""

import json
import os
import sys

from absl import app, flags

if __package__ in (None, ""):  # run as a script: make `tests.importers.pytorch` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))))  # fmt: skip

from tests.importers.pytorch.fixtures import (
    EXPORTERS,
    FIXTURE_DIR,
    NETWORKS,
    REGENERATED_KEY,
    STRIPPED_FROM,
    fixture_name,
)

FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", FIXTURE_DIR, "Where the fixtures are written.")
flags.DEFINE_list("networks", [], "Only these networks (names of NETWORKS); all when empty.")

CLASSES = 5


def build(network: str):
    """The PyTorch module of `network` ("smp:<Arch>/<encoder>" or "torchvision:<name>"), in
    eval mode, returning a plain scores tensor."""
    import torch

    torch.manual_seed(0)
    kind, name = network.split(":")
    if kind == "smp":
        import segmentation_models_pytorch as smp

        arch, encoder = name.split("/")
        model = getattr(smp, arch)(encoder_name=encoder, encoder_weights=None, classes=CLASSES)
    else:
        from torchvision.models import segmentation

        factory = {
            "fcn_resnet50": segmentation.fcn_resnet50,
            "deeplabv3_mobilenet_v3_large": segmentation.deeplabv3_mobilenet_v3_large,
            "lraspp_mobilenet_v3_large": segmentation.lraspp_mobilenet_v3_large,
        }[name]
        options = {"weights": None, "weights_backbone": None, "num_classes": CLASSES}
        if not name.startswith("lraspp"):
            options["aux_loss"] = False
        inner = factory(**options)

        class Scores(torch.nn.Module):
            """torchvision's segmenters return {"out": scores}."""

            def __init__(self):
                super().__init__()
                self.inner = inner

            def forward(self, x):
                return self.inner(x)["out"]

        model = Scores()
    return model.eval()


def export(network: str, exporter: str, size: tuple[int, int], path: str) -> None:
    """`network` exported by `exporter` ("torchscript": opset 17, height and width dynamic
    where the network allows; "dynamo": opset 18, static) to `path`."""
    import torch

    model = build(network)
    x = torch.randn(1, 3, *size)
    names = {"input_names": ["image"], "output_names": ["scores"]}
    if exporter == "torchscript":
        # PSPNet's adaptive pooling cannot be exported for a dynamic size.
        dynamic = None if "PSPNet" in network else {"image": {2: "height", 3: "width"}}
        torch.onnx.export(model, (x,), path, dynamo=False, opset_version=17,
                          dynamic_axes=dynamic, **names)  # fmt: skip
    else:
        torch.onnx.export(model, (x,), path, dynamo=True, opset_version=18,
                          external_data=False, **names)  # fmt: skip


def strip(path: str) -> None:
    """Removes the data of every float tensor of `path` with at least STRIPPED_FROM values and
    two or more axes (the weights), listing their names and standard deviations under
    REGENERATED_KEY, so that the filled weights keep each layer's scale. The nodes' own
    metadata (where in the Python source each came from) goes too: it is no part of the
    graph's arithmetic."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(path)
    regenerated = {}
    for tensor in model.graph.initializer:
        array = numpy_helper.to_array(tensor)
        if array.dtype == np.float32 and array.ndim >= 2 and array.size >= STRIPPED_FROM:
            tensor.ClearField("raw_data")
            tensor.ClearField("float_data")
            regenerated[tensor.name] = float(array.std())
    for node in model.graph.node:  # the dynamo exporter's stack traces: 80% of its file
        node.ClearField("metadata_props")
        node.ClearField("doc_string")
    entry = model.metadata_props.add()
    entry.key, entry.value = REGENERATED_KEY, json.dumps(regenerated)
    onnx.save(model, path)


def main(argv):
    del argv
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    unknown = sorted(set(FLAGS.networks) - set(NETWORKS))
    if unknown:
        raise app.UsageError(f"--networks: unknown {unknown}; known: {sorted(NETWORKS)}")
    for network, size in NETWORKS.items():
        if FLAGS.networks and network not in FLAGS.networks:
            continue
        for exporter in EXPORTERS:
            path = os.path.join(FLAGS.output_dir, fixture_name(network, exporter))
            export(network, exporter, size, path)
            strip(path)
            print(f"wrote {path} ({os.path.getsize(path) // 1000} kB)", flush=True)


if __name__ == "__main__":
    app.run(main)
