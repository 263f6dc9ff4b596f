"""Choosing a fixation variant on a development set: the rule of the faithfulness study
(docs/results.md, "Which fixation map is most faithful"), fixed before its held-back runs.

It reads the `faithfulness.json` that `--experiment=faithfulness` wrote for each development
network. In each (network, metric) cell it ranks the candidates, the fixation methods that
every file scored (the table's `fixations*` entries bar the contrastive one, which explains
the margin over the runner-up class, another quantity), by deletion (lower is better),
insertion and ROAD (higher is better); ties in a cell go to the entry listed first in the
methods table. The candidate with the lowest mean rank over the cells is chosen, a tie again
going to the one listed first. Pure Python: no model is loaded, nothing is recomputed.
"""

import json
import math
import os
from collections.abc import Sequence

from tf_segunravel import methods
from tf_segunravel.atomic import make_output_dir, write_json, write_text
from tf_segunravel.errors import InputError

RESULTS_FILE = "faithfulness.json"
# (metric, lower is better): the curves the study ranks by.
RANKED_METRICS = (("deletion_auc", True), ("insertion_auc", False), ("road", False))
NOT_CANDIDATES = ("fixations_contrastive",)


def read_rows(folder: str) -> dict[str, dict]:
    """The rows of `folder`/faithfulness.json by method; an InputError naming the file when
    it is missing, unreadable or has no rows."""
    path = os.path.join(folder, RESULTS_FILE)
    try:
        with open(path) as f:
            rows = json.load(f)["rows"]
        by_method = {row["method"]: row for row in rows}
    except FileNotFoundError:
        raise InputError(f"{path}: no such file; run --experiment=faithfulness first") from None
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(f"{path}: not a faithfulness result ({e!r})") from None
    if not by_method:
        raise InputError(f"{path}: no rows")
    return by_method


def candidates(results: Sequence[dict[str, dict]]) -> list[str]:
    """The fixation methods that every result scored, in table order."""
    return [
        name
        for name in methods.names(fixations=True)
        if name not in NOT_CANDIDATES and all(name in rows for rows in results)
    ]


def _value(rows: dict[str, dict], method: str, metric: str, folder: str) -> float:
    value = rows[method].get(metric)
    if not isinstance(value, int | float) or not math.isfinite(value):
        raise InputError(
            f"{os.path.join(folder, RESULTS_FILE)}: {method} has no finite {metric} ({value!r})"
        )
    return float(value)


def choose(folders: Sequence[str]) -> dict:
    """The rule on the faithfulness results in `folders`: a JSON-ready dict with `chosen`,
    `mean_rank` {candidate: mean rank}, `cells` [{folder, metric, order}] (each cell's
    candidates best first) and `candidates`. An InputError when fewer than two candidates
    are scored by every folder."""
    if not folders:
        raise InputError("results: no development results given")
    results = [read_rows(folder) for folder in folders]
    names = candidates(results)
    if len(names) < 2:
        raise InputError(
            f"results: {len(names)} fixation method(s) scored by every file ({names}); "
            "the rule needs at least two to choose between"
        )
    table_order = {name: i for i, name in enumerate(names)}
    ranks: dict[str, list[int]] = {name: [] for name in names}
    cells = []
    for folder, rows in zip(folders, results, strict=True):
        for metric, lower_is_better in RANKED_METRICS:
            sign = 1.0 if lower_is_better else -1.0
            values = {name: _value(rows, name, metric, folder) for name in names}
            order = sorted(names, key=lambda name: (sign * values[name], table_order[name]))
            for rank, name in enumerate(order, start=1):
                ranks[name].append(rank)
            cells.append({"folder": folder, "metric": metric, "order": order})
    mean_rank = {name: sum(r) / len(r) for name, r in ranks.items()}
    chosen = min(names, key=lambda name: (mean_rank[name], table_order[name]))
    return {"chosen": chosen, "mean_rank": mean_rank, "cells": cells, "candidates": names}


def markdown(summary: dict) -> str:
    """The mean ranks, best first, and the choice."""
    lines = ["| candidate | mean rank |", "| --- | --- |"]
    for name in sorted(summary["candidates"], key=lambda n: summary["mean_rank"][n]):
        lines.append(f"| {name} | {summary['mean_rank'][name]:.2f} |")
    cells = len(summary["cells"])
    lines += ["", f"Chosen over {cells} (network, metric) cells: {summary['chosen']}"]
    return "\n".join(lines)


def run(folders: Sequence[str], output_dir: str, name: str) -> dict:
    """`choose`, written to `output_dir`/<name>.json and .md (nothing written on bad input)."""
    summary = choose(folders)
    make_output_dir(output_dir)
    write_json(os.path.join(output_dir, f"{name}.json"), summary)
    write_text(os.path.join(output_dir, f"{name}.md"), markdown(summary) + "\n")
    return summary
