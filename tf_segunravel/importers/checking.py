"""How every importer checks an import against its source's own runtime: the probe input,
the tolerance and the difference measured against it (docs/importers.md, "The check")."""

from collections.abc import Sequence

import numpy as np

# The largest difference from the reference runtime accepted, relative to a tensor's range.
TOLERANCE = 1e-4

# A tensor's difference is measured against its range, but never against less than this: a
# saturated sigmoid's range on the probe can be 1e-6, where float32 rounding alone is 1e-7.
SMALLEST_RANGE = 1e-2


def probe(shape: Sequence[int], seed: int = 0) -> np.ndarray:
    """The probe input an import is checked on: float32 N(0, 1) of `shape`."""
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def relative_difference(have: np.ndarray, want: np.ndarray) -> float:
    """The largest absolute difference of `have` from `want`, over `want`'s range (at least
    SMALLEST_RANGE)."""
    difference = np.max(np.abs(np.asarray(have, np.float64) - want)) if want.size else 0.0
    return float(difference) / max(float(np.ptp(want)) if want.size else 0.0, SMALLEST_RANGE)


def one_line(error: BaseException) -> str:
    """`error` as "Type: its first line", for a refusal that must stay one line (Keras'
    errors run over several)."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
