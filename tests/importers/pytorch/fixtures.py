"""The PyTorch exports the ONNX importer is tested on (`make_fixtures.py` writes them), and
their weights filled back from a seed."""

import json
import os

import numpy as np

FIXTURE_DIR = os.path.dirname(os.path.abspath(__file__))

# network: the (height, width) it is exported at. smp's encoders need multiples of 32; PSPNet's
# pyramid pools its stride-8 map into 1, 2, 3 and 6 cells, which the TorchScript exporter takes
# only where they divide the map (12 x 12 at 96 x 96).
NETWORKS = {
    **{
        f"smp:{arch}/{encoder}": (96, 96) if arch == "PSPNet" else (64, 96)
        for arch in ("Unet", "FPN", "DeepLabV3Plus", "PSPNet", "Linknet", "MAnet", "UnetPlusPlus")
        for encoder in ("resnet18", "mobilenet_v2")
    },
    "torchvision:fcn_resnet50": (64, 96),
    "torchvision:deeplabv3_mobilenet_v3_large": (64, 96),
    "torchvision:lraspp_mobilenet_v3_large": (64, 96),
}
EXPORTERS = ("torchscript", "dynamo")

REGENERATED_KEY = "tf_segunravel.regenerated_weights"
STRIPPED_FROM = 1024  # float tensors of at least this many values and 2+ axes are stripped


def fixture_name(network: str, exporter: str) -> str:
    """smp:Unet/resnet18, torchscript -> smp_Unet_resnet18_torchscript.onnx"""
    return f"{network.replace(':', '_').replace('/', '_')}_{exporter}.onnx"


def fixture_path(network: str, exporter: str) -> str:
    return os.path.join(FIXTURE_DIR, fixture_name(network, exporter))


def filled(network: str, exporter: str, out_path, seed: int = 0, external: bool = False):
    """The fixture with its stripped weights drawn as N(0, std) (each tensor's own std in the
    export), saved at `out_path` (its weights as external data beside it with `external`).
    Returns `out_path`."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(fixture_path(network, exporter))
    stds = json.loads({p.key: p.value for p in model.metadata_props}[REGENERATED_KEY])
    rng = np.random.default_rng(seed)
    for tensor in model.graph.initializer:
        if tensor.name in stds:
            values = rng.standard_normal(tuple(tensor.dims)) * stds[tensor.name]
            tensor.CopyFrom(numpy_helper.from_array(values.astype(np.float32), tensor.name))
    out_path = str(out_path)
    if external:
        onnx.save(model, out_path, save_as_external_data=True,
                  location=os.path.basename(out_path) + ".data", size_threshold=1024)  # fmt: skip
    else:
        onnx.save(model, out_path)
    return out_path
