"""`fixation_location`: per class, the share of fixations inside the class's ground-truth
segment, averaged over the images where the class was unravelled, beside the class IoU; the
hooks through which `experiments.over_seeds` runs it, plain and contrastive, over models
trained with different seeds, with 95% intervals (`location_over_seeds`); and
`location_difference` of two such summaries paired by model.
"""

import dataclasses
import os
import typing
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from tf_segunravel import methods, stats
from tf_segunravel.atomic import make_output_dir, write_json, write_text
from tf_segunravel.data.labels import class_name
from tf_segunravel.evaluation import evaluate
from tf_segunravel.experiments.common import AnalysisInputs, Network, _bars, _common, _examples
from tf_segunravel.grids import labels_at_size
from tf_segunravel.stats import Interval
from tf_segunravel.unravel.graph import as_graph
from tf_segunravel.unravel.settings import FixationSettings

if typing.TYPE_CHECKING:
    from matplotlib.axes import Axes


def fixation_location(
    network: Network,
    examples: tf.data.Dataset,
    num_classes: int,
    class_names: Sequence[str] | None = None,
    class_kinds: Sequence[str] | None = None,
    settings: FixationSettings | None = None,
    max_images: int = 100,
    pad_size: int = 513,
    with_iou: bool = True,
) -> list[dict]:
    """Rows per class: images, mean inside-truth share (plain, weighted), IoU, kind; and the
    mean share inside the class's predicted segment beside that segment's share of the
    image (`predicted_area`: where a point drawn uniformly over the image lands inside as
    often, the chance level).

    With a contrastive `settings` the shares are those of the margin's fixations; without
    `with_iou` the IoU column (a second pass over the images) is None.
    """
    # The graph's engine for these settings, made once (a trace costs seconds): a caller
    # that hands the same `ModelGraph` to several experiments traces it once.
    engine = methods.engine_for(as_graph(network, strict=False), settings or FixationSettings())
    shares: dict[typing.Any, list[float]] = {c: [] for c in range(num_classes)}
    weighted: dict[typing.Any, list[float]] = {c: [] for c in range(num_classes)}
    in_predicted: dict[typing.Any, list[float]] = {c: [] for c in range(num_classes)}
    areas: dict[typing.Any, list[float]] = {c: [] for c in range(num_classes)}
    for image, truth in _examples(examples, max_images):
        result = engine(image[None].astype(np.float32))
        points, counts = result.for_image(0)
        height, width = truth.shape
        predicted = labels_at_size(result.scores, height, width, result.geometry).numpy()[0]
        for cls in np.unique(points[:, 0]):
            mine = points[:, 0] == cls
            inside = truth[points[mine, 1], points[mine, 2]] == cls
            shares[cls].append(inside.mean())
            weighted[cls].append(np.average(inside, weights=counts[mine]))
            in_predicted[cls].append(np.mean(predicted[points[mine, 1], points[mine, 2]] == cls))
            areas[cls].append(np.mean(predicted == cls))
    iou = None
    if with_iou:
        scores = evaluate(network, examples.take(max_images), num_classes, pad_size)
        iou = list(scores["per_class_iou"].values())
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
                "inside_predicted": float(np.mean(in_predicted[cls])) if shares[cls] else None,
                "predicted_area": float(np.mean(areas[cls])) if shares[cls] else None,
            }
        )
    return rows


def above_chance(rows: list[dict]) -> float | None:
    """Mean over the unravelled classes of (share inside the predicted segment minus that
    segment's share of the image): above 0, fixations land in the segment more often than
    uniformly drawn points."""
    gaps = [r["inside_predicted"] - r["predicted_area"] for r in rows if r["images"]]
    return float(np.mean(gaps)) if gaps else None


def by_kind(rows: list[dict], key: str = "inside_truth") -> dict[str, float]:
    """Mean of `key` over the classes of each kind (intrinsic, contextual, ...)."""
    groups: dict[str, list[float]] = {}
    for row in rows:
        if row["kind"] and row[key] is not None:
            groups.setdefault(row["kind"], []).append(row[key])
    return {kind: float(np.mean(values)) for kind, values in groups.items()}


