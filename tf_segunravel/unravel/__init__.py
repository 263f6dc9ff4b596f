"""Segmentation unravel: GradientTape-free tracing of segmentation fixations."""

from tf_segunravel.unravel.maps import fixation_maps, heatmaps
from tf_segunravel.unravel.rules import UntraceableLayerError, register_rule
from tf_segunravel.unravel.settings import FixationSettings
from tf_segunravel.unravel.tracer import (
    ChannelScores,
    FlowStep,
    SegUnravel,
    UnravelResult,
)

__all__ = [
    "ChannelScores",
    "FixationSettings",
    "FlowStep",
    "SegUnravel",
    "UnravelResult",
    "UntraceableLayerError",
    "fixation_maps",
    "heatmaps",
    "register_rule",
]
