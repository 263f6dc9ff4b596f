"""The dissertation's template-loss protocol as a resumable sweep (docs/method.md section 3).

Per seed: train the cross-entropy baseline (`flags/shapes_baseline.cfg`) once; from it,
fine-tune fc6..fc8 (`flags/shapes_finetune.cfg`) in paired arms that differ only in the loss:
the control (cross-entropy only) and each template variant at each weight. Every arm of a
seed starts from the same checkpoint and sees the same steps, schedule and input order
(`--deterministic`), so the arm minus the control of the same seed is a paired difference;
the sweep reports its mean over seeds with a 95% t interval (`tf_segunravel.stats`).

With `scratch=True` it also trains the comparison the demo used to make, the template loss
from scratch (`flags/shapes_template_cosine.cfg`) against the baseline of the same seed.

Layout of `output_dir` (each arm's training and scoring are `tf_segunravel.resumable` units:
skipped when done, training resumed from its checkpoints, so an interrupted sweep continues
where it stopped):
  tfds/                      the prepared dataset (unless `data_dir` is given)
  seed<S>/base/              the baseline; seed<S>/control/, seed<S>/<variant>_w<weight>/
  seed<S>/scratch_cosine/    with scratch
  template_sweep.json, template_sweep.md
"""

import dataclasses
import os
import time
from collections.abc import Callable, Sequence

from tf_segunravel import resumable, stats
from tf_segunravel.atomic import make_output_dir, write_json, write_text
from tf_segunravel.errors import InputError
from tf_segunravel.experiment_registry import TEMPLATE_VARIANTS, ExperimentSettings
from tf_segunravel.training.config import FLAGS_DIR, flagfile_config

# Each variant's TrainConfig settings, from its name "[selective_]<similarity>".
VARIANTS = {
    name: {
        "similarity": name.removeprefix("selective_"),
        "selective": name.startswith("selective_"),
    }
    for name in TEMPLATE_VARIANTS
}
DEFAULTS = ExperimentSettings()
BASE_FLAGFILE = "shapes_baseline.cfg"
FINETUNE_FLAGFILE = "shapes_finetune.cfg"
SCRATCH_FLAGFILE = "shapes_template_cosine.cfg"
# segunravel_shapes is evaluated padded to its images' own size (data/shapes.py IMAGE_SIZE),
# so no pixel is padding; the demo uses the same.
PAD_SIZE = 129


def arm_name(variant: str, weight: float) -> str:
    return f"{variant}_w{weight:g}"


def _train_and_evaluate(config, images, score, log):
    """Trains `config` unless done, then scores it unless done; returns its val.json record."""
    trained = resumable.train_arm(config, log)
    if "diverged" in trained:
        return {"mean_iou": None, "diverged": trained["diverged"]}
    record, _ = resumable.evaluate_arm(config.model_dir, images, score, log=lambda message: None)
    return record