# location_over_seeds: the hooks of `experiments.over_seeds`. Each model's result is
# `fixation_location` in two passes, plain and contrastive (the settings' contrast, or
# "runner_up" when it is unset).


def _passes(settings: FixationSettings) -> dict[str, FixationSettings]:
    return {
        "plain": dataclasses.replace(settings, contrast=None),
        "contrastive": dataclasses.replace(settings, contrast=settings.contrast or "runner_up"),
    }


def seeds_key(inputs: AnalysisInputs) -> dict:
    """What a model's cached result depends on beside the model file."""
    return {
        "settings": {k: p.as_dict() for k, p in _passes(inputs.settings).items()},
        "images": inputs.options.max_images,
        "pad_size": inputs.options.pad_size,
        "source": inputs.source,
    }


def seed_result(inputs: AnalysisInputs, model_name: str, model_dir: str | None) -> dict:
    """{"model", "plain", "contrastive"}: each pass's rows and by-kind shares (the IoU column
    is measured in the plain pass only)."""
    del model_dir  # nothing but the result is kept per model
    entry: dict = {"model": model_name}
    for label, chosen in _passes(inputs.settings).items():
        rows = fixation_location(
            inputs.network,
            inputs.examples,
            inputs.num_classes,
            **{**_common(inputs), "settings": chosen},
            with_iou=label == "plain",
        )
        entry[label] = {
            "rows": rows,
            "by_kind": by_kind(rows),
            "inside_predicted": _mean_of(rows, "inside_predicted"),
            "above_chance": above_chance(rows),
        }
    return entry


def _mean_of(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r[key] is not None]
    return float(np.mean(values)) if values else None


def summarise_seeds(per_model: list[dict], model_names: list[str], inputs: AnalysisInputs) -> dict:
    """Each kind's share per pass, its mean over the models with a 95% t interval, and per
    pass the paired difference intrinsic minus contextual share (above 0: the contextual
    classes' fixations leave their object more), the share inside the predicted segment and
    its margin over chance (`above_chance`); the models' own results in `per_model`."""
    passes = _passes(inputs.settings)
    summary: dict = {"models": list(model_names), "images": inputs.options.max_images}
    summary["passes"] = {}
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
        margin = stats.mean_interval([e[label].get("above_chance") for e in per_model])
        summary["passes"][label] = {
            "contrast": passes[label].contrast,
            "by_kind": by,
            "intrinsic_minus_contextual": difference,
            "verdict": stats.verdict(difference),
            "inside_predicted": stats.mean_interval(
                [e[label].get("inside_predicted") for e in per_model]
            ),
            "above_chance": margin,
            "above_chance_verdict": stats.verdict(margin),
        }
    summary["per_model"] = per_model
    return summary


def write_seed_summary(summary: dict, output_dir: str) -> None:
    """location_over_seeds.json and .md."""
    make_output_dir(output_dir)
    write_json(os.path.join(output_dir, "location_over_seeds.json"), summary)
    write_text(os.path.join(output_dir, "location_over_seeds.md"), seeds_markdown(summary))


def location_difference(first: dict, second: dict) -> dict[str, dict[str, Interval]]:
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


def seeds_markdown(summary: dict) -> str:
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
    rows.append(
        [
            "inside the predicted segment",
            *(stats.describe(p["inside_predicted"], 3) for p in passes.values()),
        ]
    )
    rows.append(
        [
            "predicted segment: inside minus chance",
            *(
                f"{stats.describe(p['above_chance'], 3, signed=True)} ({p['above_chance_verdict']})"
                for p in passes.values()
            ),
        ]
    )
    lines += stats.markdown_table(["class kind", *passes], rows)
    return "\n".join(lines) + "\n"


def plot(axis: "Axes", rows: list[dict]) -> None:
    labels = [r["name"] for r in rows]
    _bars(
        axis,
        labels,
        {
            "fixations inside truth": [r["inside_truth"] for r in rows],
            "IoU": [r["iou"] for r in rows],
        },
    )


def run(inputs: AnalysisInputs) -> tuple[list[dict], dict]:
    rows = fixation_location(inputs.network, inputs.examples, inputs.num_classes, **_common(inputs))
    return rows, by_kind(rows)
