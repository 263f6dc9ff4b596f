"""The main job: everything this package does, end to end on `segunravel_shapes`.

Stages, each skipped when its output already exists (so a re-run reuses finished work):
  data         prepare segunravel_shapes into <out>/tfds
  train        reduced-width LargeFOV, with and without the template loss, per seed
  evaluate     per-class IoU tables on val (DeepLab's protocol)
  export       the baseline as a SavedModel
  fixations    the fixation tool on the first val images (figures, .npz, .json, flow GIF)
  experiments  fixation location: intrinsic vs contextual classes
  report       plots and summary.md
"""

import csv
import json
import os
import time

import numpy as np
from absl import flags
from PIL import Image

from tf_segunravel import settings
from tf_segunravel.atomic import save_atomically, write_json
from tf_segunravel.errors import InputError
from tf_segunravel.training.config import TrainConfig
from tf_segunravel.training.loop import HISTORY_FILE
from tf_segunravel.unravel.settings import FixationSettings

# Each arm trains what its flagfile says: the flagfiles are read through absl, so the demo
# and `tools/train.py --flagfile=...` train the same thing.
ARMS = {"baseline": "shapes_baseline.cfg", "template_cosine": "shapes_template_cosine.cfg"}
FLAGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "flags")
PAD_SIZE = 129
# Heat maps for 129-pixel images: a 6-pixel blur instead of the default 20.
FIXATIONS = FixationSettings(sigma=6.0)


def _banner(stage, message):
    print(f"\n=== [{time.strftime('%H:%M:%S')}] {stage}: {message}", flush=True)


def arm_config(arm, flags_dir=FLAGS_DIR, **overrides):
    """The `TrainConfig` of one arm: its flagfile in `flags_dir`, then `overrides`."""
    path = os.path.join(flags_dir, ARMS[arm])
    if not os.path.isfile(path):
        raise InputError(f"{path}: flagfile not found (the demo runs from a source checkout)")
    try:
        return settings.from_flagfile(
            TrainConfig, path, root=os.path.dirname(flags_dir), **overrides
        )
    except (ValueError, flags.Error) as e:  # absl's flag errors and TrainConfig's checks
        raise InputError(f"{path}: {e}") from e


def _read_json(path):
    with open(path) as f:
        return json.load(f)


def run(
    output_dir,
    seeds=(0,),
    steps=None,
    checkpoint_every=None,
    fixation_images=6,
    experiment_images=100,
    verbose=1,
):
    """Runs (or resumes) every stage; returns the summary dict also written to summary.json."""
    import tensorflow_datasets as tfds

    import tf_segunravel.data  # noqa: F401  (registers the builders)
    from tf_segunravel import experiments
    from tf_segunravel.data import load_split, shapes
    from tf_segunravel.evaluation import evaluate, format_table
    from tf_segunravel.export import export_saved_model
    from tf_segunravel.training import load_network, train
    from tf_segunravel.unravel.files import FixationWriter

    os.makedirs(output_dir, exist_ok=True)
    data_dir = os.path.join(output_dir, "tfds")
    names, kinds = list(shapes.CLASS_NAMES), list(shapes.CLASS_KINDS)

    # ----------------------------------------------------------------------------- data
    _banner("data", f"segunravel_shapes in {data_dir}")
    tfds.builder("segunravel_shapes", data_dir=data_dir).download_and_prepare()
    val = load_split("segunravel_shapes", "val", data_dir)

    # ---------------------------------------------------------------------------- train
    runs = {}
    for seed in seeds:
        for arm in ARMS:
            model_dir = os.path.join(output_dir, "models", f"{arm}_seed{seed}")
            runs[(arm, seed)] = model_dir
            overrides = {
                "seed": seed,
                "model_dir": model_dir,
                "data_dir": data_dir,
                "verbose": verbose,
            }
            if steps:
                overrides["steps"] = steps
            if checkpoint_every:
                overrides["checkpoint_every"] = checkpoint_every
            config = arm_config(arm, **overrides)
            if os.path.exists(os.path.join(model_dir, "model.keras")):
                _banner("train", f"{arm}, seed {seed}: done before, reused")
                continue
            _banner("train", f"{arm}, seed {seed}: {config.steps} steps -> {model_dir}")
            train(config)

    # ------------------------------------------------------------------------- evaluate
    results = {}
    for (arm, seed), model_dir in runs.items():
        path = os.path.join(model_dir, "val.json")
        if not os.path.exists(path):
            _banner("evaluate", f"{arm}, seed {seed}")
            scores = evaluate(load_network(model_dir), val, 6, PAD_SIZE, names)
            write_json(path, scores)
            print("\n".join(format_table(scores)))
        results[(arm, seed)] = _read_json(path)

    # --------------------------------------------------------------------------- export
    baseline_dir = runs[("baseline", seeds[0])]
    export_dir = os.path.join(output_dir, "saved_model")
    if not os.path.exists(export_dir):
        _banner("export", export_dir)
        export_saved_model(load_network(baseline_dir), export_dir, FIXATIONS)

    # ------------------------------------------------------------------------ fixations
    fixation_dir = os.path.join(output_dir, "fixations")
    done_marker = os.path.join(fixation_dir, "done.json")
    if not os.path.exists(done_marker):
        _banner("fixations", f"{fixation_images} val images -> {fixation_dir}")
        image_dir = os.path.join(output_dir, "val_images")
        mask_dir = os.path.join(output_dir, "val_masks")
        os.makedirs(image_dir, exist_ok=True)
        os.makedirs(mask_dir, exist_ok=True)
        writer = FixationWriter(
            load_network(baseline_dir), fixation_dir, FIXATIONS, class_names=names, flow=True
        )
        for example in val.take(fixation_images).as_numpy_iterator():
            stem = example["filename"].decode()
            Image.fromarray(example["image"]).save(os.path.join(image_dir, stem + ".png"))
            mask_path = os.path.join(mask_dir, stem + ".png")
            Image.fromarray(example["segmentation"][..., 0], mode="L").save(mask_path)
            writer.process(os.path.join(image_dir, stem + ".png"), mask_path)
        write_json(done_marker, {"images": fixation_images})

    # ---------------------------------------------------------------------- experiments
    experiment_dir = os.path.join(output_dir, "experiments")
    location = {}
    for seed in seeds:
        path = os.path.join(experiment_dir, f"fixation_location_seed{seed}.json")
        if not os.path.exists(path):
            _banner("experiments", f"fixation location, baseline seed {seed}")
            rows = experiments.fixation_location(
                load_network(runs[("baseline", seed)]),
                val,
                6,
                names,
                kinds,
                max_images=experiment_images,
                pad_size=PAD_SIZE,
            )
            experiments.write_results(
                rows, experiment_dir, f"fixation_location_seed{seed}", experiments.by_kind(rows)
            )
        location[seed] = _read_json(path)

    # --------------------------------------------------------------------------- report
    _banner("report", os.path.join(output_dir, "summary.md"))
    summary = _summarise(results, location, seeds, names)
    _plot_curves(runs, os.path.join(output_dir, "training_curves.png"))
    _plot_iou(results, seeds, names, os.path.join(output_dir, "per_class_iou.png"))
    write_json(os.path.join(output_dir, "summary.json"), summary)
    with open(os.path.join(output_dir, "summary.md"), "w") as f:
        f.write(_markdown(summary, names))
    print(_markdown(summary, names))
    return summary


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
        per_class = {name: _mean_iou_over_seeds(results, arm, name, seeds) for name in names}
        arms[arm] = {
            "mean_iou": values,
            "mean": float(np.mean(values)),
            "std": float(np.std(values)),
            "per_class_iou": per_class,
        }
    kinds = {}
    for seed in seeds:
        for kind, value in location[seed]["summary"].items():
            kinds.setdefault(kind, []).append(value)
    return {
        "seeds": list(seeds),
        "arms": arms,
        "fixations_inside_truth_by_kind": {
            kind: {"per_seed": values, "mean": float(np.mean(values))}
            for kind, values in kinds.items()
        },
        "fixations_inside_truth_by_class": {
            row["name"]: row["inside_truth"] for row in location[seeds[0]]["rows"]
        },
    }


