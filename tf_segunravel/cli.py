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


def atomic_output_path(path):
    """A temporary sibling of `path` with the same suffixes; `os.replace` it into place.

    Writers save to this path, then move it, so a crash never leaves a half-written `path`.
    """
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f".tmp-{os.getpid()}-{name}")
