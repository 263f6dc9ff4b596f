"""The main job, end to end on the embedded segunravel_shapes dataset (no downloads).

    python3 tools/demo.py --output_dir=runs/demo

Prepares the dataset, trains a reduced-width DeepLab-LargeFOV baseline, fine-tunes its
fc6..fc8 with and without the template loss, evaluates all three, exports a SavedModel, runs
the fixation tool (plain and contrastive) on validation images and the fixation-location
experiment, and writes plots, summary.json and summary.md into --output_dir. Deterministic:
a second run in a fresh directory writes the same summary.json. About 4.5-5 minutes on a
2-core CPU (each stage's time in stage_seconds.json); a re-run reuses finished stages;
--seeds=0,1,2,3,4 adds 95% intervals.
"""

from absl import flags

from tf_segunravel import cli, demo

flags.DEFINE_string("output_dir", "runs/demo", "Directory that receives every artefact.")
flags.DEFINE_list("seeds", ["0"], "Training seeds; each trains both arms.")
flags.DEFINE_integer(
    "steps",
    None,
    "Override the baseline's steps (default: its flagfile's); a run shorter than the "
    "flagfile's warm-up warms up for all but its last step.",
)
flags.DEFINE_integer(
    "finetune_steps", None, "Override the fine-tuning steps (default: the flagfiles')."
)
flags.DEFINE_integer("checkpoint_every", None, "Override the checkpoint interval.")
flags.DEFINE_string(
    "data_dir", None, "TFDS data dir for segunravel_shapes (default: <output_dir>/tfds)."
)
flags.DEFINE_integer(
    "val_images", None, "Evaluate on the first N validation images (default: all 500)."
)
flags.DEFINE_integer("fixation_images", 6, "Validation images given to the fixation tool.")
flags.DEFINE_integer("experiment_images", 100, "Validation images for fixation location.")
flags.DEFINE_enum(
    "stop_after",
    None,
    list(demo.STAGES)[:-1],
    "Stop after this stage (default: run every stage and write the report).",
)
flags.DEFINE_integer("verbose", 2, "Keras fit verbosity (1: progress bar, 2: a line per interval).")
flags.register_validator(
    "seeds", lambda v: v and all(s.isdigit() for s in v), "--seeds must be integers"
)
flags.register_validator("val_images", lambda v: v is None or v >= 1, "--val_images must be >= 1")
flags.register_validator("fixation_images", lambda v: v >= 1, "--fixation_images must be >= 1")
flags.register_validator("experiment_images", lambda v: v >= 1, "--experiment_images must be >= 1")
cli.check_path_flags(output_dirs=["output_dir", "data_dir"])
FLAGS = flags.FLAGS


def main(argv):
    del argv  # cli.run rejects positional arguments
    demo.run(
        FLAGS.output_dir,
        seeds=tuple(int(s) for s in FLAGS.seeds),
        steps=FLAGS.steps,
        finetune_steps=FLAGS.finetune_steps,
        checkpoint_every=FLAGS.checkpoint_every,
        data_dir=FLAGS.data_dir,
        val_images=FLAGS.val_images,
        fixation_images=FLAGS.fixation_images,
        experiment_images=FLAGS.experiment_images,
        verbose=FLAGS.verbose,
        stop_after=FLAGS.stop_after,
    )


def run():
    """The console entry point (setup.py)."""
    cli.run(main)


if __name__ == "__main__":
    run()
