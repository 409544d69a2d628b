import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_keras():
    """Each test starts from the same global seed and an empty Keras name space.

    Without Python's garbage collection (``free_memory=False``): with it, clearing costs
    up to 1.7 s a test once a few hundred models exist; the collector runs on its own.
    """
    keras.backend.clear_session(free_memory=False)
    keras.utils.set_random_seed(1234)
    yield


@pytest.fixture
def classification_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 12)).astype("float32")
    y = (x[:, :3].sum(axis=1) > 0).astype("int64") + (x[:, 3] > 0.5)
    return x, y


@pytest.fixture
def regression_data():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 12)).astype("float32")
    y = (np.tanh(x[:, :4]) @ np.array([1.0, -2.0, 0.5, 1.5])).astype("float32")[:, None]
    return x, y
