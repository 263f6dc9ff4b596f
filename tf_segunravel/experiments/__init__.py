"""The dissertation's unravel analyses and the faithfulness experiment, one module each, on
any dataset split:

- `location`: `fixation_location`, the share of each class's fixations inside its
  ground-truth segment beside the class IoU; `location_over_seeds` over models trained with
  different seeds; `location_difference` between two such summaries.
- `shift_variants`: fixation location under no, partial and full shift.
- `k_analysis`: input channels a unit on the fixation path needs per layer.
- `salient_parts`: the probability drop when the most fixated region is masked.
- `faithfulness`: the faithfulness experiment and `faithfulness_over_seeds`.

Each module has `run(inputs: AnalysisInputs) -> (rows, summary)` where it analyses one model,
and `plot(axis, rows)`; the registry (`tf_segunravel/experiment_registry.py`) names each
experiment's module, and `run_experiment` and `write_results` load it by that name.
"""

import importlib

from tf_segunravel.experiment_registry import ALL_EXPERIMENTS, MODEL, REGISTRY
from tf_segunravel.experiments.common import (
    AnalysisInputs,
    model_key,
    model_stamp,
    write_results,
)
from tf_segunravel.experiments.faithfulness import faithfulness_markdown, faithfulness_over_seeds
from tf_segunravel.experiments.k_analysis import K_FRACTIONS, k_analysis
from tf_segunravel.experiments.location import (
    by_kind,
    fixation_location,
    location_difference,
    location_markdown,
    location_over_seeds,
)
from tf_segunravel.experiments.salient_parts import salient_parts
from tf_segunravel.experiments.shift_variants import shift_variants
from tf_segunravel.unravel.settings import FixationSettings

EXPERIMENTS = ALL_EXPERIMENTS  # what `--experiment=all` runs (experiment_registry)

__all__ = [
    "EXPERIMENTS",
    "K_FRACTIONS",
    "AnalysisInputs",
    "FixationSettings",
    "by_kind",
    "faithfulness_markdown",
    "faithfulness_over_seeds",
    "fixation_location",
    "k_analysis",
    "location_difference",
    "location_markdown",
    "location_over_seeds",
    "model_key",
    "model_stamp",
    "run_experiment",
    "salient_parts",
    "shift_variants",
    "write_results",
]


def run_experiment(name: str, inputs: AnalysisInputs) -> tuple:
    """Runs the one-model experiment `name` of the registry with its module's `run`:
    (rows, summary)."""
    spec = REGISTRY[name]
    if spec.reads != MODEL or spec.module is None:
        raise ValueError(f"experiment={name} does not analyse one model")
    return importlib.import_module(f"tf_segunravel.experiments.{spec.module}").run(inputs)
