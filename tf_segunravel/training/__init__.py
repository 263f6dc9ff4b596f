"""Training: the Keras trainer, Caffe's optimisation, the run loop and model loading.

The names load on first use (`tf_segunravel/lazy.py` says why).
"""

from tf_segunravel.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "SegmentationTrainer": "trainer",
        "TrainConfig": "config",
        "load_network": "checkpoints",
        "train": "loop",
    },
)
