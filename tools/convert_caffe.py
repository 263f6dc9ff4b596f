"""Converts a DeepLab-LargeFOV `.caffemodel` into Keras weights, without Caffe installed.

    python tools/convert_caffe.py --caffemodel=train_iter_6000.caffemodel \
        --output=largefov_voc12.weights.h5 [--num_classes=21]

The output loads with `deeplab_largefov(num_classes, width).load_weights(output)`; the width
(1.0 for the released models) and class count are printed. Both the legacy V1 `layers` and the
current `layer` formats are read.
"""

from absl import flags

from tf_segunravel import cli

flags.DEFINE_string("caffemodel", None, "Path of the DeepLab-LargeFOV .caffemodel to read.")
flags.DEFINE_string("output", None, "Path of the Keras weights file to write (*.weights.h5).")
flags.DEFINE_integer(
    "num_classes", None, "Expected number of classes of fc8 (default: whatever the file has)."
)
flags.mark_flags_as_required(["caffemodel", "output"])
cli.check_path_flags(inputs=["caffemodel"], output_files=["output"])
flags.register_validator(
    "output", lambda p: p.endswith(".weights.h5"), "--output must end with .weights.h5"
)
flags.register_validator(
    "num_classes", lambda n: n is None or n >= 1, "--num_classes must be at least 1"
)
FLAGS = flags.FLAGS


def main(argv):
    del argv  # cli.run rejects positional arguments
    from tf_segunravel.atomic import save_atomically
    from tf_segunravel.models import convert_caffemodel

    model = convert_caffemodel(FLAGS.caffemodel, num_classes=FLAGS.num_classes)
    save_atomically(FLAGS.output, model.save_weights)
    width = model.get_layer("conv1_1").filters / 64
    classes = model.get_layer("fc8").filters
    print(f"wrote {FLAGS.output}: deeplab_largefov(num_classes={classes}, width={width:g})")


def run():
    """The console entry point (setup.py)."""
    cli.run(main)


if __name__ == "__main__":
    run()
