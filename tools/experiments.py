"""The dissertation's experiments: unravel analyses of trained models, and the template sweep.

    python3 tools/experiments.py --experiment=fixation_location --model=runs/shapes_base \
        --dataset=segunravel_shapes --split=val --pad_size=129 --output_dir=runs/experiments
    python3 tools/experiments.py --experiment=template_sweep --output_dir=runs/sweep \
        --seeds=0,1,2,3,4 [--weights=0.01,0.05,0.1,0.5,1,5 --variants=cosine,... --scratch]
    python3 tools/experiments.py --experiment=location_over_seeds --output_dir=runs/location \
        --models=runs/sweep/seed0/base,runs/sweep/seed1/base,... --pad_size=129

fixation_location, shift_variants, k_analysis and salient_parts analyse --model (all: the
four) and write <name>.csv, <name>.json and <name>.png into --output_dir. template_sweep
trains and fine-tunes on segunravel_shapes (tf_segunravel/template_sweep.py) and writes
template_sweep.json and .md; it resumes when run again. location_over_seeds runs
fixation_location, plain and contrastive (--contrast=runner_up), on each of --models and
reports each class kind's share with a 95% interval over the models. faithfulness (asked for
by name) scores --methods with deletion, insertion, ROAD, energy, pointing game and the
randomisation check, and faithfulness_over_seeds runs it on each of --models (resuming) and
reports each fixation method minus every other method with a 95% interval over the models.
"""

from absl import flags

from tf_segunravel import cli, methods, settings
from tf_segunravel.experiment_registry import (
    ALL_EXPERIMENTS,
    MODEL,
    MODEL_EXPERIMENTS,
    MODELS,
    REGISTRY,
)

flags.DEFINE_enum(
    "experiment",
    "fixation_location",
    [*REGISTRY, "all"],
    "Which experiment to run: "
    + "; ".join(f"{name}: {e.summary}" for name, e in REGISTRY.items())
    + "; all: every experiment that analyses one --model, bar faithfulness.",
)
flags.DEFINE_string("model", None, "A training model dir, checkpoint prefix or .keras file.")
flags.DEFINE_list(
    "models",
    None,
    "location_over_seeds, faithfulness_over_seeds: the models, one per training seed.",
)
flags.DEFINE_list("seeds", ["0", "1", "2", "3", "4"], "template_sweep: training seeds.")
flags.DEFINE_list(
    "weights", ["0.01", "0.05", "0.1", "0.5", "1", "5"], "template_sweep: template weights."
)
flags.DEFINE_list(
    "variants",
    ["cosine", "correlation", "selective_cosine", "selective_correlation"],
    "template_sweep: template-loss variants.",
)
flags.DEFINE_boolean(
    "scratch", False, "template_sweep: also train the template loss from scratch per seed."
)
flags.DEFINE_string("dataset", "segunravel_shapes", "TFDS dataset name, or folder:<dir>.")
flags.DEFINE_string("split", "val", "Split to analyse.")
flags.DEFINE_string("data_dir", None, "TFDS data dir (default: TFDS's own).")
flags.DEFINE_string("output_dir", None, "Directory for the tables and figures.")
flags.DEFINE_integer("max_images", 100, "Images analysed (k_analysis: a fifth of them).")
flags.DEFINE_integer("pad_size", 513, "Evaluation pad size for the IoU column.")
flags.DEFINE_list(
    "methods",
    ["fixations", "fixations_contrastive", "gradcam", "saliency", "segment_prior"],
    f"faithfulness: explanation methods, from the table in tf_segunravel/methods.py "
    f"({', '.join(methods.names())}).",
)
flags.DEFINE_string(
    "gradcam_layer",
    None,
    "faithfulness: Grad-CAM's feature layer (default: the last "
    "convolution wider than 1 x 1, fc6 for LargeFOV).",
)
flags.DEFINE_integer("faithfulness_steps", 50, "faithfulness: steps of each deletion curve.")
flags.DEFINE_integer(
    "min_pixels", 64, "faithfulness: a predicted class is scored where it covers this many pixels."
)
flags.DEFINE_integer(
    "randomisation_images",
    2,
    "faithfulness: images of the cascading randomisation check (one map per weighted layer "
    "per method each; 0 skips it).",
)
flags.DEFINE_integer(
    "randomisation_layers",
    None,
    "faithfulness: how many weighted layers the randomisation check re-draws, from the "
    "scores down (default: every one).",
)
flags.register_validator("min_pixels", lambda v: v >= 1, "--min_pixels must be >= 1")
flags.register_validator(
    "randomisation_layers", lambda v: v is None or v >= 1, "--randomisation_layers must be >= 1"
)
flags.register_validator(
    "randomisation_images", lambda v: v >= 0, "--randomisation_images must be >= 0"
)
cli.define_fixation_flags(defaults={"sigma": 6.0})
cli.define_model_flags()
flags.adopt_module_key_flags(cli)  # so --help lists them with the tool's own
flags.mark_flags_as_required(["output_dir"])
cli.check_path_flags(output_dirs=["output_dir"])
flags.register_validator("max_images", lambda v: v >= 1, "--max_images must be >= 1")
flags.register_validator(
    "seeds", lambda v: bool(v) and all(s.isdigit() for s in v), "--seeds must be integers"
)
flags.register_multi_flags_validator(
    ["experiment", "model"],
    lambda f: f["experiment"] not in [*MODEL_EXPERIMENTS, "all"] or f["model"],
    "--model is required by the unravel experiments",
)
flags.register_multi_flags_validator(
    ["experiment", "models"],
    lambda f: (
        f["experiment"] == "all" or REGISTRY[f["experiment"]].reads != MODELS or bool(f["models"])
    ),
    "--models is required by --experiment=location_over_seeds and faithfulness_over_seeds "
    "(one model per seed)",
)
# Flags generated from settings classes are declared by tf_segunravel.settings; list them
# with the tool's own in --help.
flags.adopt_module_key_flags(settings)
FLAGS = flags.FLAGS


