"""Converts an ONNX model into a Keras `.keras` file, checked against onnxruntime, so that
later runs load it without converting again (the `onnx` extra).

    python tools/convert_onnx.py --onnx=unet.onnx --output=unet.keras [--input_size=256,320]

Every tool also takes the `.onnx` file itself (`--model=unet.onnx`) and converts it on each
run; the `.keras` file skips that. What is imported, to what tolerance, and what is refused:
docs/importers.md.
"""

from absl import flags

from tf_segunravel import cli

flags.DEFINE_string("onnx", None, "Path of the .onnx model to read.")
flags.DEFINE_string("output", None, "Path of the Keras model to write (*.keras).")
cli.define_input_size_flag()
flags.mark_flags_as_required(["onnx", "output"])
cli.check_path_flags(inputs=["onnx"], output_files=["output"])
flags.register_validator("output", lambda p: p.endswith(".keras"), "--output must end with .keras")
flags.adopt_module_key_flags(cli)  # --input_size in --help
FLAGS = flags.FLAGS


def main(argv):
    del argv  # cli.run rejects positional arguments
    from tf_segunravel.atomic import save_atomically
    from tf_segunravel.loading import import_onnx_model

    model = import_onnx_model(FLAGS.onnx, cli.input_size_flag())
    save_atomically(FLAGS.output, model.save)
    shape = "x".join(str(d) for d in model.inputs[0].shape[1:3])
    print(f"wrote {FLAGS.output}: {len(model.layers)} layers, input {shape}, checked")


def run():
    """The console entry point (setup.py)."""
    cli.run(main)


if __name__ == "__main__":
    run()
