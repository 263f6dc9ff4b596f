"""tf-segunravel: DeepLab-LargeFOV, the template-similarity loss and segmentation unravel."""

__version__ = "0.1.0"
