"""The faithfulness experiment: every method's maps scored by the metrics of
`tf_segunravel.faithfulness` over (image, predicted class) pairs (`score_methods`), and the
hooks through which `experiments.over_seeds` runs it over models trained with different
seeds (`faithfulness_over_seeds`).
"""

import dataclasses
import os
import time
import typing
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from tf_segunravel import methods as method_table
from tf_segunravel import stats
from tf_segunravel.atomic import make_output_dir, write_json, write_text
from tf_segunravel.errors import InputError
from tf_segunravel.experiment_registry import ExperimentSettings
from tf_segunravel.experiments.common import AnalysisInputs, Network, _bars, write_results
from tf_segunravel.faithfulness import (
    METRICS,
    PER_IMAGE,
    area,
    bootstrap,
    cascade_correlations,
    context_domain,
    curve,
    energy,
    over_seeds,
    over_seeds_markdown,
    pointing_game,
    randomised_layers,
    road,
)
from tf_segunravel.unravel.settings import FixationSettings

if typing.TYPE_CHECKING:
    from matplotlib.axes import Axes


def run(inputs: AnalysisInputs) -> tuple[list[dict], dict]:
    options = inputs.options
    return score_methods(
        inputs.network,
        inputs.examples,
        inputs.num_classes,
        inputs.class_names,
        methods=options.methods,
        settings=inputs.settings,
        max_images=options.max_images,
        steps=options.faithfulness_steps,
        gradcam_layer=options.gradcam_layer,
        min_pixels=options.min_pixels,
        randomisation_images=options.randomisation_images,
        randomisation_layers=options.randomisation_layers,
        figure_dir=inputs.figure_dir,
    )


def plot(axis: "Axes", rows: list[dict]) -> None:
    labels = [r["method"] for r in rows]
    keys = ("deletion_auc", "insertion_auc", "context_deletion_auc", "context_insertion_auc")
    _bars(axis, labels, {k: [r[k] for r in rows] for k in keys})
    axis.set_ylabel("area under the class's region score")


# faithfulness_over_seeds: the hooks of `experiments.over_seeds`. Each model's result is its
# `run` summary, and its faithfulness.csv/.json/.png, curves and example panels go to its
# `per_model/<model path>/` folder.


def seeds_key(inputs: AnalysisInputs) -> dict:
    """What a model's cached result depends on beside the model file."""
    options = inputs.options
    return {
        "settings": inputs.settings.as_dict(),
        "source": inputs.source,
        "images": options.max_images,
        "methods": list(options.methods),
        "gradcam_layer": options.gradcam_layer,
        "steps": options.faithfulness_steps,
        "min_pixels": options.min_pixels,
        "randomisation_images": options.randomisation_images,
        "randomisation_layers": options.randomisation_layers,
    }


def seed_result(inputs: AnalysisInputs, model_name: str, model_dir: str | None) -> dict:
    """One model's summary (`run`); its files go to `model_dir` when given."""
    del model_name  # the summary is keyed by position in `summarise_seeds`
    rows, summary = run(dataclasses.replace(inputs, figure_dir=model_dir))
    if model_dir:
        write_results(rows, model_dir, "faithfulness", summary)
    return summary


