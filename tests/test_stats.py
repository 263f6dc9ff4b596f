"""95% intervals over seeds, against values worked by hand."""

import math

import pytest

from tf_segunravel import stats


def test_interval_of_five_values():
    values = [1.0, 2.0, 3.0, 4.0, 5.0]
    got = stats.mean_interval(values)
    # mean 3, sample sd sqrt(2.5), t_{0.975}(4) = 2.776
    half = 2.776 * math.sqrt(2.5) / math.sqrt(5)
    assert got["mean"] == 3.0 and got["n"] == 5
    assert got["low"] == pytest.approx(3.0 - half) and got["high"] == pytest.approx(3.0 + half)
    assert stats.verdict(got) == "above 0"
    assert stats.describe(got) == "3.00 [1.04, 4.96]"
    assert stats.describe(got, signed=True) == "+3.00 [+1.04, +4.96]"


def test_missing_values_and_degenerate_cases():
    got = stats.mean_interval([2.0, None, float("nan"), 4.0])
    assert got["n"] == 2 and got["half_width"] == pytest.approx(
        12.706 * math.sqrt(2) / math.sqrt(2)
    )
    assert stats.verdict(got) == "includes 0"
    one = stats.mean_interval([-1.5])
    assert one["low"] is None and stats.verdict(one) == "too few seeds"
    assert stats.describe(stats.mean_interval([])) == "-"
    assert stats.verdict(stats.mean_interval([-3.0, -2.0, -2.5])) == "below 0"


def test_t_quantiles():
    assert stats.t_quantile(1) == 12.706 and stats.t_quantile(30) == 2.042
    assert stats.t_quantile(100) == 1.960
    with pytest.raises(ValueError):
        stats.t_quantile(0)


def test_markdown_table_lines():
    assert stats.markdown_table(["a", "b"], [["1", "2"], ["x", "-"]]) == [
        "| a | b |",
        "| --- | --- |",
        "| 1 | 2 |",
        "| x | - |",
    ]
