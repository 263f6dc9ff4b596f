"""The dissertation's experiments: unravel analyses of trained models, and the template sweep.

    python3 tools/experiments.py --experiment=fixation_location --model=runs/shapes_base \
        --dataset=segunravel_shapes --split=val --pad_size=129 --output_dir=runs/experiments
    python3 tools/experiments.py --experiment=template_sweep --output_dir=runs/sweep \
        --seeds=0,1,2,3,4 [--weights=0.01,0.05,0.1,0.5,1,5 --variants=cosine,... --scratch]
    python3 tools/experiments.py --experiment=location_over_seeds --output_dir=runs/location \
        --models=runs/sweep/seed0/base,runs/sweep/seed1/base,... --pad_size=129

fixation_location, shift_variants, k_analysis and salient_parts analyse --model (all: the
four) and write <name>.csv, <name>.json and <name>.png into --output_dir. template_sweep
trains and fine-tunes on segunravel_shapes (tf_segunravel/experiments/template_sweep.py) and writes
template_sweep.json and .md; it resumes when run again. location_over_seeds runs
fixation_location, plain and contrastive (--contrast=runner_up), on each of --models and
reports each class kind's share with a 95% interval over the models. faithfulness (asked for
by name) scores --methods with deletion, insertion, ROAD, energy, pointing game and the
randomisation check, and faithfulness_over_seeds runs it on each of --models (resuming) and
reports each fixation method minus every other method with a 95% interval over the models.
choose_fixation_variant applies the faithfulness study's rule to faithfulness runs on
development networks (--results, their output dirs) and writes choose_fixation_variant.json
and .md:

    python3 tools/experiments.py --experiment=choose_fixation_variant \
        --results=runs/study/dev_shapes,runs/study/dev_selfie --output_dir=runs/study/choice
"""

from absl import flags

from tf_segunravel import cli, flag_settings, methods
from tf_segunravel.experiment_registry import (
    ALL_EXPERIMENTS,
    MODEL,
    MODEL_EXPERIMENTS,
    MODELS,
    REGISTRY,
    RESULTS,
    ExperimentSettings,
)

flags.DEFINE_enum(
    "experiment",
    "fixation_location",
    [*REGISTRY, "all"],
    "Which experiment to run: "
    + "; ".join(f"{name}: {e.summary}" for name, e in REGISTRY.items())
    + "; all: every experiment that analyses one --model, bar faithfulness.",
)
flags.DEFINE_string(
    "model", None, "A training model dir, checkpoint prefix, .keras, .onnx or .tflite file."
)
flags.DEFINE_list(
    "models",
    None,
    "location_over_seeds, faithfulness_over_seeds: the models, one per training seed.",
)
flags.DEFINE_list(
    "results",
    None,
    "choose_fixation_variant: output dirs of --experiment=faithfulness on the development "
    "networks, each with its faithfulness.json.",
)
flags.DEFINE_string("dataset", "segunravel_shapes", "TFDS dataset name, or folder:<dir>.")
flags.DEFINE_string("split", "val", "Split to analyse.")
flags.DEFINE_string("data_dir", None, "TFDS data dir (default: TFDS's own).")
flags.DEFINE_string("output_dir", None, "Directory for the tables and figures.")
# --max_images, --methods, --seeds, ...: one flag per field of ExperimentSettings, with its
# default, help and check.
flag_settings.define_flags(
    ExperimentSettings,
    helps={
        "methods": f"faithfulness: explanation methods, from the table in "
        f"tf_segunravel/methods.py ({', '.join(methods.names())})."
    },
)
cli.define_fixation_flags(defaults={"sigma": 6.0})
cli.define_model_flags()
flags.adopt_module_key_flags(cli)  # so --help lists them with the tool's own
flags.mark_flags_as_required(["output_dir"])
cli.check_path_flags(output_dirs=["output_dir"])
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
flags.register_multi_flags_validator(
    ["experiment", "results"],
    lambda f: (
        f["experiment"] == "all" or REGISTRY[f["experiment"]].reads != RESULTS or bool(f["results"])
    ),
    "--results is required by --experiment=choose_fixation_variant (faithfulness output dirs)",
)
# Flags generated from settings classes are declared by tf_segunravel.flag_settings; list them
# with the tool's own in --help.
flags.adopt_module_key_flags(flag_settings)
FLAGS = flags.FLAGS


def options():
    return flag_settings.from_flags(ExperimentSettings)


def analysis_inputs(network):
    """The inputs of the experiments that analyse models, on `network` (a checked model)."""
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
        options(),
        figure_dir=FLAGS.output_dir,
        source=f"{FLAGS.dataset}/{FLAGS.split} in {FLAGS.data_dir or 'the default data dir'}",
    )


def no_pairs(error):
    from tf_segunravel.errors import InputError

    return InputError(
        f"--min_pixels={FLAGS.min_pixels}: {error} (--max_images={FLAGS.max_images}); "
        f"lower --min_pixels or read more images"
    )


def run_training(name):
    from tf_segunravel import experiments as ex

    summary = ex.run_training(
        name,
        FLAGS.output_dir,
        options(),
        data_dir=FLAGS.data_dir,
        log=lambda message: print(f"{name}: {message}", flush=True),
    )
    print(ex.markdown(name, summary))


def run_over_seeds(name):
    from tf_segunravel import experiments as ex
    from tf_segunravel.experiments.faithfulness import NoPairsError

    # every model checked first
    networks = [cli.load_model(path, "models").keras("--models") for path in FLAGS.models]
    inputs = analysis_inputs(networks[0])
    try:
        summary = ex.run_over_seeds(name, networks, FLAGS.models, inputs, FLAGS.output_dir)
    except NoPairsError as e:
        raise no_pairs(e) from e
    print(ex.markdown(name, summary))


def run_on_results(name):
    from tf_segunravel import experiments as ex

    summary = ex.run_on_results(name, FLAGS.results, FLAGS.output_dir)
    print(ex.markdown(name, summary))


def run_on_model(chosen):
    from tf_segunravel import experiments as ex
    from tf_segunravel.experiments.faithfulness import NoPairsError

    inputs = analysis_inputs(cli.load_model().keras("--model"))
    for name in chosen:
        try:
            rows, summary = ex.run_experiment(name, inputs)
        except NoPairsError as e:
            raise no_pairs(e) from e
        ex.write_results(rows, FLAGS.output_dir, name, summary)
        print(f"{name}: wrote {FLAGS.output_dir}/{name}.csv .json .png {summary or ''}")


def main(argv):
    del argv  # cli.run rejects positional arguments
    if "faithfulness" in FLAGS.experiment:  # a missing extra fails before any model loads
        methods.check(FLAGS.methods)
    if FLAGS.experiment == "all":
        return run_on_model(ALL_EXPERIMENTS)
    reads = REGISTRY[FLAGS.experiment].reads
    if reads == RESULTS:
        return run_on_results(FLAGS.experiment)
    if reads == MODELS:
        return run_over_seeds(FLAGS.experiment)
    if reads == MODEL:
        return run_on_model([FLAGS.experiment])
    return run_training(FLAGS.experiment)


def run():
    """The console entry point (setup.py)."""
    cli.run(main)


if __name__ == "__main__":
    run()
