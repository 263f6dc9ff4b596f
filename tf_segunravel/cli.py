"""What every absl binary in `tools/` shares: quiet TensorFlow logs and one-line input errors."""

import os
import sys

# Set before TensorFlow is imported anywhere, so its C++ start-up chatter stays out of the
# one-line errors and progress output users read.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging

from tf_segunravel.errors import InputError


def run(main):
    """`absl.app.run(main)`, turning an `InputError` into `<tool>: error: <message>`, exit 1.

    Tools take flags only: positional arguments are an error too.
    """

    def guarded(argv):
        try:
            if len(argv) > 1:
                raise InputError(f"unexpected arguments: {' '.join(argv[1:])}")
            if not flags.FLAGS["verbosity"].present:
                # TFDS and SavedModel writing log every file at INFO; --verbosity=0 shows it.
                logging.set_verbosity(logging.WARNING)
            return main(argv)
        except InputError as e:
            tool = os.path.splitext(os.path.basename(sys.argv[0]))[0]
            print(f"{tool}: error: {e}", file=sys.stderr)
            sys.exit(1)

    app.run(guarded)


UNRAVEL_FLAGS = ("k", "mass", "shift", "sigma", "outlier_radius", "weighted")


def define_unravel_flags():
    """The unravel and heat-map flags shared by tools/fixations.py and tools/export.py."""
    flags.DEFINE_integer("k", 1, "Unravel: channels kept per unit (branching when > 1).")
    flags.DEFINE_float(
        "mass",
        None,
        "Unravel: instead of --k, keep the fewest channels reaching this fraction of a "
        "unit's positive contribution.",
    )
    flags.DEFINE_enum("shift", "partial", ["none", "partial", "full"], "Unravel: spatial shift.")
    flags.DEFINE_float("sigma", 20.0, "Heat maps: Gaussian blur in pixels.")
    flags.DEFINE_float(
        "outlier_radius",
        0.02,
        "Heat maps: outlier radius, fraction of the image diagonal (0: keep every point).",
    )
    flags.DEFINE_boolean("weighted", True, "Heat maps: weight points by their path counts.")
    flags.register_validator("k", lambda v: v >= 1, "--k must be >= 1")
    flags.register_validator("mass", lambda v: v is None or 0 < v <= 1, "--mass must be in (0, 1]")
    flags.register_validator("sigma", lambda v: v >= 0, "--sigma must be >= 0")
    flags.register_validator(
        "outlier_radius", lambda v: 0 <= v < 1, "--outlier_radius must be in [0, 1)"
    )


def unravel_settings():
    """{name: value} of the flags `define_unravel_flags` defined."""
    return {name: flags.FLAGS[name].value for name in UNRAVEL_FLAGS}
