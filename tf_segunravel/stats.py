"""Means with 95% confidence intervals, for results quoted over seeds.

Results over a handful of training seeds are quoted as mean +- the half-width of Student's t
interval. The t quantiles are tabled here because numpy has none and the package does not
depend on scipy; they are the standard two-sided 95% values.
"""

import math
import typing
from collections.abc import Sequence

import numpy as np

# A mean with its 95% interval: {mean, low, high, n} (None where there are too few values),
# with the values it came from under `values`.
Interval: typing.TypeAlias = dict[str, typing.Any]

# Two-sided 95% quantiles of Student's t, t_{0.975}(df), for df = 1..30.
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip
_Z975 = 1.960


def t_quantile(df: int) -> float:
    """t_{0.975}(df); the normal quantile past df = 30 (within 0.04 of t there)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    return _T975[df - 1] if df <= len(_T975) else _Z975


def mean_interval(values: typing.Iterable[float | None]) -> Interval:
    """{mean, low, high, half_width, n, values} of a 95% t interval; None values are left
    out; with one value the interval is undefined (low = high = None)."""
    kept = [float(v) for v in values if v is not None and not math.isnan(v)]
    if not kept:
        return {"mean": None, "low": None, "high": None, "half_width": None, "n": 0, "values": []}
    mean = float(np.mean(kept))
    if len(kept) < 2:
        return {"mean": mean, "low": None, "high": None, "half_width": None, "n": 1,
                "values": kept}  # fmt: skip
    half = t_quantile(len(kept) - 1) * float(np.std(kept, ddof=1)) / math.sqrt(len(kept))
    return {
        "mean": mean,
        "low": mean - half,
        "high": mean + half,
        "half_width": half,
        "n": len(kept),
        "values": kept,
    }


def markdown_table(header: Sequence[str], rows: typing.Iterable[Sequence[typing.Any]]) -> list[str]:
    """The lines of a Markdown table: `header` the column titles, `rows` lists of cells
    (strings), one per column."""
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def describe(interval: Interval, digits: int = 2, signed: bool = False) -> str:
    """'mean [low, high]' (or 'mean' with one value, '-' with none); `signed` writes the
    sign of every figure, for differences."""
    if interval["mean"] is None:
        return "-"
    form = f"{'+' if signed else ''}.{digits}f"
    if interval["low"] is None:
        return format(interval["mean"], form)
    low, high = format(interval["low"], form), format(interval["high"], form)
    return f"{format(interval['mean'], form)} [{low}, {high}]"


def verdict(interval: Interval) -> str:
    """What a 95% interval of a difference supports: 'above 0', 'below 0' or 'includes 0'."""
    if interval["low"] is None:
        return "too few seeds"
    if interval["low"] > 0:
        return "above 0"
    if interval["high"] < 0:
        return "below 0"
    return "includes 0"
