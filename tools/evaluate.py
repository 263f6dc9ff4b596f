"""Evaluates a trained network with DeepLab's test protocol, optionally with its dense CRF.

    python3 tools/evaluate.py --model=runs/shapes_base --dataset=segunravel_shapes \
        --split=val --pad_size=129 --output_json=runs/shapes_base/val.json [--crf]

--model is a training model dir, a checkpoint prefix or a .keras file; --input_scale,
--input_mean, --input_channels and --output read a model as the fixation tool does (a
one-channel head is background / foreground). Prints the per-class
IoU table, mean IoU and pixel accuracy; with --crf, a second column after DeepLab's fully
connected CRF (the `crf` extra: pip install -e ".[crf]"), from the same network pass. The
--crf_* flags default to DeepLab-LargeFOV's settings. --crf_search first cross-validates the
bilateral kernel on the first --crf_search_images images of the split, as DeepLab did on 100
VOC val images, writes the grid to --crf_search_json, and evaluates with the best setting.
"""

from absl import flags

from tf_segunravel import cli, flag_settings
from tf_segunravel.crf import CRFSettings
from tf_segunravel.errors import InputError

flags.DEFINE_string(
    "model", None, "A training model dir, checkpoint prefix, .keras, .onnx or .tflite file."
)
flags.DEFINE_string("dataset", "segunravel_shapes", "TFDS dataset name, or folder:<dir>.")
flags.DEFINE_string("split", "val", "Split to evaluate.")
flags.DEFINE_string("data_dir", None, "TFDS data dir (default: TFDS's own).")
flags.DEFINE_integer("pad_size", 513, "Images are padded to pad_size x pad_size.")
flags.DEFINE_integer(
    "batch_size",
    1,
    "Images a network pass (the scores and --crf_search's pass): faster on small networks; "
    "the same scores up to float rounding.",
)
flags.DEFINE_string("output_json", None, "Also write the results here.")
flags.DEFINE_boolean("crf", False, "Also score DeepLab's dense CRF on the softmax.")
flag_settings.define_flags(CRFSettings, prefix="crf_")
flags.DEFINE_boolean("crf_search", False, "Grid-search the bilateral kernel first (implies --crf).")
flags.DEFINE_integer("crf_search_images", 100, "Held-out images for --crf_search.")
flags.DEFINE_list("crf_search_weights", ["3", "4", "5"], "--crf_search: bilateral weights.")
flags.DEFINE_list("crf_search_xy_stds", ["50", "80", "121"], "--crf_search: bilateral xy stds.")
flags.DEFINE_list("crf_search_rgb_stds", ["3", "5", "10"], "--crf_search: bilateral rgb stds.")
flags.DEFINE_string("crf_search_json", None, "--crf_search: write the grid here.")
cli.define_model_flags()
flags.adopt_module_key_flags(cli)  # so --help lists them with the tool's own
flags.mark_flag_as_required("model")
cli.check_path_flags(output_files=["output_json", "crf_search_json"])
flags.register_validator("pad_size", lambda v: v >= 8, "--pad_size must be >= 8")
flags.register_validator("batch_size", lambda v: v >= 1, "--batch_size must be >= 1")
flags.register_validator("crf_search_images", lambda v: v >= 1, "--crf_search_images must be >= 1")


def _positive_numbers(values):
    try:
        return bool(values) and all(float(v) > 0 for v in values)
    except ValueError:
        return False


for _name in ("crf_search_weights", "crf_search_xy_stds", "crf_search_rgb_stds"):
    flags.register_validator(
        _name, _positive_numbers, f"--{_name} must be a list of positive numbers"
    )
# Flags generated from settings classes are declared by tf_segunravel.flag_settings; list them
# with the tool's own in --help.
flags.adopt_module_key_flags(flag_settings)
FLAGS = flags.FLAGS


def main(argv):
    del argv  # cli.run rejects positional arguments
    from tf_segunravel import crf
    from tf_segunravel.atomic import write_json
    from tf_segunravel.data import load_split
    from tf_segunravel.data.pipeline import dataset_classes
    from tf_segunravel.evaluation import crf_search, evaluate, format_table

    crf_settings = None
    if FLAGS.crf or FLAGS.crf_search:
        if not crf.available():
            flag = "--crf_search" if FLAGS.crf_search else "--crf"
            raise InputError(f"{flag} {crf.INSTALL_HINT}")
        crf_settings = flag_settings.from_flags(CRFSettings, prefix="crf_")
    network = cli.load_model().keras("--model")
    num_classes = network.num_classes
    examples = load_split(FLAGS.dataset, FLAGS.split, FLAGS.data_dir, num_classes)
    names, _ = dataset_classes(FLAGS.dataset, FLAGS.data_dir, num_classes)
    names = names or network.class_names
    if FLAGS.crf_search:
        grid = crf.search_grid(
            [float(v) for v in FLAGS.crf_search_weights],
            [float(v) for v in FLAGS.crf_search_xy_stds],
            [float(v) for v in FLAGS.crf_search_rgb_stds],
            base=crf_settings,
        )
        held_out = examples.take(FLAGS.crf_search_images)
        rows = crf_search(network, held_out, num_classes, grid, FLAGS.pad_size, FLAGS.batch_size)
        best = rows[0]
        crf_settings = CRFSettings(**{k: v for k, v in best.items() if k != "mean_iou"})
        print(
            f"crf_search: best of {len(rows)} on {FLAGS.crf_search_images} images: "
            f"bilateral weight {best['bilateral_weight']:g}, xy std "
            f"{best['bilateral_xy_std']:g}, rgb std {best['bilateral_rgb_std']:g} "
            f"(mean IoU {100 * best['mean_iou']:.2f})"
        )
        if FLAGS.crf_search_json:
            write_json(FLAGS.crf_search_json, {"images": FLAGS.crf_search_images, "grid": rows})
    results = evaluate(
        network, examples, num_classes, FLAGS.pad_size, names, crf_settings, FLAGS.batch_size
    )
    for line in format_table(results):
        print(line)
    if FLAGS.output_json:
        write_json(FLAGS.output_json, {"model": FLAGS.model, "split": FLAGS.split, **results})


def run():
    """The console entry point (setup.py)."""
    cli.run(main)


if __name__ == "__main__":
    run()