def template_sweep():
    from tf_segunravel import template_sweep as sweep
    from tf_segunravel.errors import InputError

    try:
        weights = [float(w) for w in FLAGS.weights]
    except ValueError as e:
        raise InputError(f"--weights={','.join(FLAGS.weights)}: not numbers") from e
    summary = sweep.run(
        FLAGS.output_dir,
        seeds=[int(s) for s in FLAGS.seeds],
        weights=weights,
        variants=FLAGS.variants,
        scratch=FLAGS.scratch,
        data_dir=FLAGS.data_dir,
        log=lambda message: print(f"template_sweep: {message}", flush=True),
    )
    print(sweep.markdown(summary))


def location_over_seeds():
    from tf_segunravel import experiments as ex

    # every model checked first
    networks = [cli.load_model(path, "models").keras("--models") for path in FLAGS.models]
    inputs = analysis_inputs(networks[0])
    summary = ex.location_over_seeds(
        networks,
        FLAGS.models,
        inputs.examples,
        inputs.num_classes,
        inputs.class_names,
        inputs.class_kinds,
        settings=inputs.settings,
        max_images=inputs.max_images,
        pad_size=inputs.pad_size,
        output_dir=FLAGS.output_dir,
        source=inputs.source,
    )
    print(ex.location_markdown(summary))


def analysis_inputs(network):
    """The one-model experiments' inputs, on `network` (a checked ModelGraph)."""
    from tf_segunravel import experiments as ex
    from tf_segunravel.data import load_split
    from tf_segunravel.data.pipeline import dataset_classes

    num_classes = network.num_classes
    examples = load_split(FLAGS.dataset, FLAGS.split, FLAGS.data_dir, num_classes)
    names, kinds = dataset_classes(FLAGS.dataset, FLAGS.data_dir, num_classes)
    names = names or network.class_names
    return ex.AnalysisInputs(
        network,
        examples,
        num_classes,
        names,
        kinds,
        cli.fixation_settings(names, num_classes),
        max_images=FLAGS.max_images,
        pad_size=FLAGS.pad_size,
        methods=tuple(FLAGS.methods),
        gradcam_layer=FLAGS.gradcam_layer,
        faithfulness_steps=FLAGS.faithfulness_steps,
        min_pixels=FLAGS.min_pixels,
        randomisation_images=FLAGS.randomisation_images,
        randomisation_layers=FLAGS.randomisation_layers,
        figure_dir=FLAGS.output_dir,
        source=f"{FLAGS.dataset}/{FLAGS.split} in {FLAGS.data_dir or 'the default data dir'}",
    )


def check_methods():
    """A missing baselines extra or an unknown method fails before any model loads."""
    methods.check(FLAGS.methods)


def no_pairs(error):
    from tf_segunravel.errors import InputError

    return InputError(
        f"--min_pixels={FLAGS.min_pixels}: {error} (--max_images={FLAGS.max_images}); "
        f"lower --min_pixels or read more images"
    )


def faithfulness_over_seeds():
    check_methods()
    from tf_segunravel import experiments as ex
    from tf_segunravel.experiments.faithfulness import NoPairsError

    # every model checked first
    networks = [cli.load_model(path, "models").keras("--models") for path in FLAGS.models]
    inputs = analysis_inputs(networks[0])
    try:
        result = ex.faithfulness_over_seeds(networks, FLAGS.models, inputs, FLAGS.output_dir)
    except NoPairsError as e:
        raise no_pairs(e) from e
    print(ex.faithfulness_markdown(result))


def main(argv):
    del argv  # cli.run rejects positional arguments
    reads = MODEL if FLAGS.experiment == "all" else REGISTRY[FLAGS.experiment].reads
    if reads == MODELS:
        if FLAGS.experiment == "faithfulness_over_seeds":
            return faithfulness_over_seeds()
        return location_over_seeds()
    if reads != MODEL:
        return template_sweep()
    if FLAGS.experiment == "faithfulness":  # before any model loads
        check_methods()
    from tf_segunravel import experiments as ex
    from tf_segunravel.experiments.faithfulness import NoPairsError

    inputs = analysis_inputs(cli.load_model().keras("--model"))
    chosen = ALL_EXPERIMENTS if FLAGS.experiment == "all" else [FLAGS.experiment]
    for name in chosen:
        try:
            rows, summary = ex.run_experiment(name, inputs)
        except NoPairsError as e:
            raise no_pairs(e) from e
        ex.write_results(rows, FLAGS.output_dir, name, summary)
        print(f"{name}: wrote {FLAGS.output_dir}/{name}.csv .json .png {summary or ''}")


def run():
    """The console entry point (setup.py)."""
    cli.run(main)


if __name__ == "__main__":
    run()
