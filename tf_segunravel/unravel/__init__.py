"""Segmentation unravel: GradientTape-free tracing of segmentation fixations."""

from tf_segunravel.unravel.rules import UntraceableLayerError
from tf_segunravel.unravel.tracer import SegUnravel, UnravelResult

__all__ = ["SegUnravel", "UnravelResult", "UntraceableLayerError"]
