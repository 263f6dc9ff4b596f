"""Evaluates a trained network with DeepLab's test protocol.

    python3 tools/evaluate.py --model=runs/shapes_base --dataset=segunravel_shapes \
        --split=val --pad_size=129 --output_json=runs/shapes_base/val.json

--model is a training model dir, a checkpoint prefix or a .keras file. Prints the per-class
IoU table, mean IoU and pixel accuracy.
"""

import os

from absl import flags

from tf_segunravel import cli

flags.DEFINE_string("model", None, "Model dir, checkpoint prefix or .keras file.")
flags.DEFINE_string("dataset", "segunravel_shapes", "TFDS dataset name, or folder:<dir>.")
flags.DEFINE_string("split", "val", "Split to evaluate.")
flags.DEFINE_string("data_dir", None, "TFDS data dir (default: TFDS's own).")
flags.DEFINE_integer("pad_size", 513, "Images are padded to pad_size x pad_size.")
flags.DEFINE_string("output_json", None, "Also write the results here.")
flags.mark_flag_as_required("model")
flags.register_validator("pad_size", lambda v: v >= 8, "--pad_size must be >= 8")
FLAGS = flags.FLAGS


def class_names_of(dataset, data_dir, num_classes):
    from tf_segunravel.data.pipeline import dataset_metadata

    names = dataset_metadata(dataset, data_dir).get("class_names")
    return list(names) if names and len(names) == num_classes else None


def main(argv):
    del argv  # cli.run rejects positional arguments
    from tf_segunravel.atomic import write_json
    from tf_segunravel.data import load_split
    from tf_segunravel.evaluation import evaluate, format_table
    from tf_segunravel.training import load_network

    network = load_network(FLAGS.model)
    num_classes = network.output.shape[-1]
    examples = load_split(FLAGS.dataset, FLAGS.split, FLAGS.data_dir, num_classes)
    names = class_names_of(FLAGS.dataset, FLAGS.data_dir, num_classes)
    results = evaluate(network, examples, num_classes, FLAGS.pad_size, names)
    for line in format_table(results):
        print(line)
    if FLAGS.output_json:
        os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output_json)), exist_ok=True)
        write_json(FLAGS.output_json, {"model": FLAGS.model, "split": FLAGS.split, **results})


if __name__ == "__main__":
    cli.run(main)
