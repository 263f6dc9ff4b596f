"""The one registry of experiments: each experiment's name, what it reads and how it runs.

`tools/experiments.py` takes its `--experiment` choices, its required-flag checks and its
dispatch from here, and `experiments.write_results` its figure; a new experiment is one
entry here plus its module in `tf_segunravel/experiments/`. This module loads no TensorFlow
(the tool checks its flags before TensorFlow loads): modules are named, and imported when an
experiment runs.
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
    module: the module of `tf_segunravel.experiments` that runs it (for MODEL experiments,
      `run(inputs: AnalysisInputs) -> (rows, summary)`) and draws its figure
      (`plot(axis, rows)`), by name: this registry loads no TensorFlow. None: the tool runs
      it through its own module (the template sweep, the over-seeds summaries).
    in_all: whether `--experiment=all` runs it.
    """

    name: str
    reads: str
    summary: str
    module: str | None = None
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
