"""Segmentation unravel: GradientTape-free tracing of segmentation fixations.

The names below load on first use (PEP 562), not with the package: the tools import
`unravel.settings` to define and check their flags, and a bad flag should fail in a fraction
of a second, not after TensorFlow's import of several seconds.
"""

import importlib

_HOMES = {
    "ChannelScores": "tracer",
    "FixationSettings": "settings",
    "FlowStep": "tracer",
    "SegUnravel": "tracer",
    "UnravelResult": "tracer",
    "UntraceableLayerError": "rules",
    "fixation_maps": "maps",
    "heatmaps": "maps",
    "register_rule": "rules",
}
__all__ = sorted(_HOMES)


def __getattr__(name):
    if name in _HOMES:
        return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
