"""The main job: everything this package does, end to end on `segunravel_shapes`.

Stages (`STAGES`), each made of units that are done when their record exists and was made
from the same inputs (`tf_segunravel.resumable`), so a re-run reuses finished work:
  data         prepare segunravel_shapes into <out>/tfds
  train        per seed: the cross-entropy baseline from scratch, then fc6..fc8 fine-tuned
               from it in a pair of arms, cross-entropy only (the control) and with the
               selective cosine template loss (the dissertation's protocol, in small)
  evaluate     per-class IoU tables on val (DeepLab's protocol)
  export       the baseline as a SavedModel
  fixations    the fixation tool on the first val images, plain and contrastive
  experiments  fixation location by class kind, plain and contrastive
  report       plots, summary.json and summary.md

Each stage's wall time goes to stage_seconds.json (and is printed at the end): times differ
between runs, so they are kept out of summary.json, which two runs write bit for bit alike.

Every run is `--deterministic` and the input order is fixed, so the same command on the
same kind of machine writes the same summary.json, bit for bit.
"""

import csv
import dataclasses
import functools
import json
import os
import shutil
import time
import typing
from collections.abc import Sequence

import numpy as np
from PIL import Image

from tf_segunravel import resumable, stats
from tf_segunravel.atomic import (
    check_output_dir,
    make_output_dir,
    save_atomically,
    write_json,
    write_text,
)
from tf_segunravel.errors import InputError
from tf_segunravel.experiment_registry import ExperimentSettings
from tf_segunravel.experiments.template_sweep import PAD_SIZE
from tf_segunravel.training.config import FLAGS_DIR, HISTORY_FILE, TrainConfig, flagfile_config
from tf_segunravel.unravel.settings import RUNNER_UP, FixationSettings

# Each arm trains what its flagfile says: the flagfiles are read through absl, so the demo
# and `tools/train.py --flagfile=...` train the same thing. The fine-tuning arms start from
# the same seed's baseline.
ARMS = {
    "baseline": "shapes_demo.cfg",
    "control": "shapes_demo_finetune.cfg",
    "template": "shapes_demo_finetune_selective.cfg",
}
FINETUNED = ("control", "template")
# Heat maps for 129-pixel images: a 6-pixel blur instead of the default 20.
FIXATIONS = FixationSettings(sigma=6.0)
# The small faithfulness comparison (docs/faithfulness.md has the full one): a few val
# images, fixations (plain, and K = 3, the variant the faithfulness study chose: docs/
# results.md) against Grad-CAM, Score-CAM, saliency and the segment prior, 20-step curves,
# no randomisation check (it costs one map per weighted layer).
FAITHFULNESS_IMAGES = 4
FAITHFULNESS_METHODS = (
    "fixations",
    "fixations_k3",
    "gradcam",
    "scorecam",
    "saliency",
    "segment_prior",
)
FAITHFULNESS_STEPS = 20
STAGE_SECONDS_FILE = "stage_seconds.json"
# Val images a network pass in the evaluate stage: half the time of one at a time, the same
# labels (`evaluation.predictions`).
EVAL_BATCH = 10
FAITHFULNESS_COLUMNS = ("deletion_auc", "insertion_auc", "context_deletion_auc", "road", "energy")


def _banner(stage, message):
    print(f"\n=== [{time.strftime('%H:%M:%S')}] {stage}: {message}", flush=True)


def arm_config(arm: str, flags_dir: str = FLAGS_DIR, **overrides: typing.Any) -> TrainConfig:
    """The `TrainConfig` of one arm: its flagfile in `flags_dir`, then `overrides`."""
    return flagfile_config(ARMS[arm], flags_dir, **overrides)


def _read_json(path):
    with open(path) as f:
        return json.load(f)


