"""The dissertation's four unravel analyses, on any dataset split.

- `fixation_location`: per class, the share of fixations inside the class's ground-truth
  segment, averaged over the images where the class was unravelled, beside the class IoU.
- `shift_variants`: the same under no, partial and full shift.
- `k_analysis`: per layer, how many input channels a unit on the fixation path needs to
  capture 10, 25 and 50% of its positive contribution, averaged over the fixation points.
- `salient_parts`: mask each class's most fixated region (heat map >= 0.5), segment again,
  and measure how much the class's probability drops inside and outside the masked region.
- `location_over_seeds`: `fixation_location`, plain and contrastive, over models trained
  with different seeds, with 95% intervals.

Each returns rows (dicts) that `write_results` saves as CSV and JSON next to a figure.
"""

import csv
import dataclasses
import json
import os

import keras
import numpy as np
import tensorflow as tf

from tf_segunravel import stats
from tf_segunravel.atomic import make_output_dir, save_atomically, write_json, write_text
from tf_segunravel.data.labels import class_name
from tf_segunravel.data.pipeline import MEAN_RGB
from tf_segunravel.evaluation import evaluate
from tf_segunravel.experiment_registry import ALL_EXPERIMENTS, MODEL, REGISTRY
from tf_segunravel.unravel.geometry import ScoreMap
from tf_segunravel.unravel.maps import fixation_maps
from tf_segunravel.unravel.rules import channels_to_reach
from tf_segunravel.unravel.settings import FixationSettings
from tf_segunravel.unravel.tracer import SegUnravel

EXPERIMENTS = ALL_EXPERIMENTS  # what `--experiment=all` runs (experiment_registry)
K_FRACTIONS = (0.10, 0.25, 0.50)


def _examples(examples, max_images):
    for example in examples.take(max_images).as_numpy_iterator():
        yield example["image"], example["segmentation"][..., 0]


def fixation_location(
    network,
    examples,
    num_classes,
    class_names=None,
    class_kinds=None,
    settings=None,
    max_images=100,
    pad_size=513,
    with_iou=True,
):
    """Rows per class: images, mean inside-truth share (plain, weighted), IoU, kind.

    With a contrastive `settings` the shares are those of the margin's fixations; without
    `with_iou` the IoU column (a second pass over the images) is None.
    """
    engine = SegUnravel(network, settings)
    shares = {c: [] for c in range(num_classes)}
    weighted = {c: [] for c in range(num_classes)}
    for image, truth in _examples(examples, max_images):
        points, counts = engine(image[None].astype(np.float32)).for_image(0)
        for cls in np.unique(points[:, 0]):
            mine = points[:, 0] == cls
            inside = truth[points[mine, 1], points[mine, 2]] == cls
            shares[cls].append(inside.mean())
            weighted[cls].append(np.average(inside, weights=counts[mine]))
    iou = None
    if with_iou:
        iou = evaluate(network, examples.take(max_images), num_classes, pad_size)
        iou = list(iou["per_class_iou"].values())
    rows = []
    for cls in range(num_classes):
        name = class_name(class_names, cls)
        rows.append(
            {
                "class": cls,
                "name": name,
                "kind": class_kinds[cls] if class_kinds else "",
                "images": len(shares[cls]),
                "inside_truth": float(np.mean(shares[cls])) if shares[cls] else None,
                "inside_truth_weighted": float(np.mean(weighted[cls])) if weighted[cls] else None,
                "iou": None if iou is None else iou[cls],
            }
        )
    return rows


def by_kind(rows, key="inside_truth"):
    """Mean of `key` over the classes of each kind (intrinsic, contextual, ...)."""
    groups = {}
    for row in rows:
        if row["kind"] and row[key] is not None:
            groups.setdefault(row["kind"], []).append(row[key])
    return {kind: float(np.mean(values)) for kind, values in groups.items()}


