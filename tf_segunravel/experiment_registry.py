"""The one registry of experiments: each experiment's name, what it reads and how it runs.

`tools/experiments.py` takes its `--experiment` choices, its required-flag checks and its
dispatch from here, and `experiments.write_results` its figure; a new experiment is one
entry here plus its functions. This module loads no TensorFlow (the tool checks its flags
before TensorFlow loads): functions are named, and looked up in `tf_segunravel.experiments`
when an experiment runs.
"""

import dataclasses

# What an experiment reads: one trained model analysed by the unravel, one model per
# training seed, or nothing (it trains its own models).
MODEL, MODELS, TRAINS = "model", "models", "trains"


@dataclasses.dataclass(frozen=True)
class Experiment:
    """One experiment.

    name: its `--experiment` value and the stem of the files it writes.
    reads: MODEL, MODELS or TRAINS.
    summary: one line for `--help` and the docs.
    run: for MODEL experiments, the name of a function in `tf_segunravel.experiments` called
      as `run(inputs: AnalysisInputs) -> (rows, summary)`; the others run their own module.
    plot: the name of the function drawing its figure, `plot(axis, rows)`.
    in_all: whether `--experiment=all` runs it.
    """

    name: str
    reads: str
    summary: str
    run: str | None = None
    plot: str | None = None
    in_all: bool = True


REGISTRY = {
    e.name: e
    for e in (
        Experiment(
            "fixation_location",
            MODEL,
            "share of each class's fixations inside its ground-truth object, with IoU",
            run="run_fixation_location",
            plot="plot_location",
        ),
        Experiment(
            "shift_variants",
            MODEL,
            "fixation location with no, partial and full shift",
            run="run_shift_variants",
            plot="plot_shift_variants",
        ),
        Experiment(
            "k_analysis",
            MODEL,
            "input channels needed per layer to reach 10/25/50% of the contribution",
            run="run_k_analysis",
            plot="plot_k_analysis",
        ),
        Experiment(
            "salient_parts",
            MODEL,
            "probability drop when the fixated pixels inside / outside the object are removed",
            run="run_salient_parts",
            plot="plot_salient_parts",
        ),
        Experiment(
            "faithfulness",
            MODEL,
            "deletion / insertion AUC (all pixels, context only), energy and pointing game of "
            "fixations beside gradient baselines and trivial references",
            run="run_faithfulness",
            plot="plot_faithfulness",
            # Hundreds of forward passes per image and class, and the baselines extra:
            # asked for by name, not by `all`.
            in_all=False,
        ),
        Experiment(
            "template_sweep",
            TRAINS,
            "Table 3.1 on segunravel_shapes: template-loss variants and weights over seeds",
        ),
        Experiment(
            "location_over_seeds",
            MODELS,
            "fixation location, plain and contrastive, over one model per seed (95% intervals)",
        ),
        Experiment(
            "faithfulness_over_seeds",
            MODELS,
            "the faithfulness experiment over one model per seed: each fixation method minus "
            "every other method per metric, with 95% t intervals over the seeds",
            in_all=False,
        ),
    )
}

# The experiments that analyse one model, and those of them `--experiment=all` runs.
MODEL_EXPERIMENTS = tuple(name for name, e in REGISTRY.items() if e.reads == MODEL)
ALL_EXPERIMENTS = tuple(name for name in MODEL_EXPERIMENTS if REGISTRY[name].in_all)
