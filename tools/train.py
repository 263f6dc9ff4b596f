"""Trains DeepLab-LargeFOV, optionally with the template-similarity loss.

    python3 tools/train.py --flagfile=flags/shapes_baseline.cfg --model_dir=runs/shapes_base

Every field of `TrainConfig` (tf_segunravel/training/config.py) is a flag, with its help and
checks (`--helpfull`); the flagfiles in flags/ hold the published settings. Everything goes
into --model_dir: the resolved flags (flags.txt), config.json, checkpoints, TensorBoard logs
and the final model.keras. Re-running the same command after a kill resumes from the last
checkpoint; a re-run with other settings is refused unless --allow_config_change.
"""

from absl import flags

from tf_segunravel import cli, flag_settings
from tf_segunravel.training.config import TrainConfig

flag_settings.define_flags(TrainConfig)
flags.mark_flag_as_required("model_dir")
cli.check_path_flags(output_dirs=["model_dir"])
# Flags generated from settings classes are declared by tf_segunravel.flag_settings; list them
# with the tool's own in --help.
flags.adopt_module_key_flags(flag_settings)
FLAGS = flags.FLAGS


def main(argv):
    del argv  # cli.run rejects positional arguments
    from tf_segunravel.training.loop import train

    config = flag_settings.from_flags(TrainConfig)
    logs = train(config, flags_text=FLAGS.flags_into_string())
    for key, value in logs.items():
        print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")


def run():
    """The console entry point (setup.py)."""
    cli.run(main)


if __name__ == "__main__":
    run()
