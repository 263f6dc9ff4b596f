"""Shared test setup: quiet TensorFlow and a fixed seed.

`tests` is a package: modules import their shared pieces as `tests.helpers`, `tests.layer_testing`
and the references `tests.unravel_reference` and `tests.caffe_reference`.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import pytest


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(1234)
    yield


@pytest.fixture(scope="session")
def shapes_data_dir(tmp_path_factory):
    """A TFDS data dir with segunravel_shapes prepared once for the whole session."""
    import tensorflow_datasets as tfds

    import tf_segunravel.data  # noqa: F401  (registers the builders)

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    tfds.builder("segunravel_shapes", data_dir=data_dir).download_and_prepare()
    return data_dir
