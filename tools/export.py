"""Exports a trained network as a self-contained SavedModel.

    python3 tools/export.py --model=runs/shapes_base --export_dir=runs/shapes_base/saved_model \
        [--k=1 --shift=partial --contrast=runner_up --sigma=20 --outlier_radius=0.02] \
        [--overwrite]

Signatures: serving_default (labels, probabilities, scores), fixations (points, counts,
seeds, heat maps, labels), serving_bytes (encoded JPEG/PNG in) and metadata; see
tf_segunravel/export.py. Inspect with `saved_model_cli show --dir DIR --all`.
"""

import os

from absl import flags

from tf_segunravel import cli, flag_settings

flags.DEFINE_string(
    "model", None, "A training model dir, checkpoint prefix, .keras, .onnx or .tflite file."
)
flags.DEFINE_string("export_dir", None, "SavedModel directory to write.")
flags.DEFINE_boolean("overwrite", False, "Replace an existing --export_dir.")
cli.define_fixation_flags()
cli.define_model_flags()
flags.adopt_module_key_flags(cli)  # so --help lists them with the tool's own
flags.mark_flags_as_required(["model", "export_dir"])
cli.check_path_flags(output_dirs=["export_dir"])
flags.register_multi_flags_validator(
    ["export_dir", "overwrite"],
    lambda f: not f["export_dir"] or f["overwrite"] or not os.path.exists(f["export_dir"]),
    "--export_dir already exists; pass --overwrite to replace it",
)
# Flags generated from settings classes are declared by tf_segunravel.flag_settings; list them
# with the tool's own in --help.
flags.adopt_module_key_flags(flag_settings)
FLAGS = flags.FLAGS


def main(argv):
    del argv  # cli.run rejects positional arguments
    from tf_segunravel.export import export_saved_model

    network = cli.load_model().keras("--model")
    fixation_settings = cli.fixation_settings(network.class_names, network.num_classes)
    settings = export_saved_model(
        network, FLAGS.export_dir, fixation_settings, overwrite=FLAGS.overwrite, name=FLAGS.model
    )
    print(f"wrote {FLAGS.export_dir}: {settings}")


def run():
    """The console entry point (setup.py)."""
    cli.run(main)


if __name__ == "__main__":
    run()
