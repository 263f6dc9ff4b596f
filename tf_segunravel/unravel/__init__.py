"""Segmentation unravel: GradientTape-free tracing of segmentation fixations.

The names load on first use (`tf_segunravel/lazy.py` says why). Beside the engine, this
exports what a rule author needs (docs/unravel.md, "Tracing your own layers"): `Points`,
`Moved`, `register_rule` and its geometry helpers, and the helpers the built-in rules use.
"""

from tf_segunravel.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        # The engine and its results.
        "ChannelScores": "tracer",
        "FixationSettings": "settings",
        "InputSettings": "settings",
        "ModelGraph": "graph",
        "FlowStep": "tracer",
        "SegUnravel": "tracer",
        "UnravelResult": "tracer",
        "ScoreMap": "geometry",
        "fixation_maps": "maps",
        "heatmaps": "maps",
        # The layer table and registration.
        "KEEPS_MAP": "rules",
        "LayerKind": "rules",
        "Registration": "rules",
        "UntraceableLayerError": "rules",
        "kind_for": "rules",
        "register_rule": "rules",
        "window_geometry": "rules",
        # For writing rules.
        "Moved": "rules",
        "Points": "rules",
        "channels_to_reach": "rules",
        "select_channels": "rules",
        "gather_pixels": "rules.base",
        "pad_before": "rules.base",
        "spatial_size": "rules.base",
        "window_taps": "rules.base",
        "first_argmax": "rules.base",
    },
)
