"""Segmentation unravel: GradientTape-free tracing of segmentation fixations.

The names load on first use (`tf_segunravel/lazy.py` says why).
"""

from tf_segunravel.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "ChannelScores": "tracer",
        "FixationSettings": "settings",
        "FlowStep": "tracer",
        "SegUnravel": "tracer",
        "UnravelResult": "tracer",
        "UntraceableLayerError": "rules",
        "fixation_maps": "maps",
        "heatmaps": "maps",
        "register_rule": "rules",
    },
)
