"""Training: the Keras trainer, Caffe's optimisation, the run loop and model loading.

The names below load on first use (PEP 562), not with the package: the tools import
`training.config` to define and check their flags, and a bad flag should fail in a fraction
of a second, not after TensorFlow's import of several seconds.
"""

import importlib

_HOMES = {
    "SegmentationTrainer": "trainer",
    "TrainConfig": "config",
    "load_network": "checkpoints",
    "train": "loop",
}
__all__ = sorted(_HOMES)


def __getattr__(name):
    if name in _HOMES:
        return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
