"""Converts an ONNX or TFLite model into a Keras `.keras` file, checked against its source's
runtime (onnxruntime or LiteRT), so that later runs load it without converting again (the
`onnx` or `tflite` extra).

    python tools/convert_model.py --model=unet.onnx --output=unet.keras [--input_size=256,320]
    python tools/convert_model.py --model=selfie_segmentation.tflite --output=selfie.keras

Every tool also takes the `.onnx` or `.tflite` file itself (`--model=unet.onnx`) and converts
it on each run; the `.keras` file skips that. What is imported, to what tolerance, and what is
refused: docs/importers.md.
"""

from absl import flags

from tf_segunravel import cli

flags.DEFINE_string("model", None, "Path of the .onnx or .tflite model to read.")
flags.DEFINE_string("output", None, "Path of the Keras model to write (*.keras).")
cli.define_input_size_flag()
flags.mark_flags_as_required(["model", "output"])
cli.check_path_flags(inputs=["model"], output_files=["output"])
flags.register_validator(
    "model",
    lambda p: p is None or p.lower().endswith((".onnx", ".tflite")),
    "--model must be an .onnx or a .tflite file",
)
flags.register_validator("output", lambda p: p.endswith(".keras"), "--output must end with .keras")
flags.adopt_module_key_flags(cli)  # --input_size in --help
FLAGS = flags.FLAGS


def main(argv):
    del argv  # cli.run rejects positional arguments
    from tf_segunravel.atomic import save_atomically
    from tf_segunravel.loading import ONNX_SUFFIX, import_onnx_model, import_tflite_model

    if FLAGS.model.lower().endswith(ONNX_SUFFIX):
        model = import_onnx_model(FLAGS.model, cli.input_size_flag())
    else:
        model = import_tflite_model(FLAGS.model, cli.input_size_flag())
    save_atomically(FLAGS.output, model.save)
    shape = "x".join(str(d) for d in model.inputs[0].shape[1:3])
    print(f"wrote {FLAGS.output}: {len(model.layers)} layers, input {shape}, checked")


def run():
    """The console entry point (setup.py)."""
    cli.run(main)


if __name__ == "__main__":
    run()