def location_over_seeds(
    networks,
    model_names,
    examples,
    num_classes,
    class_names,
    class_kinds,
    settings=None,
    max_images=500,
    pad_size=513,
    output_dir=None,
    source="",
):
    """`fixation_location`, plain and contrastive, on models trained with different seeds.

    With `output_dir`, each model's result is also kept in `per_model/` and reused by a later
    call with the same settings, images (`source`, e.g. "segunravel_shapes/val"), image count,
    pad size and model file (`model_stamp`).

    The contrastive pass uses `settings.contrast`, or "runner_up" when it is unset. Returns
    per model and pass the rows and the by-kind shares, each kind's mean over the models with
    a 95% t interval, and per pass the paired difference intrinsic minus contextual share
    (above 0: the contextual classes' fixations leave their object more). Writes
    location_over_seeds.json and .md into `output_dir` when given.
    """
    settings = settings or FixationSettings()
    passes = {
        "plain": dataclasses.replace(settings, contrast=None),
        "contrastive": dataclasses.replace(settings, contrast=settings.contrast or "runner_up"),
    }
    per_model = []
    for network, name in zip(networks, model_names, strict=True):
        cache, stamp = None, None
        if output_dir:  # one model's result is kept, so an interrupted run resumes
            cache = os.path.join(output_dir, "per_model", f"{_model_key(name)}.json")
            stamp = model_stamp(name)
            if os.path.exists(cache):
                with open(cache) as f:
                    cached = json.load(f)
                if cached.get("settings") == {k: p.as_dict() for k, p in passes.items()} and (
                    (
                        cached.get("images"),
                        cached.get("pad_size"),
                        cached.get("source"),
                        cached.get("model_stamp"),
                    )
                    == (max_images, pad_size, source, stamp)
                ):
                    per_model.append(cached["entry"])
                    continue
        entry = {"model": name}
        for label, chosen in passes.items():
            rows = fixation_location(
                network,
                examples,
                num_classes,
                class_names,
                class_kinds,
                settings=chosen,
                max_images=max_images,
                pad_size=pad_size,
                with_iou=label == "plain",
            )
            entry[label] = {"rows": rows, "by_kind": by_kind(rows)}
        per_model.append(entry)
        if cache:
            make_output_dir(os.path.dirname(cache))
            settings_used = {k: p.as_dict() for k, p in passes.items()}
            write_json(
                cache,
                {
                    "settings": settings_used,
                    "images": max_images,
                    "pad_size": pad_size,
                    "source": source,
                    "model_stamp": stamp,
                    "entry": entry,
                },
            )
    summary = {"models": list(model_names), "images": max_images, "passes": {}}
    for label in passes:
        kinds = sorted({k for e in per_model for k in e[label]["by_kind"]})
        by = {
            k: stats.mean_interval([e[label]["by_kind"].get(k) for e in per_model]) for k in kinds
        }
        difference = stats.mean_interval(
            [
                e[label]["by_kind"]["intrinsic"] - e[label]["by_kind"]["contextual"]
                if {"intrinsic", "contextual"} <= e[label]["by_kind"].keys()
                else None
                for e in per_model
            ]
        )
        summary["passes"][label] = {
            "contrast": passes[label].contrast,
            "by_kind": by,
            "intrinsic_minus_contextual": difference,
            "verdict": stats.verdict(difference),
        }
    summary["per_model"] = per_model
    if output_dir:
        make_output_dir(output_dir)
        write_json(os.path.join(output_dir, "location_over_seeds.json"), summary)
        write_text(os.path.join(output_dir, "location_over_seeds.md"), location_markdown(summary))
    return summary


def model_stamp(name):
    """[bytes, newest modification time in ns] of the files the model at path `name` is
    loaded from (`training.checkpoints.network_files`: a .keras file, a model dir's
    model.keras or latest checkpoint), of every file of another directory (a SavedModel), or
    None when `name` is no path. Part of the over-seeds caches' key: a model retrained at the
    same path is run again, and a model dir that only gained an evaluation is not."""
    from tf_segunravel.errors import InputError
    from tf_segunravel.training.checkpoints import network_files

    try:
        files = network_files(name)
    except InputError:
        if not os.path.isdir(name):
            return None
        files = [os.path.join(root, f) for root, _, names in os.walk(name) for f in names]
    infos = [os.stat(f) for f in files]
    return [sum(i.st_size for i in infos), max((i.st_mtime_ns for i in infos), default=0)]


