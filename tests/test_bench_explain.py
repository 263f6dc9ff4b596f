"""bench/explain.py times what the tools run: its lines name every figure and ratio the docs
quote, and the fixation entries it times are the methods table's, on every predicted class."""

import keras
import pytest

from tf_segunravel.models import deeplab_largefov


# Times two networks (about 11 s): with the slow tests, for the fast suite's 5-minute budget.
@pytest.mark.slow
def test_the_explain_bench_prints_every_figure_and_ratio(monkeypatch, capsys):
    from absl import flags

    from bench import explain

    monkeypatch.setitem(
        explain.NETWORKS, "tiny", (lambda: deeplab_largefov(num_classes=4, width=1 / 16), 49)
    )
    flags.FLAGS(["explain", "--explain_repeats=1", "--methods=gradcam"])
    keras.utils.set_random_seed(0)
    ratios = dict(explain.measure("tiny"))
    lines = dict(line.split(": ") for line in capsys.readouterr().out.strip().splitlines())
    assert int(lines["tiny_classes"]) >= 1
    for figure in ("forward", "fixations", "fixations_k3", "gradcam"):
        assert float(lines[f"tiny_{figure}_s"]) > 0
    assert set(ratios) == {
        "tiny_fixation_maps_over_forward",
        "tiny_fixations_k3_over_forward",
        "tiny_gradcam_compiled_over_fixation_maps",
    }
    assert all(value > 0 for value in ratios.values())