@dataclasses.dataclass
class _Job:
    """What the stages share: the settings, and what earlier stages hand on."""

    output_dir: str
    data_dir: str
    seeds: tuple
    configs: dict  # (arm, seed) -> TrainConfig
    val_images: int | None
    fixation_images: int
    experiment_images: int
    val: object = None  # the val split, once the data stage has run
    names: list = dataclasses.field(default_factory=list)  # its class names, likewise
    kinds: list = dataclasses.field(default_factory=list)
    results: dict = dataclasses.field(default_factory=dict)  # (arm, seed) -> val.json
    summary: dict | None = None
    graph: object = None  # the first seed's baseline as a ModelGraph, once a stage needs it

    def baseline_graph(self):
        """The first seed's baseline as one `ModelGraph`, loaded once: the fixation,
        experiment and faithfulness stages share it, so each engine (`methods.engine_for`)
        and compiled scorer of the same settings is traced once in the job, not per stage."""
        from tf_segunravel.training import load_network
        from tf_segunravel.unravel.graph import as_graph

        if self.graph is None:
            self.graph = as_graph(load_network(_baseline_dir(self)), strict=False)
        return self.graph

    def model_dir(self, arm, seed):
        return self.configs[(arm, seed)].model_dir

    def stage_file(self, stage):
        """Where a whole-stage unit keeps its record (see `tf_segunravel.resumable`)."""
        return os.path.join(self.output_dir, "stages", f"{stage}.json")


def _data(job):
    # TFDS keeps its own notion of "prepared": download_and_prepare returns at once then.
    import tensorflow_datasets as tfds

    import tf_segunravel.data  # noqa: F401  (registers the builders)
    from tf_segunravel.data import load_split, shapes

    _banner("data", f"segunravel_shapes in {job.data_dir}")
    tfds.builder("segunravel_shapes", data_dir=job.data_dir).download_and_prepare()
    job.val = load_split("segunravel_shapes", "val", job.data_dir)
    job.names, job.kinds = list(shapes.CLASS_NAMES), list(shapes.CLASS_KINDS)


def _train(job):
    for (arm, seed), config in job.configs.items():
        record = resumable.train_arm(config, lambda m: _banner("train", m), f"{arm}, seed {seed}")
        if "diverged" in record:
            raise RuntimeError(f"{config.model_dir}: training diverged ({record['diverged']})")


def _evaluate(job):
    from tf_segunravel.evaluation import evaluate, format_table
    from tf_segunravel.training import load_network

    scored = job.val.take(job.val_images) if job.val_images else job.val
    images = int(scored.cardinality())
    for arm, seed in job.configs:

        def score(model_dir):
            network = load_network(model_dir)
            return evaluate(network, scored, 6, PAD_SIZE, job.names, batch_size=EVAL_BATCH)

        record, reused = resumable.evaluate_arm(
            job.model_dir(arm, seed),
            images,
            score,
            lambda m: _banner("evaluate", m),
            f"{arm}, seed {seed}",
        )
        if not reused:
            print("\n".join(format_table(record)))
        job.results[(arm, seed)] = record


def _baseline_dir(job):
    return job.model_dir("baseline", job.seeds[0])


def _export(job):
    from tf_segunravel.export import export_saved_model
    from tf_segunravel.training import load_network

    export_dir = os.path.join(job.output_dir, "saved_model")

    def make():
        _banner("export", export_dir)
        network = load_network(_baseline_dir(job))
        export_saved_model(network, export_dir, FIXATIONS, overwrite=True)
        return {}

    resumable.once(job.stage_file("export"), {"model": _baseline_dir(job)}, make)


def _write_fixations(job, fixation_dir, contrast):
    from tf_segunravel.fixation_files import FixationWriter

    _banner("fixations", f"{job.fixation_images} val images -> {fixation_dir}")
    shutil.rmtree(fixation_dir, ignore_errors=True)  # no files left from other inputs
    image_dir = os.path.join(job.output_dir, "val_images")
    mask_dir = os.path.join(job.output_dir, "val_masks")
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(mask_dir, exist_ok=True)
    writer = FixationWriter(
        job.baseline_graph(),
        fixation_dir,
        dataclasses.replace(FIXATIONS, contrast=contrast),
        class_names=job.names,
        flow=contrast is None,
    )
    for example in job.val.take(job.fixation_images).as_numpy_iterator():
        stem = example["filename"].decode()
        image_path = os.path.join(image_dir, stem + ".png")
        mask_path = os.path.join(mask_dir, stem + ".png")
        Image.fromarray(example["image"]).save(image_path)
        Image.fromarray(example["segmentation"][..., 0], mode="L").save(mask_path)
        writer.process(image_path, mask_path)
    return {}


def _fixations(job):
    for folder, contrast in (("fixations", None), ("fixations_contrastive", RUNNER_UP)):
        make = functools.partial(
            _write_fixations, job, os.path.join(job.output_dir, folder), contrast
        )
        resumable.once(job.stage_file(folder), {"images": job.fixation_images}, make)


