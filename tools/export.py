"""Exports a trained network as a self-contained SavedModel.

    python3 tools/export.py --model=runs/shapes_base --export_dir=runs/shapes_base/saved_model \
        [--k=1 --shift=partial --sigma=20 --outlier_radius=0.02] [--overwrite]

Signatures: serving_default (labels, probabilities, scores), fixations (points, counts,
seeds, heat maps, labels), serving_bytes (encoded JPEG/PNG in) and metadata; see
tf_segunravel/export.py. Inspect with `saved_model_cli show --dir DIR --all`.
"""

from absl import flags

from tf_segunravel import cli
from tf_segunravel.errors import InputError

flags.DEFINE_string("model", None, "A training model dir, checkpoint prefix or .keras file.")
flags.DEFINE_string("export_dir", None, "SavedModel directory to write.")
flags.DEFINE_boolean("overwrite", False, "Replace an existing --export_dir.")
flags.DEFINE_integer("k", 1, "Unravel: channels kept per unit.")
flags.DEFINE_float("mass", None, "Unravel: mass fraction instead of --k.")
flags.DEFINE_enum("shift", "partial", ["none", "partial", "full"], "Unravel: spatial shift.")
flags.DEFINE_float("sigma", 20.0, "Heat maps: Gaussian blur in pixels.")
flags.DEFINE_float("outlier_radius", 0.02, "Heat maps: outlier radius (fraction of diagonal).")
flags.DEFINE_boolean("weighted", True, "Heat maps: weight points by their counts.")
flags.mark_flags_as_required(["model", "export_dir"])
flags.register_validator("k", lambda v: v >= 1, "--k must be >= 1")
flags.register_validator("mass", lambda v: v is None or 0 < v <= 1, "--mass must be in (0, 1]")
flags.register_validator("sigma", lambda v: v >= 0, "--sigma must be >= 0")
flags.register_validator(
    "outlier_radius", lambda v: 0 <= v < 1, "--outlier_radius must be in [0, 1)"
)
FLAGS = flags.FLAGS


def main(argv):
    del argv  # cli.run rejects positional arguments
    import os

    from tf_segunravel.export import export_saved_model
    from tf_segunravel.training import load_network

    if os.path.exists(FLAGS.export_dir) and not FLAGS.overwrite:
        raise InputError(f"--export_dir={FLAGS.export_dir}: already exists; pass --overwrite")
    network = load_network(FLAGS.model)
    settings = export_saved_model(
        network,
        FLAGS.export_dir,
        overwrite=FLAGS.overwrite,
        k=FLAGS.k,
        mass=FLAGS.mass,
        shift=FLAGS.shift,
        sigma=FLAGS.sigma,
        outlier_radius=FLAGS.outlier_radius,
        weighted=FLAGS.weighted,
    )
    print(f"wrote {FLAGS.export_dir}: {settings}")


if __name__ == "__main__":
    cli.run(main)
