"""One aggregator for every experiment run over models trained with different seeds
(`experiment_registry.MODELS`): it runs the experiment on each model, keeps each model's
result as a `tf_segunravel.resumable` unit, and summarises them with the experiment's own
module.

The module that the registry names provides four hooks:
- `seeds_key(inputs) -> dict`: what a model's result depends on beside the model file (the
  settings, the images); with the model file's stamp it is the unit's key, so an interrupted
  run resumes, and other settings, other images or a retrained model are run again;
- `seed_result(inputs, model_name, model_dir) -> dict`: one model's result (`inputs.network`
  is that model), with its own files in `model_dir` when there is one;
- `summarise_seeds(results, model_names, inputs) -> dict`: the summary over the models;
- `write_seed_summary(summary, output_dir)`, and `seeds_markdown(summary) -> str`.

Layout of `output_dir`: `per_model/<model path>/<experiment>.json` (the unit: the result and
what it was made from), any files the experiment keeps per model beside it, and the summary's
own files.
"""

import dataclasses
import json
import os
from collections.abc import Sequence
from types import ModuleType

from tf_segunravel import resumable
from tf_segunravel.atomic import make_output_dir
from tf_segunravel.experiment_registry import MODELS
from tf_segunravel.experiments.common import (
    AnalysisInputs,
    experiment_module,
    model_key,
    model_stamp,
)


def hooks(name: str) -> ModuleType:
    """The module of the over-seeds experiment `name` (a ValueError for any other name)."""
    return experiment_module(name, MODELS)


def run(
    name: str,
    networks: Sequence,
    model_names: Sequence[str],
    inputs: AnalysisInputs,
    output_dir: str | None = None,
) -> dict:
    """Experiment `name` on each of `networks` (named by `model_names`, their paths), each in
    turn taking the place of `inputs.network`; returns the experiment's summary, also written
    into `output_dir` when given."""
    module = hooks(name)
    # The key as a record reads it back (tuples become lists), so that it compares equal.
    key = json.loads(json.dumps(module.seeds_key(inputs)))
    results = []
    for network, model_name in zip(networks, model_names, strict=True):
        chosen = dataclasses.replace(inputs, network=network)
        if not output_dir:
            results.append(module.seed_result(chosen, model_name, None))
            continue
        model_dir = os.path.join(output_dir, "per_model", model_key(model_name))
        make_output_dir(model_dir)

        def make(chosen=chosen, model_name=model_name, model_dir=model_dir) -> dict:
            return {"result": module.seed_result(chosen, model_name, model_dir)}

        record, _ = resumable.once(
            os.path.join(model_dir, f"{name}.json"),
            {**key, "model_stamp": model_stamp(model_name)},
            make,
        )
        results.append(record["result"])
    summary = module.summarise_seeds(results, list(model_names), inputs)
    if output_dir:
        module.write_seed_summary(summary, output_dir)
    return summary
