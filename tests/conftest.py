"""Shared test setup: quiet TensorFlow, a fixed seed, and the repository root on the path."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)

import keras  # noqa: E402
import pytest  # noqa: E402


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
