"""A runner for every entry of the registry, by what the entry reads (its docstring in
`tf_segunravel/experiments/__init__.py`)."""

from collections.abc import Callable, Sequence

from tf_segunravel.experiment_registry import (
    MODEL,
    MODELS,
    REGISTRY,
    RESULTS,
    TRAINS,
    ExperimentSettings,
)
from tf_segunravel.experiments import over_seeds as aggregator
from tf_segunravel.experiments.common import AnalysisInputs
from tf_segunravel.experiments.common import experiment_module as _module


def run_experiment(name: str, inputs: AnalysisInputs) -> tuple[list[dict], dict]:
    """(rows, summary) of the one-model experiment `name`, by its module's `run`."""
    return _module(name, MODEL).run(inputs)


def run_over_seeds(
    name: str,
    networks: Sequence,
    model_names: Sequence[str],
    inputs: AnalysisInputs,
    output_dir: str | None = None,
) -> dict:
    """The over-seeds experiment `name` on each model (`over_seeds.run`)."""
    return aggregator.run(name, networks, model_names, inputs, output_dir)


def run_training(
    name: str,
    output_dir: str,
    options: ExperimentSettings,
    data_dir: str | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """The experiment `name` that trains its own models, resumed in `output_dir`."""
    return _module(name, TRAINS).run_settings(output_dir, options, data_dir, log)


def run_on_results(name: str, folders: Sequence[str], output_dir: str) -> dict:
    """The experiment `name` that reads the results other experiments wrote in `folders`."""
    return _module(name, RESULTS).run(folders, output_dir, name)


def markdown(name: str, summary: dict) -> str:
    """The table that the over-seeds, training or results experiment `name` reports `summary`
    with."""
    spec = REGISTRY.get(name)
    if spec is not None and spec.reads == MODELS:
        return aggregator.hooks(name).seeds_markdown(summary)
    if spec is not None and spec.reads == RESULTS:
        return _module(name, RESULTS).markdown(summary)
    return _module(name, TRAINS).markdown(summary)
