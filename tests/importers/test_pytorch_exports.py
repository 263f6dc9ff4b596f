"""The segmentation networks of segmentation-models-pytorch and torchvision, as both of
PyTorch's exporters write them (TorchScript at opset 17 with a dynamic height and width, dynamo
at opset 18), imported and checked against onnxruntime, unravelled, and run through the
fixation tool. The fixtures are the exporters' graphs with their weights filled from a seed
(tests/importers/pytorch/make_fixtures.py, which needs torch; these tests do not)."""

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from tests.helpers import run_tool  # noqa: E402
from tests.importers.pytorch import fixtures  # noqa: E402
from tf_segunravel.importers import onnx_model  # noqa: E402

IMPORTED = [(network, exporter) for network in fixtures.NETWORKS for exporter in fixtures.EXPORTERS]
# The fast suite imports one encoder of each network; the slow tool test takes them all.
FAST = [
    pytest.param(case, marks=[pytest.mark.slow] if "mobilenet_v2" in case[0] else [])
    for case in IMPORTED
]


def _id(case):
    network, exporter = case
    return f"{network.split(':')[1].replace('/', '-')}-{exporter}"


def _filled(network, exporter, tmp_path):
    # The dynamo exports keep their weights as external data, as large exports do.
    external = exporter == "dynamo"
    path = tmp_path / fixtures.fixture_name(network, exporter)
    return fixtures.filled(network, exporter, path, seed=0, external=external)


def test_the_fixtures_are_what_the_script_makes():
    import os

    expected = {fixtures.fixture_name(n, e) for n in fixtures.NETWORKS for e in fixtures.EXPORTERS}
    found = {f for f in os.listdir(fixtures.FIXTURE_DIR) if f.endswith(".onnx")}
    assert found == expected
    for network, exporter in [(n, e) for n in fixtures.NETWORKS for e in fixtures.EXPORTERS]:
        model = onnx.load(fixtures.fixture_path(network, exporter))
        opset = {o.domain: o.version for o in model.opset_import}[""]
        assert opset == (17 if exporter == "torchscript" else 18), (network, exporter)
        dims = model.graph.input[0].type.tensor_type.shape.dim
        dynamic = exporter == "torchscript" and "PSPNet" not in network
        assert [d.HasField("dim_param") for d in dims[2:]] == [dynamic, dynamic], network
        assert fixtures.REGENERATED_KEY in {p.key for p in model.metadata_props}


@pytest.mark.parametrize("case", FAST, ids=_id)
def test_a_pytorch_export_imports_within_tolerance(case, tmp_path):
    network, exporter = case
    height, width = fixtures.NETWORKS[network]
    path = _filled(network, exporter, tmp_path)
    imported = onnx_model.import_onnx(path, input_size=(height, width))
    worst = onnx_model.compare(onnx_model.read_onnx(path), imported, path)
    assert worst <= onnx_model.TOLERANCE
    kinds = {type(layer).__name__ for layer in imported.layers}
    assert not kinds & {"Permute", "Lambda", "TFOpLambda"}, kinds
    assert imported.output_names == ["scores"]


# MAnet, whose attention over positions has its own rule, in the fast suite; the slow tool
# test below unravels every network.
UNRAVELLED = [("smp:MAnet/resnet18", "torchscript")]


@pytest.mark.parametrize("case", UNRAVELLED, ids=_id)
def test_an_imported_pytorch_export_unravels_inside_its_image(case, tmp_path):
    from tf_segunravel.unravel import FixationSettings, SegUnravel

    network, exporter = case
    height, width = fixtures.NETWORKS[network]
    path = _filled(network, exporter, tmp_path)
    imported = onnx_model.import_onnx(path, input_size=(height, width))
    image = np.random.default_rng(1).standard_normal((1, height, width, 3)).astype("f4")
    result = SegUnravel(imported, FixationSettings(sigma=2.0))(image)
    points, counts = result.for_image(0)
    predicted = np.unique(np.argmax(imported(image)[0], axis=-1))
    assert len(points) and (counts > 0).all()
    assert points[:, 1].max() < height and points[:, 2].max() < width and points.min() >= 0
    assert set(np.unique(points[:, 0])) == set(predicted)


@pytest.mark.slow  # the fixation tool in a subprocess per network: about 10 s each
@pytest.mark.parametrize("case", IMPORTED, ids=_id)
def test_the_fixation_tool_explains_a_pytorch_export(case, tmp_path):
    from PIL import Image

    network, exporter = case
    height, width = fixtures.NETWORKS[network]
    model = _filled(network, exporter, tmp_path)
    image = tmp_path / "photo.png"
    pixels = np.random.default_rng(2).integers(0, 255, (height + 7, width - 5, 3), np.uint8)
    Image.fromarray(pixels).save(image)
    out = tmp_path / "out"
    proc = run_tool(
        "fixations",
        f"--model={model}",
        f"--images={image}",
        f"--output_dir={out}",
        f"--input_size={height},{width}",
        "--input_scale=0.00392157",
        "--output=scores",
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(out / "photo.npz") as saved:
        points = saved["points"]
    assert len(points) and points[:, 1].max() < height + 7 and points[:, 2].max() < width - 5
