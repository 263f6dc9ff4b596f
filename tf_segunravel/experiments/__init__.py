"""The experiments, one module each, and the four ways the registry
(`tf_segunravel/experiment_registry.py`) runs them:

- `run_experiment(name, inputs) -> (rows, summary)`: an experiment that analyses one model
  (`location`: fixation location; `shift_variants`; `k_analysis`; `salient_parts`;
  `faithfulness`), with its module's `run`; `write_results` writes its CSV, JSON and figure.
- `run_over_seeds(name, networks, model_names, inputs, output_dir) -> summary`: one experiment
  over models trained with different seeds (`location_over_seeds`,
  `faithfulness_over_seeds`), through the one aggregator in `over_seeds.py`.
- `run_training(name, output_dir, options, data_dir, log) -> summary`: an experiment that
  trains its own models (`template_sweep`).
- `run_on_results(name, folders, output_dir) -> summary`: an experiment that reads what
  others wrote (`choose_fixation_variant`: the faithfulness study's rule, `choice.py`).

`markdown(name, summary)` is the table such a summary is reported with. The names load on
first use (`tf_segunravel/lazy.py` says why): the demo imports `experiments.template_sweep`
before TensorFlow loads. A module's function of the module's own name (`shift_variants`,
`k_analysis`, `salient_parts`) is imported from its module.
"""

from tf_segunravel.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "AnalysisInputs": "common",
        "model_key": "common",
        "model_stamp": "common",
        "write_results": "common",
        "fixation_location": "location",
        "by_kind": "location",
        "location_difference": "location",
        "score_methods": "faithfulness",
        "run_experiment": "running",
        "run_over_seeds": "running",
        "run_training": "running",
        "run_on_results": "running",
        "markdown": "running",
    },
)