def _experiments(job):
    from tf_segunravel import experiments
    from tf_segunravel.training import load_network

    experiment_dir = os.path.join(job.output_dir, "experiments")

    def make():
        seeds = list(job.seeds)
        _banner("experiments", f"fixation location, plain and contrastive, seeds {seeds}")
        networks = [job.baseline_graph()] + [
            load_network(job.model_dir("baseline", seed)) for seed in seeds[1:]
        ]
        options = ExperimentSettings(max_images=job.experiment_images, pad_size=PAD_SIZE)
        inputs = experiments.AnalysisInputs(
            networks[0], job.val, 6, job.names, job.kinds, FIXATIONS, options
        )
        names = [f"baseline_seed{seed}" for seed in seeds]
        experiments.run_over_seeds("location_over_seeds", networks, names, inputs, experiment_dir)
        return {}

    inputs = {"images": job.experiment_images, "seeds": list(job.seeds)}
    resumable.once(job.stage_file("experiments"), inputs, make)


def _faithfulness_methods():
    """The demo's methods; without the baselines extra (tf-keras-vis), gradient x input
    (TensorFlow only) stands in for saliency."""
    from tf_segunravel import baselines

    if baselines.available():
        return FAITHFULNESS_METHODS
    print(f"faithfulness: saliency {baselines.INSTALL_HINT}; gradient x input instead")
    return tuple("gradient_x_input" if m == "saliency" else m for m in FAITHFULNESS_METHODS)


def _faithfulness(job):
    from tf_segunravel import experiments

    methods = _faithfulness_methods()
    seed = job.seeds[0]

    def make():
        _banner("faithfulness", f"{', '.join(methods)} on {FAITHFULNESS_IMAGES} val images")
        options = ExperimentSettings(
            max_images=FAITHFULNESS_IMAGES,
            methods=methods,
            faithfulness_steps=FAITHFULNESS_STEPS,
            randomisation_images=0,
        )
        inputs = experiments.AnalysisInputs(
            job.baseline_graph(), job.val, 6, job.names, job.kinds, FIXATIONS, options
        )
        rows, summary = experiments.run_experiment("faithfulness", inputs)
        experiments.write_results(
            rows, os.path.join(job.output_dir, "experiments"), "faithfulness", summary
        )
        return {}

    inputs = {"images": FAITHFULNESS_IMAGES, "methods": list(methods), "seed": seed}
    resumable.once(job.stage_file("faithfulness"), inputs, make)


def _report(job):
    _banner("report", os.path.join(job.output_dir, "summary.md"))
    location = _read_json(os.path.join(job.output_dir, "experiments", "location_over_seeds.json"))
    runs = {key: config.model_dir for key, config in job.configs.items()}
    summary = _summarise(job.results, location, job.seeds, job.names)
    explained = _read_json(os.path.join(job.output_dir, "experiments", "faithfulness.json"))
    summary["faithfulness"] = {
        "images": FAITHFULNESS_IMAGES,
        "pairs": explained["summary"]["pairs"],
        "methods": {
            row["method"]: {column: row[column] for column in FAITHFULNESS_COLUMNS}
            for row in explained["rows"]
        },
    }
    _plot_curves(runs, os.path.join(job.output_dir, "training_curves.png"))
    _plot_iou(job.results, job.seeds, job.names, os.path.join(job.output_dir, "per_class_iou.png"))
    write_json(os.path.join(job.output_dir, "summary.json"), summary)
    write_text(os.path.join(job.output_dir, "summary.md"), _markdown(summary, job.names))
    print(_markdown(summary, job.names))
    job.summary = summary


# The stages in order. Each is a list of `tf_segunravel.resumable` units (done when their record
# exists and was made from the same inputs), so re-running the demo redoes only what is
# missing or was made from other settings; the report is cheap and always written.
STAGES = {
    "data": _data,
    "train": _train,
    "evaluate": _evaluate,
    "export": _export,
    "fixations": _fixations,
    "experiments": _experiments,
    "faithfulness": _faithfulness,
    "report": _report,
}


