"""The one registry of experiments: each experiment's name, what it reads and which module
runs it, and `ExperimentSettings`, the settings (and so the flags) every experiment reads.

`tools/experiments.py` takes its `--experiment` choices, its required-flag checks and its
flags from here, and `tf_segunravel.experiments.run` and `write_results` their module and
figure; a new experiment is one entry here plus its module in `tf_segunravel/experiments/`.
This module loads no TensorFlow (the tool checks its flags before TensorFlow loads): modules
are named, and imported when an experiment runs.
"""

import dataclasses

from tf_segunravel.flag_settings import at_least_one, non_negative, setting, validate

# What an experiment reads: one trained model analysed by the unravel, one model per
# training seed, nothing (it trains its own models), or the results other experiments wrote.
MODEL, MODELS, TRAINS, RESULTS = "model", "models", "trains", "results"


@dataclasses.dataclass(frozen=True)
class Experiment:
    """One experiment.

    name: its `--experiment` value and the stem of the files it writes.
    reads: MODEL, MODELS, TRAINS or RESULTS.
    summary: one line for `--help` and the docs.
    module: the module of `tf_segunravel.experiments` that runs it, by name (this registry
      loads no TensorFlow). What the module provides depends on `reads`:
      - MODEL: `run(inputs: AnalysisInputs) -> (rows, summary)` and its figure,
        `plot(axis, rows)`;
      - MODELS: the hooks of `tf_segunravel.experiments.over_seeds`, which runs the
        experiment on each model and caches each model's result;
      - TRAINS: `run_settings(output_dir, options: ExperimentSettings, data_dir, log)`;
      - RESULTS: `run(folders, output_dir, name) -> summary` and `markdown(summary)`.
    in_all: whether `--experiment=all` runs it.
    """

    name: str
    reads: str
    summary: str
    module: str
    in_all: bool = True


REGISTRY = {
    e.name: e
    for e in (
        Experiment(
            "fixation_location",
            MODEL,
            "share of each class's fixations inside its ground-truth object, with IoU",
            module="location",
        ),
        Experiment(
            "shift_variants",
            MODEL,
            "fixation location with no, partial and full shift",
            module="shift_variants",
        ),
        Experiment(
            "k_analysis",
            MODEL,
            "input channels needed per layer to reach 10/25/50% of the contribution",
            module="k_analysis",
        ),
        Experiment(
            "salient_parts",
            MODEL,
            "probability drop when the fixated pixels inside / outside the object are removed",
            module="salient_parts",
        ),
        Experiment(
            "faithfulness",
            MODEL,
            "deletion / insertion AUC (all pixels, context only), energy and pointing game of "
            "fixations beside gradient baselines and trivial references",
            module="faithfulness",
            # Hundreds of forward passes per image and class, and the baselines extra:
            # asked for by name, not by `all`.
            in_all=False,
        ),
        Experiment(
            "template_sweep",
            TRAINS,
            "Table 3.1 on segunravel_shapes: template-loss variants and weights over seeds",
            module="template_sweep",
        ),
        Experiment(
            "location_over_seeds",
            MODELS,
            "fixation location, plain and contrastive, over one model per seed (95% intervals)",
            module="location",
        ),
        Experiment(
            "faithfulness_over_seeds",
            MODELS,
            "the faithfulness experiment over one model per seed: each fixation method minus "
            "every other method per metric, with 95% t intervals over the seeds",
            module="faithfulness",
            in_all=False,
        ),
        Experiment(
            "choose_fixation_variant",
            RESULTS,
            "the faithfulness study's rule: the fixation variant with the lowest mean rank by "
            "deletion, insertion and ROAD over faithfulness runs on development networks",
            module="choice",
            in_all=False,
        ),
    )
}

# The experiments that analyse one model, and those of them `--experiment=all` runs.
MODEL_EXPERIMENTS = tuple(name for name, e in REGISTRY.items() if e.reads == MODEL)
ALL_EXPERIMENTS = tuple(name for name in MODEL_EXPERIMENTS if REGISTRY[name].in_all)

# The template sweep's loss variants: "[selective_]<similarity>" (experiments/template_sweep).
TEMPLATE_VARIANTS = ("cosine", "correlation", "selective_cosine", "selective_correlation")


def _integers(values: list[str]) -> tuple[int, ...]:
    return tuple(int(v) for v in values)


def _numbers(values: list[str]) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


def _known_variants(values: tuple[str, ...]) -> bool:
    return bool(values) and set(values) <= set(TEMPLATE_VARIANTS)


@dataclasses.dataclass(frozen=True)
class ExperimentSettings:
    """What the experiments read beside the model and the data, each default written here
    once: `tools/experiments.py` generates its flags from these fields
    (`flag_settings.define_flags`), and `AnalysisInputs.options` holds an instance."""

    max_images: int = setting(
        100,
        "Images analysed (k_analysis: a fifth of them).",
        check=at_least_one,
        requirement="must be >= 1",
    )
    pad_size: int = setting(
        513,
        "Evaluation pad size for the IoU column.",
        check=at_least_one,
        requirement="must be >= 1",
    )
    methods: tuple = setting(
        ("fixations", "fixations_contrastive", "gradcam", "saliency", "segment_prior"),
        "faithfulness: explanation methods, from the table in tf_segunravel/methods.py",
        parse=tuple,
    )
    gradcam_layer: str | None = setting(
        None,
        "faithfulness: Grad-CAM's feature layer (default: the last convolution wider than "
        "1 x 1, fc6 for LargeFOV).",
    )
    faithfulness_steps: int = setting(
        50,
        "faithfulness: steps of each deletion curve.",
        check=at_least_one,
        requirement="must be >= 1",
    )
    min_pixels: int = setting(
        64,
        "faithfulness: a predicted class is scored where it covers this many pixels.",
        check=at_least_one,
        requirement="must be >= 1",
    )
    randomisation_images: int = setting(
        2,
        "faithfulness: images of the cascading randomisation check (one map per weighted layer "
        "per method each; 0 skips it).",
        check=non_negative,
        requirement="must be >= 0",
    )
    randomisation_layers: int | None = setting(
        None,
        "faithfulness: how many weighted layers the randomisation check re-draws, from the "
        "scores down (default: every one).",
        check=at_least_one,
        requirement="must be >= 1",
    )
    seeds: tuple = setting(
        (0, 1, 2, 3, 4),
        "template_sweep: training seeds.",
        parse=_integers,
        check=bool,
        requirement="must be integers",
    )
    weights: tuple = setting(
        (0.01, 0.05, 0.1, 0.5, 1.0, 5.0),
        "template_sweep: template weights.",
        parse=_numbers,
        check=bool,
        requirement="must be numbers",
    )
    variants: tuple = setting(
        TEMPLATE_VARIANTS,
        f"template_sweep: template-loss variants, from {', '.join(TEMPLATE_VARIANTS)}.",
        parse=tuple,
        check=_known_variants,
        requirement=f"must name variants from {', '.join(TEMPLATE_VARIANTS)}",
    )
    scratch: bool = setting(
        False, "template_sweep: also train the template loss from scratch per seed."
    )

    def __post_init__(self) -> None:
        validate(self)
