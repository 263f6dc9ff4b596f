"""Segmentation fixations for image files: points, heat maps, figures, statistics.

    python3 tools/fixations.py --model=runs/shapes_base --images=photos/ \
        --output_dir=runs/fixations [--k=1 --shift=partial --sigma=20 --flow]

--model is a .keras file of any Keras model mapping images to per-pixel class scores (a
one-channel sigmoid head is two classes; --input_scale, --input_mean and --input_channels
say what input it expects, --output which output holds the scores), a training model dir,
or a SavedModel from tools/export.py (its `fixations` signature, whose unravel and input
settings were fixed at export; the heat-map flags still apply).
For each image <stem> it writes <stem>.npz, <stem>.png and <stem>.json (and
<stem>_flow.gif with --flow) into --output_dir; see tf_segunravel/fixation_files.py.
"""

import os
import sys

from absl import flags

from tf_segunravel import cli, flag_settings, methods
from tf_segunravel.crf import CRFSettings
from tf_segunravel.errors import InputError

flags.DEFINE_string(
    "model",
    None,
    "A .keras file, a training model dir, an exported SavedModel dir, an .onnx or a .tflite file.",
)
flags.DEFINE_list("images", None, "Image files, globs or directories (comma-separated).")
flags.DEFINE_string("output_dir", None, "Directory for the per-image outputs.")
cli.define_fixation_flags()
cli.define_model_flags()
flags.adopt_module_key_flags(cli)  # so --help lists them with the tool's own
flags.DEFINE_list("classes", None, "Only these classes (ids or names).")
flags.DEFINE_list("class_names", None, "Class names by id, or 'voc' or 'shapes'.")
flags.DEFINE_string("masks", None, "Directory of ground-truth label PNGs matched by stem.")
flags.DEFINE_boolean("seed_from_masks", False, "Seed from the --masks instead of predictions.")
flags.DEFINE_integer("max_side", None, "Downsize larger images to this side first.")
flags.DEFINE_boolean("flow", False, "Also write <stem>_flow.gif.")
flags.DEFINE_boolean("keep_going", False, "Report bad images and go on; exit 1 at the end.")
flags.DEFINE_list(
    "compare",
    [],
    "Methods drawn beside the fixations in <stem>_compare.png and saved in the .npz as "
    "compare_<method>, from the table in tf_segunravel/methods.py "
    f"({', '.join(methods.names())}; the tf-keras-vis ones need the baselines extra).",
)
flags.DEFINE_string(
    "gradcam_layer",
    None,
    "--compare: Grad-CAM's feature layer (default: the last convolution wider than 1 x 1).",
)
flags.DEFINE_boolean(
    "crf",
    False,
    "Refine the predicted labels with DeepLab's dense CRF (the crf extra): the prediction "
    "panel and the inside_predicted statistics use the CRF labels, while the unravel seeds "
    "still come from the network's own scores.",
)
flag_settings.define_flags(CRFSettings, prefix="crf_")
flags.mark_flags_as_required(["model", "images", "output_dir"])
cli.check_path_flags(
    inputs=["model"], input_dirs=["masks"], input_patterns=["images"], output_dirs=["output_dir"]
)
flags.register_validator("max_side", lambda v: v is None or v >= 8, "--max_side must be >= 8")
flags.register_multi_flags_validator(
    ["seed_from_masks", "masks"],
    lambda f: not f["seed_from_masks"] or f["masks"],
    "--seed_from_masks needs --masks",
)
# Flags generated from settings classes are declared by tf_segunravel.flag_settings; list them
# with the tool's own in --help.
flags.adopt_module_key_flags(flag_settings)
FLAGS = flags.FLAGS


def resolve_class_names(spec):
    if not spec:
        return None
    if spec == ["voc"]:
        from tf_segunravel.data.labels import VOC_CLASSES

        return list(VOC_CLASSES)
    if spec == ["shapes"]:
        from tf_segunravel.data.shapes import CLASS_NAMES

        return list(CLASS_NAMES)
    return spec


def resolve_classes(spec, names, num_classes):
    if not spec:
        return None
    classes = []
    for item in spec:
        if item.isdigit():
            value = int(item)
        elif names and item in names:
            value = names.index(item)
        else:
            raise InputError(f"--classes: {item!r} is neither a class id nor a known name")
        if value >= num_classes:
            raise InputError(f"--classes: {value} is not below the model's {num_classes}")
        classes.append(value)
    return classes


def check_export_settings(recorded, fixation_settings):
    """A SavedModel's `fixations` signature traces with the unravel and input settings it was
    exported with (`recorded`, its metadata); a flag given here that differs would be
    silently ignored, so refuse it."""
    path = FLAGS.model
    given = {name: getattr(fixation_settings, name) for name in fixation_settings.UNRAVEL_FIELDS}
    given.update((f"input_{name}", value) for name, value in cli.input_settings().as_dict().items())
    given["output"] = FLAGS.output
    for name, value in given.items():
        given_as = (
            cli.fixation_flag_given(name)
            if name in fixation_settings.UNRAVEL_FIELDS
            else (f"--{name}={value}" if FLAGS[name].present else None)
        )
        if given_as is not None and str(recorded.get(name)) != str(value):
            raise InputError(
                f"{given_as}: {path} was exported with {name}={recorded.get(name)}, "
                f"fixed in its fixations signature; re-export with tools/export.py {given_as}"
            )


def main(argv):
    del argv  # cli.run rejects positional arguments
    from tf_segunravel.fixation_files import FixationWriter, expand_images

    if FLAGS.compare:  # before any model loads
        methods.check(FLAGS.compare, flag="compare")
    crf_settings = None
    if FLAGS.crf:
        from tf_segunravel import crf

        if not crf.available():
            raise InputError(f"--crf {crf.INSTALL_HINT}")
        crf_settings = flag_settings.from_flags(CRFSettings, prefix="crf_")
    paths = expand_images(FLAGS.images)
    loaded = cli.load_model()
    names = resolve_class_names(FLAGS.class_names) or loaded.class_names
    classes = resolve_classes(FLAGS.classes, names, loaded.num_classes)
    fixation_settings = cli.fixation_settings(names, loaded.num_classes)
    if loaded.saved_model is not None:
        check_export_settings(loaded.saved_model.metadata, fixation_settings)
    writer = FixationWriter(
        loaded,
        FLAGS.output_dir,
        fixation_settings,
        classes=classes,
        class_names=names,
        max_side=FLAGS.max_side,
        flow=FLAGS.flow,
        seed_from_masks=FLAGS.seed_from_masks,
        crf_settings=crf_settings,
        compare=FLAGS.compare,
        gradcam_layer=FLAGS.gradcam_layer,
    )
    import keras

    progress = keras.utils.Progbar(len(paths), unit_name="image")
    failures = []
    for number, path in enumerate(paths, start=1):
        mask = None
        if FLAGS.masks:
            stem = os.path.splitext(os.path.basename(path))[0]
            mask = os.path.join(FLAGS.masks, stem + ".png")
            if not os.path.isfile(mask):
                mask = None
        try:
            writer.process(path, mask)
        except InputError as e:
            if not FLAGS.keep_going:
                raise
            failures.append(str(e))
        progress.update(number)
    if failures:
        print(f"fixations: {len(failures)} of {len(paths)} images failed:", file=sys.stderr)
        for failure in failures:
            print(f"  {failure}", file=sys.stderr)
        sys.exit(1)


def run():
    """The console entry point (setup.py)."""
    cli.run(main)


if __name__ == "__main__":
    run()