def run(
    output_dir: str,
    seeds: Sequence[int] = (0,),
    steps: int | None = None,
    finetune_steps: int | None = None,
    checkpoint_every: int | None = None,
    data_dir: str | None = None,
    val_images: int | None = None,
    fixation_images: int = 6,
    experiment_images: int = 100,
    verbose: int = 1,
    stop_after: str | None = None,
) -> dict | None:
    """Runs (or resumes) every stage; returns the summary dict also written to summary.json.

    `stop_after` names a stage (a key of `STAGES`) after which the run stops, returning
    None."""
    if stop_after is not None and stop_after not in STAGES:
        raise InputError(f"stop_after: unknown stage {stop_after!r}; choose from {list(STAGES)}")
    data_dir = data_dir or os.path.join(output_dir, "tfds")
    # Every arm's settings are checked before anything is written.
    configs: dict[tuple[str, int], TrainConfig] = {}
    for seed in seeds:
        for arm in ARMS:
            model_dir = os.path.join(output_dir, "models", f"{arm}_seed{seed}")
            overrides: dict[str, typing.Any] = {"seed": seed, "model_dir": model_dir}
            overrides["data_dir"] = data_dir
            overrides.update(verbose=verbose, deterministic=True)
            if arm in FINETUNED:
                overrides["init_path"] = configs[("baseline", seed)].model_dir
                if finetune_steps:
                    overrides["steps"] = finetune_steps
            elif steps:
                # A baseline shorter than its flagfile's warm-up (250 steps) spends all but
                # its last step warming up: a shorter warm-up to lr 0.03 diverges (tried: 5
                # warm-up steps of 20 blew up at step 11).
                warmup = arm_config(arm, **overrides).warmup_steps
                overrides.update(steps=steps, warmup_steps=min(warmup, steps - 1))
            if checkpoint_every:
                overrides["checkpoint_every"] = checkpoint_every
            configs[(arm, seed)] = arm_config(arm, **overrides)
    if data_dir != os.path.join(output_dir, "tfds"):  # the default is make_output_dir's
        check_output_dir(data_dir, "data_dir")
    make_output_dir(output_dir)
    job = _Job(
        output_dir,
        data_dir,
        tuple(seeds),
        configs,
        val_images,
        fixation_images,
        experiment_images,
    )
    seconds: dict[str, float] = {}
    for name, stage in STAGES.items():
        start = time.perf_counter()
        stage(job)
        seconds[name] = round(time.perf_counter() - start, 1)
        if name == stop_after:
            break
    seconds["total"] = round(sum(seconds.values()), 1)
    write_json(os.path.join(output_dir, STAGE_SECONDS_FILE), seconds)
    print("\nstage seconds: " + ", ".join(f"{k} {v:g}" for k, v in seconds.items()), flush=True)
    return None if stop_after is not None else job.summary


