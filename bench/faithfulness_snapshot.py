"""Snapshots a full faithfulness run (every method of the table, randomisation included) on a
width-1/16 LargeFOV over three segunravel_shapes val images, timings left out, to show that
a change leaves every method's numbers as they were:

    git worktree add /tmp/before HEAD~1
    python3 bench/faithfulness_snapshot.py /tmp/before /tmp/before.json
    python3 bench/faithfulness_snapshot.py . /tmp/after.json
    python3 bench/faithfulness_snapshot.py --compare /tmp/before.json /tmp/after.json

The first argument is the source tree whose package is imported (trees from before the
experiments package ran the same runner as `faithfulness.run`). About five minutes on 2
cores; it prepares segunravel_shapes in a temporary TFDS dir.
"""

import json
import sys
import tempfile


def _differences(before, after, path=""):
    if isinstance(before, dict) and isinstance(after, dict):
        found = []
        for key in sorted(set(before) | set(after)):
            if key not in before or key not in after:
                found.append(f"{path}/{key}: only in one")
            else:
                found += _differences(before[key], after[key], f"{path}/{key}")
        return found
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        return [
            d
            for i, pair in enumerate(zip(before, after, strict=True))
            for d in _differences(*pair, f"{path}[{i}]")
        ]
    return [] if before == after else [f"{path}: {before} != {after}"]


def _without_timings(value):
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if "seconds" not in k}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def main():
    if sys.argv[1] == "--compare":
        with open(sys.argv[2]) as f, open(sys.argv[3]) as g:
            found = _differences(json.load(f), json.load(g))
        print(f"differing: {len(found)}")
        print("\n".join(found[:20]))
        sys.exit(1 if found else 0)
    sys.path.insert(0, sys.argv[1])  # the tree under test, before any of its modules load
    import tensorflow_datasets as tfds

    import tf_segunravel.data  # noqa: F401  (registers the builders)
    from tests.helpers import save_tiny_largefov
    from tf_segunravel.data import load_split

    try:
        from tf_segunravel.experiments.faithfulness import score_methods
    except ImportError:  # a tree from before the experiments package
        from tf_segunravel.faithfulness import run as score_methods

    work = tempfile.mkdtemp()
    tfds.builder("segunravel_shapes", data_dir=work).download_and_prepare()
    model = save_tiny_largefov(f"{work}/tiny.keras", 6)
    methods = (
        "fixations", "fixations_contrastive", "gradcam", "gradcam_plus_plus", "saliency",
        "smoothgrad", "gradient_x_input", "random", "segment_prior", "distance_prior",
    )  # fmt: skip
    rows, summary = score_methods(
        model,
        load_split("segunravel_shapes", "val", work),
        6,
        methods=methods,
        max_images=3,
        steps=4,
        min_pixels=16,
        randomisation_images=1,
        randomisation_layers=2,
    )
    with open(sys.argv[2], "w") as f:
        json.dump(
            _without_timings({"rows": rows, "summary": summary}), f, sort_keys=True, default=str
        )
    print(f"wrote {sys.argv[2]}")


if __name__ == "__main__":
    main()