def _markdown(summary, names):
    lines = ["# tf-segunravel demo on segunravel_shapes", ""]
    lines += [
        f"Seeds: {summary['seeds']}.",
        "",
        "| arm | val mIoU (%) per seed | mean +- std |",
        "| --- | --- | --- |",
    ]
    for arm, entry in summary["arms"].items():
        per_seed = ", ".join(f"{v:.2f}" for v in entry["mean_iou"])
        lines.append(f"| {arm} | {per_seed} | {entry['mean']:.2f} +- {entry['std']:.2f} |")
    lines += [
        "",
        "Per-class IoU (%, mean over seeds):",
        "",
        "| class | " + " | ".join(summary["arms"]) + " |",
        "| --- |" + " --- |" * len(summary["arms"]),
    ]
    for name in names:
        values = " | ".join(
            "-" if e["per_class_iou"][name] is None else f"{e['per_class_iou'][name]:.2f}"
            for e in summary["arms"].values()
        )
        lines.append(f"| {name} | {values} |")
    lines += [
        "",
        "Share of fixations inside the class's own ground-truth segment (baseline):",
        "",
        "| kind | mean over classes (per seed) |",
        "| --- | --- |",
    ]
    for kind, entry in summary["fixations_inside_truth_by_kind"].items():
        per_seed = ", ".join(f"{v:.3f}" for v in entry["per_seed"])
        lines.append(f"| {kind} | {entry['mean']:.3f} ({per_seed}) |")
    lines += ["", "| class | inside truth (seed 0) |", "| --- | --- |"]
    for name, value in summary["fixations_inside_truth_by_class"].items():
        lines.append(f"| {name} | {'-' if value is None else f'{value:.3f}'} |")
    return "\n".join(lines) + "\n"


def _plot_curves(runs, path):
    import matplotlib.pyplot as plt

    figure, (loss_axis, iou_axis) = plt.subplots(1, 2, figsize=(10, 3.5))
    for (arm, seed), model_dir in runs.items():
        history = os.path.join(model_dir, HISTORY_FILE)
        if not os.path.exists(history):
            continue
        with open(history) as f:
            rows = list(csv.DictReader(f))
        steps = [(int(r["epoch"]) + 1) for r in rows]
        loss_axis.plot(steps, [float(r["cross_entropy"]) for r in rows], label=f"{arm} {seed}")
        iou_axis.plot(steps, [float(r["mean_iou"]) for r in rows], label=f"{arm} {seed}")
    loss_axis.set(title="training cross-entropy", xlabel="checkpoint interval", yscale="log")
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
    axis.set_xticks(np.arange(len(names)) + width / 2, names)
    axis.set(ylabel="val IoU (%)", title="per-class IoU")
    axis.legend()
    figure.tight_layout()
    save_atomically(path, lambda p: figure.savefig(p, dpi=90, format="png"))
    plt.close(figure)