def _model_key(name):
    """A file name for a model's path: its characters outside [A-Za-z0-9-_.] as '_'."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name.strip("/"))


def faithfulness_over_seeds(networks, model_names, inputs, output_dir=None):
    """The faithfulness experiment on models trained with different seeds.

    `inputs` is an `AnalysisInputs` whose network is replaced by each of `networks` in turn.
    With `output_dir`, each model's `faithfulness.csv/.json/.png`, curves and example panels
    go to `per_model/<model path>/`, and a later call with the same settings and model files
    (`model_stamp`) reuses them, so an interrupted run resumes. Returns, for each fixation
    method that ran, `over_seeds`: its difference from every other method per metric, one
    value per seed (the seed's mean paired difference), with a 95% t interval over the
    seeds; `methods`: each method's per-seed means with their interval; and the curves
    averaged over the seeds. Writes faithfulness_over_seeds.json, .md and _curves.png into
    `output_dir` when given."""
    from tf_segunravel import faithfulness, viz

    record = {
        "settings": inputs.settings.as_dict(),
        "source": inputs.source,
        "images": inputs.max_images,
        "methods": list(inputs.methods),
        "gradcam_layer": inputs.gradcam_layer,
        "steps": inputs.faithfulness_steps,
        "min_pixels": inputs.min_pixels,
        "randomisation_images": inputs.randomisation_images,
        "randomisation_layers": inputs.randomisation_layers,
    }
    summaries = []
    for network, name in zip(networks, model_names, strict=True):
        model_dir = os.path.join(output_dir, "per_model", _model_key(name)) if output_dir else None
        cache = model_dir and os.path.join(model_dir, "faithfulness.json")
        stamp = model_stamp(name) if model_dir else None
        if cache and os.path.exists(cache):
            with open(cache) as f:
                cached = json.load(f)["summary"]
            if cached.get("run") == record and cached.get("model_stamp") == stamp:
                summaries.append(cached)
                continue
        chosen = dataclasses.replace(inputs, network=network, figure_dir=model_dir)
        rows, summary = run_faithfulness(chosen)
        summary["run"] = record
        summary["model_stamp"] = stamp
        if model_dir:
            write_results(rows, model_dir, "faithfulness", summary)
        summaries.append(summary)
    methods = list(inputs.methods)
    result = {
        "models": list(model_names),
        "run": record,
        "pairs": [s["pairs"] for s in summaries],
        "methods": {
            m: {
                metric: stats.mean_interval([s["methods"][m][metric]["mean"] for s in summaries])
                for metric in faithfulness.METRICS
            }
            for m in methods
        },
        "over_seeds": {
            m: faithfulness.over_seeds(summaries, m)
            for m in faithfulness.FIXATION_METHODS
            if m in methods and len(methods) > 1
        },
        "curves": {
            m: {
                mode: np.mean([s["curves"][m][mode] for s in summaries], axis=0).tolist()
                for mode in ("deletion", "insertion")
            }
            for m in methods
        },
    }
    if output_dir:
        make_output_dir(output_dir)
        write_json(os.path.join(output_dir, "faithfulness_over_seeds.json"), result)
        write_text(
            os.path.join(output_dir, "faithfulness_over_seeds.md"), faithfulness_markdown(result)
        )
        viz.curves_figure(
            result["curves"], os.path.join(output_dir, "faithfulness_over_seeds_curves.png")
        )
    return result


def faithfulness_markdown(result):
    """The `faithfulness_over_seeds` tables: every method's means over the seeds, then each
    fixation method minus every other method."""
    from tf_segunravel import faithfulness

    metrics = faithfulness.METRICS
    lines = [
        f"{len(result['models'])} models, {result['run']['images']} images each, "
        f"{min(result['pairs'])}-{max(result['pairs'])} scored (image, class) pairs per model; "
        "means over the models with 95% t intervals.",
        "",
    ]
    lines += stats.markdown_table(
        ["method", *metrics],
        [
            [method, *(stats.describe(row[metric], 3) for metric in metrics)]
            for method, row in result["methods"].items()
        ],
    )
    for method, table in result["over_seeds"].items():
        lines += ["", faithfulness.over_seeds_markdown(table, method).rstrip()]
    return "\n".join(lines) + "\n"


def location_difference(first, second):
    """{pass: {kind: t interval}} of first minus second, paired by model: two
    `location_over_seeds` summaries of the same models (in the same order) under other
    settings, for example the `seg_unravel_code` preset against the defaults."""
    if first["models"] != second["models"]:
        raise ValueError(f"different models: {first['models']} and {second['models']}")
    out = {}
    for label in first["passes"]:
        pairs = list(zip(first["per_model"], second["per_model"], strict=True))
        kinds = sorted(
            {k for a, b in pairs for k in a[label]["by_kind"] if k in b[label]["by_kind"]}
        )
        out[label] = {
            kind: stats.mean_interval([_minus(a, b, label, kind) for a, b in pairs])
            for kind in kinds
        }
    return out


def _minus(first, second, label, kind):
    a, b = first[label]["by_kind"].get(kind), second[label]["by_kind"].get(kind)
    return None if a is None or b is None else a - b


def location_markdown(summary):
    """The kinds-by-pass table of `location_over_seeds`."""
    passes = summary["passes"]
    kinds = sorted({k for p in passes.values() for k in p["by_kind"]})
    lines = [
        f"Share of each class's fixations inside its own ground-truth object; mean over "
        f"{len(summary['models'])} models [95% interval], {summary['images']} images.",
        "",
    ]
    rows = [
        [kind, *(stats.describe(p["by_kind"][kind], 3) for p in passes.values())] for kind in kinds
    ]
    difference = [
        f"{stats.describe(p['intrinsic_minus_contextual'], 3, signed=True)} ({p['verdict']})"
        for p in passes.values()
    ]
    rows.append(["intrinsic minus contextual", *difference])
    lines += stats.markdown_table(["class kind", *passes], rows)
    return "\n".join(lines) + "\n"


def shift_variants(
    network,
    examples,
    num_classes,
    class_names=None,
    class_kinds=None,
    settings=None,
    max_images=100,
    pad_size=513,
):
    """fixation_location under each shift; one row per class and variant."""
    settings = settings or FixationSettings()
    rows = []
    for shift in ("none", "partial", "full"):
        for row in fixation_location(
            network,
            examples,
            num_classes,
            class_names,
            class_kinds,
            settings=dataclasses.replace(settings, shift=shift),
            max_images=max_images,
            pad_size=pad_size,
        ):
            rows.append({"shift": shift, **row})
    return rows


def k_analysis(network, examples, max_images=20, fractions=K_FRACTIONS):
    """Rows per channel-choosing layer: input channels and the mean K for each fraction.

    The engine returns every layer's channel scores beside the points (graph mode), and
    `channels_to_reach`, the mass rule's own count, says how many channels each needs.
    """
    engine = SegUnravel(network, keep_channel_scores=True)
    needed, channels, order = {}, {}, []
    for image, _ in _examples(examples, max_images):
        for layer, scores in engine(image[None].astype(np.float32)).channel_scores:
            if layer not in channels:
                order.append(layer)
            channels[layer] = scores.shape[1]
            for fraction in fractions:
                count, _ = channels_to_reach(tf.constant(scores), fraction)
                needed.setdefault((layer, fraction), []).extend(count.numpy().tolist())
    rows = []
    for layer in order:
        row = {"layer": layer, "input_channels": channels[layer]}
        for fraction in fractions:
            values = needed[(layer, fraction)]
            row[f"k_{round(fraction * 100)}"] = float(np.mean(values))
            row[f"k_{round(fraction * 100)}_share"] = float(np.mean(values)) / channels[layer]
        rows.append(row)
    return rows


def salient_parts(
    network,
    examples,
    num_classes,
    class_names=None,
    settings=None,
    max_images=50,
    threshold=0.5,
):
    """Rows per class: mean probability drop inside and outside its masked salient region.

    `settings` draw the heat maps (default: `FixationSettings(sigma=6)`, a blur that suits
    small images).
    """
    settings = settings or FixationSettings(sigma=6.0)
    engine = SegUnravel(network, settings)
    drops_in = {c: [] for c in range(num_classes)}
    drops_out = {c: [] for c in range(num_classes)}
    mean = np.array(MEAN_RGB, np.float32)

    # One graph for every masked image of a size (not a fresh graph walk per call).
    softmax = tf.function(
        lambda x: tf.nn.softmax(ScoreMap(network).at_image_size(x)), autograph=False
    )

    def probabilities(image):
        return softmax(tf.constant(image[None], tf.float32))[0].numpy()

    for image, _ in _examples(examples, max_images):
        height, width = image.shape[:2]
        result = engine(image[None].astype(np.float32))
        before = probabilities(image)
        predicted = before.argmax(-1)
        maps = fixation_maps(result, height, width, settings).numpy()[0]
        for cls in np.flatnonzero(result.seeds[0]):
            region = maps[cls] >= threshold
            if not region.any():
                continue
            masked = np.where(region[..., None], mean, image.astype(np.float32))
            after = probabilities(masked)
            outside = (predicted == cls) & ~region
            drops_in[cls].append(float((before[..., cls] - after[..., cls])[region].mean()))
            if outside.any():
                drop = (before[..., cls] - after[..., cls])[outside].mean()
                drops_out[cls].append(float(drop))
    return [
        {
            "class": cls,
            "name": class_name(class_names, cls),
            "images": len(drops_in[cls]),
            "drop_inside": float(np.mean(drops_in[cls])) if drops_in[cls] else None,
            "drop_outside": float(np.mean(drops_out[cls])) if drops_out[cls] else None,
        }
        for cls in range(num_classes)
    ]


def write_results(rows, output_dir, name, summary=None):
    """`<name>.csv`, `<name>.json` (rows and summary) and `<name>.png` (a bar chart)."""
    import matplotlib.pyplot as plt

    make_output_dir(output_dir)
    base = os.path.join(output_dir, name)
    fields = list(rows[0]) if rows else []

    def write_csv(path):
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)

    save_atomically(base + ".csv", write_csv)
    write_json(base + ".json", {"experiment": name, "rows": rows, "summary": summary or {}})
    figure, axis = plt.subplots(figsize=(max(6, 0.6 * len(rows)), 3.5))
    _plot(axis, rows, name)
    figure.tight_layout()
    save_atomically(base + ".png", lambda p: figure.savefig(p, dpi=90, format="png"))
    plt.close(figure)


def _bars(axis, labels, series):
    width = 0.8 / max(len(series), 1)
    for i, (label, values) in enumerate(series.items()):
        xs = np.arange(len(labels)) + i * width
        axis.bar(xs, [np.nan if v is None else v for v in values], width, label=label)
    axis.set_xticks(np.arange(len(labels)) + 0.4 - width / 2, labels, rotation=45, ha="right")
    axis.legend(fontsize=8)


def plot_k_analysis(axis, rows):
    labels = [r["layer"] for r in rows]
    keys = [k for k in rows[0] if k.startswith("k_") and k.endswith("_share")]
    _bars(axis, labels, {k: [r[k] for r in rows] for k in keys})
    axis.set_ylabel("share of input channels")


def plot_salient_parts(axis, rows):
    labels = [r["name"] for r in rows]
    _bars(axis, labels, {k: [r[k] for r in rows] for k in ("drop_inside", "drop_outside")})
    axis.set_ylabel("probability drop")


def plot_shift_variants(axis, rows):
    names = list(dict.fromkeys(r["name"] for r in rows))
    series = {
        s: [r["inside_truth"] for r in rows if r["shift"] == s] for s in ("none", "partial", "full")
    }
    _bars(axis, names, series)
    axis.set_ylabel("fixations inside truth")


def plot_location(axis, rows):
    labels = [r["name"] for r in rows]
    _bars(
        axis,
        labels,
        {
            "fixations inside truth": [r["inside_truth"] for r in rows],
            "IoU": [r["iou"] for r in rows],
        },
    )


def _plot(axis, rows, name):
    spec = REGISTRY.get(name)
    plot = globals()[spec.plot] if spec and spec.plot else plot_location
    plot(axis, rows)
    axis.set_title(name)


@dataclasses.dataclass
class AnalysisInputs:
    """What every one-model experiment reads (`experiment_registry.MODEL`)."""

    network: keras.Model
    examples: tf.data.Dataset
    num_classes: int
    class_names: list
    class_kinds: list
    settings: FixationSettings
    max_images: int = 100
    pad_size: int = 513
    methods: tuple = ("fixations", "fixations_contrastive", "gradcam", "saliency", "segment_prior")
    gradcam_layer: str | None = None
    faithfulness_steps: int = 50
    min_pixels: int = 64
    randomisation_images: int = 2
    randomisation_layers: int | None = None
    figure_dir: str | None = None  # faithfulness: where its curves and example panels go
    # Which images `examples` are (e.g. "segunravel_shapes/val"): part of the over-seeds
    # caches' key, so a cached model result is never reused for other images.
    source: str = ""


def _common(inputs):
    return dict(
        class_names=inputs.class_names,
        class_kinds=inputs.class_kinds,
        settings=inputs.settings,
        max_images=inputs.max_images,
        pad_size=inputs.pad_size,
    )


def run_fixation_location(inputs):
    rows = fixation_location(inputs.network, inputs.examples, inputs.num_classes, **_common(inputs))
    return rows, by_kind(rows)


def run_shift_variants(inputs):
    rows = shift_variants(inputs.network, inputs.examples, inputs.num_classes, **_common(inputs))
    return rows, {}


def run_k_analysis(inputs):
    # A fifth of the images: every layer's channel scores are kept per image.
    return k_analysis(
        inputs.network, inputs.examples, max_images=max(1, inputs.max_images // 5)
    ), {}


def run_salient_parts(inputs):
    rows = salient_parts(
        inputs.network,
        inputs.examples,
        inputs.num_classes,
        inputs.class_names,
        settings=inputs.settings,
        max_images=inputs.max_images,
    )
    return rows, {}


def run_faithfulness(inputs):
    from tf_segunravel import faithfulness

    return faithfulness.run(
        inputs.network,
        inputs.examples,
        inputs.num_classes,
        inputs.class_names,
        methods=inputs.methods,
        settings=inputs.settings,
        max_images=inputs.max_images,
        steps=inputs.faithfulness_steps,
        gradcam_layer=inputs.gradcam_layer,
        min_pixels=inputs.min_pixels,
        randomisation_images=inputs.randomisation_images,
        randomisation_layers=inputs.randomisation_layers,
        figure_dir=inputs.figure_dir,
    )


def plot_faithfulness(axis, rows):
    labels = [r["method"] for r in rows]
    keys = ("deletion_auc", "insertion_auc", "context_deletion_auc", "context_insertion_auc")
    _bars(axis, labels, {k: [r[k] for r in rows] for k in keys})
    axis.set_ylabel("area under the class's region score")


def run_experiment(name, inputs):
    """Runs the one-model experiment `name` of the registry: (rows, summary)."""
    spec = REGISTRY[name]
    if spec.reads != MODEL:
        raise ValueError(f"experiment={name} does not analyse one model")
    return globals()[spec.run](inputs)