def summarise_seeds(summaries: list[dict], model_names: list[str], inputs: AnalysisInputs) -> dict:
    """For each fixation method that ran, `over_seeds`: its difference from every other
    method per metric, one value per seed (the seed's mean paired difference), with a 95% t
    interval over the seeds; `methods`: each method's per-seed means with their interval;
    and the curves averaged over the seeds."""
    methods = list(inputs.options.methods)
    return {
        "models": list(model_names),
        "run": seeds_key(inputs),
        "pairs": [s["pairs"] for s in summaries],
        "methods": {
            m: {
                metric: stats.mean_interval([s["methods"][m][metric]["mean"] for s in summaries])
                for metric in METRICS
            }
            for m in methods
        },
        "over_seeds": {
            m: over_seeds(summaries, m)
            for m in method_table.names(fixations=True)
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


def write_seed_summary(result: dict, output_dir: str) -> None:
    """faithfulness_over_seeds.json, .md and _curves.png."""
    from tf_segunravel import viz

    make_output_dir(output_dir)
    write_json(os.path.join(output_dir, "faithfulness_over_seeds.json"), result)
    write_text(os.path.join(output_dir, "faithfulness_over_seeds.md"), seeds_markdown(result))
    viz.curves_figure(
        result["curves"], os.path.join(output_dir, "faithfulness_over_seeds_curves.png")
    )


def seeds_markdown(result: dict) -> str:
    """The `faithfulness_over_seeds` tables: every method's means over the seeds, then each
    fixation method minus every other method."""
    metrics = METRICS
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
        lines += ["", over_seeds_markdown(table, method).rstrip()]
    return "\n".join(lines) + "\n"


REFERENCE_METHOD = "gradcam"


DEFAULTS = ExperimentSettings()


class NoPairsError(ValueError):
    """No (image, class) pair covers enough predicted pixels to be scored."""


def _maps(method, graph, image, classes, options, seed, regions):
    """float32 [len(classes), H, W]: `method`'s maps (an entry of `methods`) for one image."""
    from tf_segunravel.unravel.rules import UntraceableLayerError

    batch = (regions[0][None], regions[1][None])
    try:
        return method_table.get(method).maps(graph, image[None], classes, batch, seed, options)[0]
    except UntraceableLayerError as e:  # refused only when traced (path_weight=contribution)
        raise InputError(f"--methods={method}: {e}") from e


def _explainer(method, graph, image, classes, options, seed):
    """explain_maps(model, regions) for `cascade_correlations`: `method`'s maps on another
    model of the same graph (input settings and output kept), the regions fixed (they seed
    the fixations: the walk starts where it did)."""
    from tf_segunravel.unravel.graph import ModelGraph

    def explain_maps(model, regions):
        other = ModelGraph(
            model, input=graph.input_settings, output=graph.output_name, strict=False
        )
        return _maps(method, other, image, classes, options, seed, regions)

    return explain_maps


def score_methods(
    network: Network,
    examples: tf.data.Dataset,
    num_classes: int,
    class_names: Sequence[str] | None = None,
    *,
    methods: Sequence[str] = ExperimentSettings().methods,
    settings: FixationSettings | None = None,
    max_images: int = 10,
    steps: int = 50,
    fill: str = "mean",
    gradcam_layer: str | None = None,
    min_pixels: int = DEFAULTS.min_pixels,
    randomisation_images: int = DEFAULTS.randomisation_images,
    randomisation_layers: int | None = None,
    seed: int = 0,
    figure_dir: str | None = None,
    panels: int = 2,
) -> tuple[list[dict], dict]:
    """Every method's metrics over (image, predicted class) pairs; returns (rows, summary).

    `network` is a Keras model or a `graph.ModelGraph`; `examples` TFDS-style examples with
    ground truth. A pair counts when the class covers at least `min_pixels` predicted pixels;
    `NoPairsError` when none does. `randomisation_rank_correlation` (the mean over the
    cascade's steps of the rank correlation with the clean map, lower: the map depends more on
    the weights) is measured on the first `randomisation_images` scored images, over the
    first `randomisation_layers` weighted layers from the scores down (default: all); the
    per-layer cascade is in `summary["randomisation"]`.
    rows: one per method with each metric's mean; summary: `methods.<method>.<metric>` and
    `by_class.<class id>.<method>.<metric>`, each {mean, low, high, n} with a paired bootstrap
    interval of its difference from Grad-CAM (`minus_gradcam`) where Grad-CAM ran, and the
    deletion / insertion curves' means per method (`curves`).
    With `figure_dir`, also writes `faithfulness_curves.png` (those mean curves) and, for the
    first `panels` scored images, `faithfulness_example<N>.png`: every method's map of every
    scored class side by side. Nothing is written when no pair is scored."""

    from tf_segunravel import baselines
    from tf_segunravel.data.labels import class_name
    from tf_segunravel.unravel import FixationSettings, ScoreMap
    from tf_segunravel.unravel.graph import as_graph

    settings = settings or FixationSettings(sigma=6.0)
    graph = as_graph(network, strict=False)
    methods = method_table.check(methods)
    method_options = method_table.MethodOptions(settings, gradcam_layer)
    score_map = ScoreMap(graph)
    records = []  # (image, class, method, {metric: value})
    curves: dict[str, dict[str, list]] = {m: {"deletion": [], "insertion": []} for m in methods}
    cascades: dict[str, list] = {m: [] for m in methods}  # per method: [steps, classes] tables
    layer_names, scored, read = None, 0, 0
    examples_shown = []  # (image index, image, classes, {method: maps}) for the panels
    for index, example in enumerate(examples.take(max_images).as_numpy_iterator()):
        read += 1
        image = example["image"]
        truth = example["segmentation"][..., 0]
        regions = baselines.predicted_regions(graph, image)  # one pass, every method
        labels = regions[1]
        classes = [int(c) for c in np.unique(labels) if (labels == c).sum() >= min_pixels]
        if not classes:
            continue
        scored += 1
        shown: dict | None = {} if scored <= panels else None
        for method in methods:
            arguments = (method, graph, image, classes, method_options, seed)
            if scored == 1:  # untimed: the first call traces the engine's compiled functions
                _maps(*arguments, regions)
            start = time.perf_counter()
            maps = _maps(*arguments, regions)
            seconds = time.perf_counter() - start
            if shown is not None:
                shown[method] = np.asarray(maps)
            correlations = None
            if scored <= randomisation_images:
                explain_maps = _explainer(method, graph, image, classes, method_options, seed)
                layer_names, correlations = cascade_correlations(
                    explain_maps,
                    graph.model,
                    image,
                    classes,
                    seed=seed,
                    layers=randomised_layers(graph.model)[:randomisation_layers],
                    input=graph.input_settings,
                    output=graph.output_name,
                    regions=regions,
                )
                cascades[method].append(correlations)
            for number, (cls, saliency) in enumerate(zip(classes, maps, strict=True)):
                region = labels == cls
                options: dict[str, typing.Any] = {"steps": steps, "fill": fill, "seed": seed}
                deletion = curve(score_map, image, cls, region, saliency, **options)
                insertion = curve(
                    score_map, image, cls, region, saliency, mode="insertion", **options
                )
                curves[method]["deletion"].append(deletion)
                curves[method]["insertion"].append(insertion)
                values = {
                    "deletion_auc": area(deletion),
                    "insertion_auc": area(insertion),
                    "road": road(score_map, image, cls, region, saliency, seed=seed),
                    "energy": energy(saliency, truth == cls),
                    "pointing_game": pointing_game(saliency, truth == cls),
                    "seconds_per_image": seconds,
                }
                if correlations is not None:
                    values["randomisation_rank_correlation"] = float(correlations[:, number].mean())
                if context_domain(region).numpy().any():
                    for mode in ("deletion", "insertion"):
                        values[f"context_{mode}_auc"] = area(
                            curve(
                                score_map,
                                image,
                                cls,
                                region,
                                saliency,
                                mode=mode,
                                domain="context",
                                **options,
                            )
                        )
                records.append((index, cls, method, values))
        if shown is not None:
            examples_shown.append((index, image, classes, shown))
    if not records:
        raise NoPairsError(
            f"no predicted class covers {min_pixels} pixels in the {read} images read"
        )
    summary = _summarise(records, methods)
    summary["randomisation"] = {
        m: [
            {"layer": name, "rank_correlation": float(np.mean([t[step].mean() for t in tables]))}
            for step, name in enumerate(layer_names or [])
        ]
        for m, tables in cascades.items()
        if tables
    }
    summary["curves"] = {
        m: {k: np.mean(v, axis=0).tolist() if v else [] for k, v in c.items()}
        for m, c in curves.items()
    }
    summary["pairs"] = len({(i, c) for i, c, _, _ in records})
    rows = []
    for method in methods:
        row = {"method": method}
        for metric in METRICS:
            row[metric] = summary["methods"][method][metric]["mean"]
        rows.append(row)
    by_class = summary["by_class"]
    summary["class_names"] = {c: class_name(class_names, int(c)) for c in by_class}
    if figure_dir:
        write_figures(figure_dir, summary["curves"], examples_shown, class_names)
    return rows, summary


def write_figures(
    figure_dir: str,
    curves: dict[str, dict[str, list[float]]],
    examples_shown: Sequence[tuple] = (),
    class_names: Sequence[str] | None = None,
) -> None:
    """`faithfulness_curves.png` from {method: {"deletion": [...], "insertion": [...]}}, and
    one `faithfulness_example<N>.png` per (image index, image, classes, {method: maps})."""
    import os

    from tf_segunravel import viz
    from tf_segunravel.atomic import make_output_dir

    make_output_dir(figure_dir)
    viz.curves_figure(curves, os.path.join(figure_dir, "faithfulness_curves.png"))
    for number, (index, image, classes, maps) in enumerate(examples_shown):
        viz.comparison_figure(
            np.asarray(image, np.uint8),
            classes,
            maps,
            class_names,
            os.path.join(figure_dir, f"faithfulness_example{number}.png"),
            title=f"image {index}",
        )


def _summarise(records, methods):
    def table(chosen):
        values = {}  # (method, metric) -> {(image, class): value}
        for index, cls, method, metrics in chosen:
            for metric, value in metrics.items():
                key = (index, None) if metric in PER_IMAGE else (index, cls)
                values.setdefault((method, metric), {})[key] = value
        out = {}
        for method in methods:
            out[method] = {}
            for metric in METRICS:
                mine = values.get((method, metric), {})
                entry = bootstrap(list(mine.values()))
                reference = values.get((REFERENCE_METHOD, metric))
                if reference is not None and method != REFERENCE_METHOD:
                    paired = [mine[k] - reference[k] for k in mine if k in reference]
                    entry["minus_gradcam"] = bootstrap(paired)
                out[method][metric] = entry
        return out

    classes = sorted({cls for _, cls, _, _ in records})
    return {
        "methods": table(records),
        "by_class": {str(c): table([r for r in records if r[1] == c]) for c in classes},
    }
