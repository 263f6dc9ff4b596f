"""The dissertation's unravel analyses on a dataset split (shapes by default, VOC if present).

    python3 tools/experiments.py --experiment=fixation_location --model=runs/shapes_base \
        --dataset=segunravel_shapes --split=val --pad_size=129 --output_dir=runs/experiments

--experiment is fixation_location, shift_variants, k_analysis, salient_parts or all. Each
writes <name>.csv, <name>.json and <name>.png into --output_dir.
"""

from absl import flags

from tf_segunravel import cli, settings

flags.DEFINE_enum(
    "experiment",
    "fixation_location",
    ["fixation_location", "shift_variants", "k_analysis", "salient_parts", "all"],
    "Which analysis to run.",
)
flags.DEFINE_string("model", None, "A training model dir, checkpoint prefix or .keras file.")
flags.DEFINE_string("dataset", "segunravel_shapes", "TFDS dataset name, or folder:<dir>.")
flags.DEFINE_string("split", "val", "Split to analyse.")
flags.DEFINE_string("data_dir", None, "TFDS data dir (default: TFDS's own).")
flags.DEFINE_string("output_dir", None, "Directory for the tables and figures.")
flags.DEFINE_integer("max_images", 100, "Images analysed (k_analysis: a fifth of them).")
flags.DEFINE_integer("pad_size", 513, "Evaluation pad size for the IoU column.")
cli.define_fixation_flags(defaults={"sigma": 6.0})
flags.adopt_module_key_flags(cli)  # so --help lists them with the tool's own
flags.mark_flags_as_required(["model", "output_dir"])
flags.register_validator("max_images", lambda v: v >= 1, "--max_images must be >= 1")
# Flags generated from settings classes are declared by tf_segunravel.settings; list them
# with the tool's own in --help.
flags.adopt_module_key_flags(settings)
FLAGS = flags.FLAGS


def main(argv):
    del argv  # cli.run rejects positional arguments
    from tf_segunravel import experiments as ex
    from tf_segunravel.data import load_split
    from tf_segunravel.data.pipeline import dataset_classes
    from tf_segunravel.training import load_network

    network = load_network(FLAGS.model)
    num_classes = network.outputs[0].shape[-1]
    examples = load_split(FLAGS.dataset, FLAGS.split, FLAGS.data_dir, num_classes)
    names, kinds = dataset_classes(FLAGS.dataset, FLAGS.data_dir, num_classes)
    settings = cli.fixation_settings()
    chosen = ex.EXPERIMENTS if FLAGS.experiment == "all" else [FLAGS.experiment]
    for name in chosen:
        summary = {}
        if name == "fixation_location":
            rows = ex.fixation_location(
                network,
                examples,
                num_classes,
                names,
                kinds,
                settings=settings,
                max_images=FLAGS.max_images,
                pad_size=FLAGS.pad_size,
            )
            summary = ex.by_kind(rows)
        elif name == "shift_variants":
            rows = ex.shift_variants(
                network,
                examples,
                num_classes,
                names,
                kinds,
                settings=settings,
                max_images=FLAGS.max_images,
                pad_size=FLAGS.pad_size,
            )
        elif name == "k_analysis":
            rows = ex.k_analysis(network, examples, max_images=max(1, FLAGS.max_images // 5))
        else:
            rows = ex.salient_parts(
                network,
                examples,
                num_classes,
                names,
                settings=settings,
                max_images=FLAGS.max_images,
            )
        ex.write_results(rows, FLAGS.output_dir, name, summary)
        print(f"{name}: wrote {FLAGS.output_dir}/{name}.csv .json .png {summary or ''}")


if __name__ == "__main__":
    cli.run(main)
