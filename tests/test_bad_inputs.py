"""The bad-input battery: every tool, given broken files, paths and flags, as a user would.

Each case runs the tool in a subprocess with a timeout and requires exit status 1, one
line `<tool>: error: ...` naming the culprit, no traceback, and no output left behind.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.helpers import REPO_ROOT, last_line, run_tool, save_tiny_largefov


def _write_onnx_with_an_unknown_op(path):
    """A one-node ONNX model whose op (Erf) the importer does not know; without the onnx
    package, a file that is not one (the error then names the extra instead)."""
    try:
        from onnx import TensorProto, helper
    except ImportError:
        path.write_bytes(b"no onnx package")
        return
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])
    scores = helper.make_tensor_value_info("scores", TensorProto.FLOAT, None)
    node = helper.make_node("Erf", ["image"], ["scores"])
    graph = helper.make_graph([node], "erf", [image], [scores])
    path.write_bytes(helper.make_model(graph).SerializeToString())


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Every broken (and one good) input the cases use, made once."""
    import keras

    root = tmp_path_factory.mktemp("bad")
    rgb = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    (root / "images").mkdir()
    Image.fromarray(rgb).save(root / "images" / "good.png")
    png = (root / "images" / "good.png").read_bytes()
    (root / "truncated.png").write_bytes(png[: len(png) // 2])
    Image.fromarray(rgb).save(root / "photo.jpg")
    jpg = (root / "photo.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(jpg[: len(jpg) // 3])
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (root / "zero.png").write_bytes(b"")
    (root / "text.png").write_text("hello, not an image")
    (root / "garbage.keras").write_bytes(b"PK\x03\x04 not really a zip")
    (root / "text.keras").write_text("not a model")
    (root / "garbage.caffemodel").write_bytes(np.random.default_rng(1).bytes(300))
    (root / "garbage.onnx").write_bytes(np.random.default_rng(2).bytes(300))
    (root / "garbage.tflite").write_bytes(np.random.default_rng(3).bytes(300))
    _write_onnx_with_an_unknown_op(root / "erf.onnx")
    (root / "unknown_flag.cfg").write_text("--nosuchflag=1\n")
    (root / "bad_value.cfg").write_text("--steps=abc\n")
    (root / "a_file").write_text("in the way")
    inp = keras.Input((None, None, 3))
    lambda_model = keras.Model(
        inp, keras.layers.Lambda(lambda x: x * 2)(keras.layers.Conv2D(6, 1)(inp))
    )
    lambda_model.save(root / "lambda.keras")
    save_tiny_largefov(root / "tiny.keras", num_classes=6)
    for name, damage in (("labels", "label"), ("sizes", "size")):
        folder = root / name
        (folder / "images").mkdir(parents=True)
        (folder / "masks").mkdir()
        for stem in ("a", "b"):
            Image.fromarray(rgb).save(folder / "images" / f"{stem}.png")
            Image.fromarray(np.ones((40, 48), np.uint8), mode="L").save(
                folder / "masks" / f"{stem}.png"
            )
        if damage == "label":
            Image.fromarray(np.full((40, 48), 9, np.uint8), mode="L").save(
                folder / "masks" / "b.png"
            )
        else:
            Image.fromarray(np.ones((20, 48), np.uint8), mode="L").save(folder / "masks" / "b.png")
    return root


TINY_TRAIN = [
    "--steps=2",
    "--checkpoint_every=1",
    "--crop_size=33",
    "--width=0.0625",
    "--batch_size=2",
]

# (tool, arguments with {root}, {data} and {out} placeholders, text the error line must hold)
CASES = [
    # ------------------------------------------------------------------ fixations: images
    ("fixations", ["--images={root}/corrupt.png"], "corrupt.png: not a readable image"),
    ("fixations", ["--images={root}/zero.png"], "zero.png: not a readable image"),
    ("fixations", ["--images={root}/text.png"], "text.png: not a readable image"),
    ("fixations", ["--images={root}/truncated.png"], "truncated.png: not a readable image"),
    ("fixations", ["--images={root}/truncated.jpg"], "truncated.jpg: not a readable image"),
    ("fixations", ["--images={root}/missing.png"], "missing.png: no such file"),
    ("fixations", ["--images={root}/nothing/*.png"], "nothing/*.png: matches no file"),
    # ------------------------------------------------------------------ fixations: models, flags
    ("fixations", ["--model={root}/garbage.keras"], "garbage.keras: cannot load the .keras model"),
    ("fixations", ["--model={root}/text.keras"], "text.keras: cannot load the .keras model"),
    ("fixations", ["--model={root}/lambda.keras"], "lambda.keras: cannot load the .keras model"),
    ("fixations", ["--model={root}/garbage.onnx"], "garbage.onnx: not a readable ONNX file"),
    ("fixations", ["--model={root}/erf.onnx"], "erf.onnx: Erf node 'scores': no importer"),
    ("fixations", ["--model={root}/garbage.tflite"], "garbage.tflite: not a TFLite file"),
    ("fixations", ["--model={root}/missing.keras"], "missing.keras: no such file"),
    ("fixations", ["--masks={root}/nodir"], "--masks={root}/nodir: no such directory"),
    ("fixations", ["--k=0"], "--k must be a positive integer"),
    ("fixations", ["--contrast=99"], "--contrast=99: --contrast='99' is not a class"),
    ("fixations", ["--output_dir={root}/a_file/out"], "a_file is a file, not a directory"),
    (
        "fixations",
        ["--sigma=60"],
        "sigma=60 px: a heat-map blur of 60 px is wider than the image (40 x 48)",
    ),
    ("fixations", ["--ranking=everything"], "--ranking"),
    ("fixations", ["--sigma_unit=inches"], "--sigma_unit"),
    ("fixations", ["--path_weight=gradient"], "--path_weight"),
    # ------------------------------------------------------------------------- evaluate
    ("evaluate", ["--model={root}/garbage.keras"], "garbage.keras: cannot load the .keras model"),
    ("evaluate", ["--split=nosuch"], "--split=nosuch: Unknown split 'nosuch'"),
    ("evaluate", ["--dataset=nosuch"], "--dataset=nosuch: not a registered TFDS dataset"),
    ("evaluate", ["--pad_size=0"], "--pad_size"),
    ("evaluate", ["--batch_size=0"], "--batch_size must be >= 1"),
    ("evaluate", ["--output_json={root}/a_file/x.json"], "a_file is a file, not a directory"),
    (
        "evaluate",
        ["--dataset=folder:{root}/labels"],
        "b.png: label values [9] outside 0..5 and 255",
    ),
    (
        "evaluate",
        ["--dataset=folder:{root}/sizes"],
        "b.png: image is 48x40 but its mask is 48x20",
    ),
    # --------------------------------------------------------------------------- export
    ("export", ["--model={root}/garbage.keras"], "garbage.keras: cannot load the .keras model"),
    ("export", ["--model={root}/lambda.keras"], "lambda.keras: cannot load the .keras model"),
    ("export", ["--model={root}/erf.onnx"], "erf.onnx: Erf node 'scores': no importer"),
    ("export", ["--model={root}/garbage.tflite"], "garbage.tflite: not a TFLite file"),
    ("export", ["--export_dir={root}/a_file/sm"], "a_file is a file, not a directory"),
    ("export", ["--contrast=99"], "--contrast=99: --contrast='99' is not a class"),
    # -------------------------------------------------------------------- convert_caffe
    (
        "convert_caffe",
        ["--caffemodel={root}/garbage.caffemodel"],
        "garbage.caffemodel: not a caffemodel",
    ),
    ("convert_caffe", ["--caffemodel={root}/missing.caffemodel"], "missing.caffemodel"),
    (
        "convert_caffe",
        ["--caffemodel={root}/garbage.caffemodel", "--output={root}/a_file/w.weights.h5"],
        "a_file is a file, not a directory",
    ),
    # -------------------------------------------------------------------- convert_model
    ("convert_model", ["--model={root}/garbage.onnx"], "garbage.onnx: not a readable ONNX file"),
    ("convert_model", ["--model={root}/erf.onnx"], "erf.onnx: Erf node 'scores': no importer"),
    ("convert_model", ["--model={root}/missing.onnx"], "missing.onnx"),
    ("convert_model", ["--model={root}/garbage.tflite"], "garbage.tflite: not a TFLite file"),
    ("convert_model", ["--model={root}/tiny.keras"], "--model must be an .onnx or a .tflite"),
    (
        "convert_model",
        ["--model={root}/erf.onnx", "--output={out}/m.h5"],
        "--output must end with .keras",
    ),
    # ---------------------------------------------------------------------------- train
    ("train", ["--flagfile={root}/unknown_flag.cfg"], "nosuchflag"),
    ("train", ["--flagfile={root}/bad_value.cfg"], "--steps"),
    ("train", ["--flagfile={root}/missing.cfg"], "missing.cfg"),
    ("train", ["--model_dir={root}/a_file/run", *TINY_TRAIN], "a_file is a file, not a directory"),
    (
        "train",
        ["--init=model", "--init_path={root}/lambda.keras", *TINY_TRAIN],
        "lambda.keras: cannot load the .keras model",
    ),
    ("train", ["--init=vgg16", "--init_path={root}/garbage.keras", *TINY_TRAIN], "garbage.keras"),
    (
        "train",
        ["--dataset=folder:{root}/labels", "--num_classes=6", *TINY_TRAIN],
        "b.png: label values [9]",
    ),
    (
        "train",
        ["--dataset=folder:{root}/sizes", "--num_classes=6", *TINY_TRAIN],
        "b.png: image is 48x40 but its mask is 48x20",
    ),
    # ---------------------------------------------------------------------- experiments
    ("experiments", ["--output_dir={root}/a_file/x"], "a_file is a file, not a directory"),
    ("experiments", ["--split=nosuch"], "--split=nosuch: Unknown split 'nosuch'"),
    (
        "experiments",
        ["--experiment=location_over_seeds", "--models={root}/tiny.keras,{root}/garbage.keras"],
        "garbage.keras: cannot load the .keras model",
    ),
    (
        "experiments",
        ["--experiment=faithfulness_over_seeds", "--models={root}/tiny.keras,{root}/garbage.keras"],
        "garbage.keras: cannot load the .keras model",
    ),
    (
        "experiments",
        ["--experiment=faithfulness_over_seeds"],
        "--models is required by --experiment=location_over_seeds and faithfulness_over_seeds",
    ),
    (
        "experiments",
        ["--experiment=faithfulness_over_seeds", "--models={root}/tiny.keras", "--methods=lime"],
        "--methods: unknown ['lime']",
    ),
    (
        "experiments",
        ["--experiment=faithfulness", "--methods=fixations_density", "--sigma=200"],
        "sigma=200 px: a heat-map blur of 200 px is wider than the image (129 x 129)",
    ),
    # ----------------------------------------------------------------------------- demo
    (
        "demo",
        ["--output_dir={root}/a_file/demo"],
        "--output_dir={root}/a_file/demo: {root}/a_file is a file, not a directory",
    ),
    ("demo", ["--data_dir={root}/a_file/tfds"], "--data_dir={root}/a_file/tfds: "),
    ("demo", ["--seeds=a"], "--seeds must be integers"),
    ("demo", ["--steps=7"], "steps must be a multiple of checkpoint_every"),
]

# Each tool's required arguments, pointing at good inputs; a case replaces what it names.
REQUIRED = {
    "fixations": {"model": "{root}/tiny.keras", "images": "{root}/images", "output_dir": "{out}"},
    "evaluate": {"model": "{root}/tiny.keras", "data_dir": "{data}", "pad_size": "129"},
    "export": {"model": "{root}/tiny.keras", "export_dir": "{out}"},
    "convert_caffe": {"output": "{out}/w.weights.h5", "num_classes": "21"},
    "convert_model": {"output": "{out}/m.keras"},
    "train": {"model_dir": "{out}", "data_dir": "{data}"},
    "experiments": {"model": "{root}/tiny.keras", "data_dir": "{data}", "output_dir": "{out}"},
    "demo": {"output_dir": "{out}"},
}


@pytest.mark.slow
@pytest.mark.parametrize(
    "tool, arguments, message", CASES, ids=[f"{c[0]}-{'-'.join(c[1])[:40]}" for c in CASES]
)
def test_bad_input_is_one_line_and_leaves_nothing(
    tmp_path, files, shapes_data_dir, tool, arguments, message
):
    values = {"root": files, "data": shapes_data_dir, "out": tmp_path / "out"}
    flags = {name: value for name, value in REQUIRED[tool].items()}
    for argument in arguments:
        name, _, value = argument.lstrip("-").partition("=")
        flags[name] = value
    args = [f"--{name}={value}".format(**values) for name, value in flags.items()]
    before = sorted(os.listdir(files))
    proc = run_tool(tool, *args, timeout=300)
    error = last_line(proc.stderr)
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert error.startswith(f"{tool}: error: "), error
    assert message.format(**values) in error, error
    assert not (tmp_path / "out").exists(), sorted((tmp_path / "out").rglob("*"))
    assert sorted(os.listdir(files)) == before  # nothing written beside the inputs either


def test_the_battery_is_large_enough():
    assert len(CASES) >= 35
    assert {c[0] for c in CASES} == set(REQUIRED)
    tools = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools")
    assert set(REQUIRED) == {f[:-3] for f in os.listdir(tools) if f[0] != "_" and f.endswith(".py")}


@pytest.mark.parametrize("tool", sorted(REQUIRED))  # every tool (the battery checks the set)
def test_flags_are_checked_before_tensorflow_loads(tool):
    """A tool defines and checks its flags without importing TensorFlow (seconds), so a bad
    flag is reported at once."""
    script = (
        "import runpy, sys; "
        f"runpy.run_path({os.path.join(REPO_ROOT, 'tools', tool + '.py')!r}, run_name='x'); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def test_path_flag_error_names_the_flag_once(tmp_path):
    """A path check's message loses only its own "--flag=value: " prefix (absl adds the same
    one), even when the value itself holds ": "."""
    from absl import flags as absl_flags

    from tf_segunravel.cli import check_path_flags

    values = absl_flags.FlagValues()
    absl_flags.DEFINE_string("out", None, "An output directory.", flag_values=values)
    check_path_flags(output_dirs=["out"], flag_values=values)
    (tmp_path / "a_file").write_text("in the way")
    value = f"{tmp_path}/a_file/x: y"
    with pytest.raises(absl_flags.IllegalFlagValueError) as raised:
        values(["tool", f"--out={value}"])
    assert str(raised.value) == (
        f"flag --out={value}: {tmp_path}/a_file is a file, not a directory"
    )


def test_library_errors_name_parameters_and_tools_name_flags():
    from absl import flags

    from tf_segunravel import cli

    flag_values = flags.FlagValues()
    flags.DEFINE_string("model_dir", None, "", flag_values=flag_values)
    flags.DEFINE_boolean("overwrite", False, "", flag_values=flag_values)
    message = "dir: trained with width=0.5; use another model_dir=<dir> or overwrite=True"
    assert cli.flag_message(message, flag_values) == (
        "dir: trained with width=0.5; use another --model_dir=<dir> or --overwrite=True"
    )
    assert cli.flag_message("model_dir: no such directory", flag_values) == (
        "--model_dir: no such directory"
    )