def _mean_iou_over_seeds(results, arm, name, seeds):
    """A class's IoU (%) averaged over the seeds where it is defined; None where it never is.

    A class neither present nor predicted has no IoU (`evaluate` gives None) and is left
    out, as `evaluate` leaves it out of the mean IoU; counting it as 0 would punish a class
    for being absent.
    """
    values = [results[(arm, s)]["per_class_iou"][name] for s in seeds]
    values = [100 * v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _summarise(results, location, seeds, names):
    arms = {}
    for arm in ARMS:
        values = [100 * results[(arm, s)]["mean_iou"] for s in seeds]
        arms[arm] = {
            "mean_iou": values,
            "interval": stats.mean_interval(values),
            "per_class_iou": {n: _mean_iou_over_seeds(results, arm, n, seeds) for n in names},
        }
    tuned, control = arms["template"]["mean_iou"], arms["control"]["mean_iou"]
    paired = stats.mean_interval([a - b for a, b in zip(tuned, control, strict=True)])
    passes = {}
    for label, entry in location["passes"].items():
        passes[label] = {
            "by_kind": entry["by_kind"],
            "intrinsic_minus_contextual": entry["intrinsic_minus_contextual"],
            "by_class": {
                row["name"]: row["inside_truth"] for row in location["per_model"][0][label]["rows"]
            },
        }
    return {
        "seeds": list(seeds),
        "val_images": results[("baseline", seeds[0])]["images"],
        "arms": arms,
        "template_minus_control": paired,
        "fixations_inside_truth": passes,
    }


def _markdown(summary, names):
    describe = stats.describe
    lines = ["# tf-segunravel demo on segunravel_shapes", ""]
    lines += [
        f"Seeds: {summary['seeds']}. Val mIoU (%) over {summary['val_images']} images; with"
        " several seeds, mean [95% interval].",
        "",
    ]
    lines += stats.markdown_table(
        ["arm", "val mIoU per seed", "mean"],
        [
            [arm, ", ".join(f"{v:.2f}" for v in entry["mean_iou"]), describe(entry["interval"])]
            for arm, entry in summary["arms"].items()
        ],
    )
    paired = summary["template_minus_control"]
    lines += [
        "",
        f"template minus control (paired by seed): {describe(paired, signed=True)} "
        f"mIoU points ({stats.verdict(paired)}).",
        "",
        "Per-class IoU (%, mean over seeds):",
        "",
    ]
    lines += stats.markdown_table(
        ["class", *summary["arms"]],
        [
            [name, *(_cell(e["per_class_iou"][name], 2) for e in summary["arms"].values())]
            for name in names
        ],
    )
    passes = summary["fixations_inside_truth"]
    kinds = sorted({k for p in passes.values() for k in p["by_kind"]})
    lines += [
        "",
        "Share of fixations inside the class's own ground-truth object (baseline; contrastive:",
        "the margin over the runner-up class):",
        "",
    ]
    lines += stats.markdown_table(
        ["kind", *passes],
        [[kind, *(describe(p["by_kind"][kind], 3) for p in passes.values())] for kind in kinds],
    )
    lines.append("")
    lines += stats.markdown_table(
        [f"class (seed {summary['seeds'][0]})", *passes],
        [[name, *(_cell(p["by_class"].get(name), 3) for p in passes.values())] for name in names],
    )
    explained = summary.get("faithfulness")
    if explained:
        lines += [
            "",
            f"Faithfulness, baseline seed {summary['seeds'][0]}, {explained['pairs']} (image, "
            f"class) pairs of {explained['images']} val images (deletion: lower is better; the "
            "rest: higher; docs/faithfulness.md):",
            "",
        ]
        lines += stats.markdown_table(
            ["method", *FAITHFULNESS_COLUMNS],
            [
                [method, *(_cell(values[c], 3) for c in FAITHFULNESS_COLUMNS)]
                for method, values in explained["methods"].items()
            ],
        )
    return "\n".join(lines) + "\n"


def _cell(value, digits):
    """A table cell: the value to `digits` decimals, or "-" where there is none."""
    return "-" if value is None else f"{value:.{digits}f}"


def _plot_curves(runs, path):
    import matplotlib.pyplot as plt

    figure, (loss_axis, iou_axis, dead_axis) = plt.subplots(1, 3, figsize=(14, 3.5))
    for (arm, seed), model_dir in runs.items():
        history = os.path.join(model_dir, HISTORY_FILE)
        if not os.path.exists(history):
            continue
        with open(history) as f:
            rows = list(csv.DictReader(f))
        steps = [(int(r["epoch"]) + 1) for r in rows]
        loss_axis.plot(steps, [float(r["cross_entropy"]) for r in rows], label=f"{arm} {seed}")
        iou_axis.plot(steps, [float(r["mean_iou"]) for r in rows], label=f"{arm} {seed}")
        dead_axis.plot(steps, [float(r["dead_features"]) for r in rows], label=f"{arm} {seed}")
    loss_axis.set(title="training cross-entropy", xlabel="checkpoint interval", yscale="log")
    dead_axis.set(title="share of all-zero fc7 vectors", xlabel="checkpoint interval")
    iou_axis.set(title="training mean IoU (score grid)", xlabel="checkpoint interval")
    iou_axis.legend(fontsize=7)
    figure.tight_layout()
    save_atomically(path, lambda p: figure.savefig(p, dpi=90, format="png"))
    plt.close(figure)


def _plot_iou(results, seeds, names, path):
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / len(ARMS)
    for i, arm in enumerate(ARMS):
        values = [_mean_iou_over_seeds(results, arm, n, seeds) for n in names]
        values = [np.nan if v is None else v for v in values]
        axis.bar(np.arange(len(names)) + i * width, values, width, label=arm)
    axis.set_xticks(np.arange(len(names)) + width * (len(ARMS) - 1) / 2, names)
    axis.set(ylabel="val IoU (%)", title="per-class IoU")
    axis.legend()
    figure.tight_layout()
    save_atomically(path, lambda p: figure.savefig(p, dpi=90, format="png"))
    plt.close(figure)