def run_settings(
    output_dir: str,
    options: ExperimentSettings,
    data_dir: str | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """`run` with the sweep's settings from `options` (the tool's flags)."""
    return run(
        output_dir,
        seeds=options.seeds,
        weights=options.weights,
        variants=options.variants,
        scratch=options.scratch,
        data_dir=data_dir,
        log=log,
    )


def run(
    output_dir: str,
    seeds: Sequence[int] = DEFAULTS.seeds,
    weights: Sequence[float] = DEFAULTS.weights,
    variants: Sequence[str] = DEFAULTS.variants,
    scratch: bool = False,
    data_dir: str | None = None,
    flags_dir: str = FLAGS_DIR,
    base_overrides: dict | None = None,
    finetune_overrides: dict | None = None,
    val_images: int | None = None,
    verbose: int = 0,
    log: Callable[[str], None] = print,
) -> dict:
    """Runs (or resumes) the sweep; returns the summary also written to template_sweep.json.

    `base_overrides` / `finetune_overrides` replace flagfile settings and `val_images` scores
    only the first val images (tests use them for tiny runs); every run is `deterministic`.
    """
    import tensorflow_datasets as tfds

    import tf_segunravel.data  # noqa: F401  (registers the builders)
    from tf_segunravel.data import load_split
    from tf_segunravel.data.shapes import CLASS_NAMES
    from tf_segunravel.evaluation import evaluate
    from tf_segunravel.training import load_network

    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise InputError(f"variants: unknown {unknown}; choose from {list(VARIANTS)}")
    if not seeds:
        raise InputError("seeds: at least one seed is needed")
    started = time.perf_counter()
    make_output_dir(output_dir)
    if data_dir is None:
        data_dir = os.path.join(output_dir, "tfds")
        tfds.builder("segunravel_shapes", data_dir=data_dir).download_and_prepare()
    val = load_split("segunravel_shapes", "val", data_dir)
    if val_images:
        val = val.take(val_images)

    images = int(val.cardinality())

    def score(model_dir):
        scores = evaluate(load_network(model_dir), val, len(CLASS_NAMES), PAD_SIZE, CLASS_NAMES)
        return {k: scores[k] for k in ("mean_iou", "per_class_iou", "pixel_accuracy", "images")}

    common = {"data_dir": data_dir, "deterministic": True, "verbose": verbose}
    arms = [arm_name(v, w) for v in variants for w in weights]
    results = {}  # (seed, arm) -> val record
    for seed in seeds:
        seed_dir = os.path.join(output_dir, f"seed{seed}")
        base_dir = os.path.join(seed_dir, "base")
        base = flagfile_config(
            BASE_FLAGFILE,
            flags_dir,
            **common,
            seed=seed,
            model_dir=base_dir,
            **(base_overrides or {}),
        )
        results[(seed, "base")] = _train_and_evaluate(base, images, score, log)
        finetune = flagfile_config(
            FINETUNE_FLAGFILE,
            flags_dir,
            **common,
            seed=seed,
            init_path=base_dir,
            model_dir=os.path.join(seed_dir, "control"),
            **(finetune_overrides or {}),
        )
        results[(seed, "control")] = _train_and_evaluate(finetune, images, score, log)
        for variant in variants:
            for weight in weights:
                name = arm_name(variant, weight)
                config = dataclasses.replace(
                    finetune,
                    model_dir=os.path.join(seed_dir, name),
                    template_weight=float(weight),
                    **VARIANTS[variant],  # type: ignore[arg-type]  # similarity, selective
                )
                results[(seed, name)] = _train_and_evaluate(config, images, score, log)
        if scratch:
            config = flagfile_config(
                SCRATCH_FLAGFILE,
                flags_dir,
                **common,
                seed=seed,
                model_dir=os.path.join(seed_dir, "scratch_cosine"),
                **(base_overrides or {}),
            )
            results[(seed, "scratch_cosine")] = _train_and_evaluate(config, images, score, log)

    summary = summarise(results, seeds, arms, scratch)
    summary["wall_seconds"] = time.perf_counter() - started
    summary["finetune"] = {
        k: v for k, v in dataclasses.asdict(finetune).items() if k not in ("model_dir", "seed")
    }
    write_json(os.path.join(output_dir, "template_sweep.json"), summary)
    write_text(os.path.join(output_dir, "template_sweep.md"), markdown(summary))
    return summary


def _miou(record):
    value = record.get("mean_iou")
    return None if value is None else 100 * value


def _paired(results, seeds, arm, reference):
    """Per seed arm - reference in mIoU points (None where either diverged)."""
    diffs = []
    for seed in seeds:
        a, b = _miou(results[(seed, arm)]), _miou(results[(seed, reference)])
        diffs.append(None if a is None or b is None else a - b)
    return diffs


def summarise(
    results: dict[tuple[int, str], dict],
    seeds: Sequence[int],
    arms: Sequence[str],
    scratch: bool = False,
) -> dict:
    """The sweep's table: each arm's paired difference from its control, over seeds."""
    rows = []
    for arm in arms:
        diffs = _paired(results, seeds, arm, "control")
        interval = stats.mean_interval(diffs)
        rows.append(
            {
                "arm": arm,
                "reference": "control",
                "difference": interval,
                "verdict": stats.verdict(interval),
                "diverged_seeds": [s for s in seeds if "diverged" in results[(s, arm)]],
            }
        )
    if scratch:
        interval = stats.mean_interval(_paired(results, seeds, "scratch_cosine", "base"))
        rows.append(
            {
                "arm": "scratch_cosine",
                "reference": "base",
                "difference": interval,
                "verdict": stats.verdict(interval),
                "diverged_seeds": [
                    s for s in seeds if "diverged" in results[(s, "scratch_cosine")]
                ],
            }
        )
    return {
        "seeds": list(seeds),
        "base_miou": stats.mean_interval([_miou(results[(s, "base")]) for s in seeds]),
        "control_miou": stats.mean_interval([_miou(results[(s, "control")]) for s in seeds]),
        "rows": rows,
        "miou_per_seed": {
            f"seed{s}/{arm}": _miou(results[(s, arm)])
            for (s, arm) in sorted(results, key=lambda key: (key[0], key[1]))
        },
    }


def markdown(summary: dict) -> str:
    lines = [
        f"Seeds: {summary['seeds']}. Baseline val mIoU "
        f"{stats.describe(summary['base_miou'])}, fine-tuned control "
        f"{stats.describe(summary['control_miou'])} (mean [95% interval], %).",
        "",
    ]
    header = [
        "arm",
        "minus",
        "mean paired difference, mIoU points [95% interval]",
        "interval",
        "diverged",
    ]
    rows = [
        [
            row["arm"],
            row["reference"],
            stats.describe(row["difference"], signed=True),
            row["verdict"],
            ", ".join(str(s) for s in row["diverged_seeds"]) or "-",
        ]
        for row in summary["rows"]
    ]
    lines += stats.markdown_table(header, rows)
    return "\n".join(lines) + "\n"
