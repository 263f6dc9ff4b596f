"""Resumable units of work, shared by the demo and the template sweep.

A unit is done when its record (a JSON file, written atomically as the unit's last act)
exists and says it was made from the same inputs. That is the only notion of "done": a re-run
reuses what finished, redoes what was made from other inputs (another `--val_images`), and an
interrupted training resumes from its own checkpoints.
"""

import json
import os
import time
from collections.abc import Callable
from typing import Any

from tf_segunravel.atomic import write_json

# The key under which a record keeps the inputs it was made from.
MADE_FROM = "made_from"
TRAINED = "trained.json"
SCORES = "val.json"


def reuse(path: str, inputs: dict) -> dict | None:
    """The record at `path` if it exists and was made from `inputs`; else None."""
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        record = json.load(f)
    return record if record.get(MADE_FROM) == inputs else None


def once(path: str, inputs: dict, make: Callable[[], dict]) -> tuple[dict, bool]:
    """(record, reused): the record at `path` if done before, else `make()`'s, written there.

    The returned record is read back from the file, so a first run and a re-run hand the
    same values on (JSON rounds floats the same way both times)."""
    record = reuse(path, inputs)
    if record is not None:
        return record, True
    write_json(path, {**make(), MADE_FROM: inputs})
    record = reuse(path, inputs)
    assert record is not None  # just written
    return record, False


def train_arm(config: Any, log: Callable[[str], None], label: str | None = None) -> dict:
    """Trains `config` unless done before; its record has `train_seconds`, or `diverged`.

    A loss that blows up is a result too (the template sweep reports which seeds diverged),
    so it is recorded, not raised."""
    from tf_segunravel.training import train
    from tf_segunravel.training.loop import TrainingDiverged

    label = label or config.model_dir

    def make():
        log(f"{label}: {config.steps} steps -> {config.model_dir}")
        start = time.perf_counter()
        try:
            train(config)
        except TrainingDiverged as e:
            return {"diverged": str(e)}
        return {"train_seconds": time.perf_counter() - start}

    record, reused = once(os.path.join(config.model_dir, TRAINED), {"steps": config.steps}, make)
    if reused:
        log(f"{label}: done before, reused")
    return record


def evaluate_arm(
    model_dir: str,
    images: int,
    score: Callable[[str], dict],
    log: Callable[[str], None],
    label: str | None = None,
) -> tuple[dict, bool]:
    """(`score(model_dir)`'s record over `images` val images, reused); in `model_dir`/val.json.

    Scores over another number of images (an earlier `--val_images`) are not reused."""

    def make():
        log(f"{label or model_dir}")
        return score(model_dir)

    return once(os.path.join(model_dir, SCORES), {"images": images}, make)
