"""credit: train Keras models with backprop, feedback alignment, DFA, kickback or
synthetic gradients, behind one argument, and compare them.

Example:
    >>> import credit, keras                                   # doctest: +SKIP
    >>> model = credit.Sequential([keras.Input((784,)),
    ...                            keras.layers.Dense(256, activation="relu"),
    ...                            keras.layers.Dense(10, activation="softmax")])
    >>> model.compile("adam", "sparse_categorical_crossentropy", method="dfa")
"""

import os as _os

if "KERAS_BACKEND" not in _os.environ:
    _os.environ["KERAS_BACKEND"] = "tensorflow"

import keras as _keras

if _keras.config.backend() != "tensorflow":
    raise ImportError(
        f"credit runs on Keras's TensorFlow backend, but the backend is "
        f"{_keras.config.backend()!r}. Set KERAS_BACKEND=tensorflow in the environment "
        "before importing keras (or \"backend\": \"tensorflow\" in ~/.keras/keras.json).")

from credit import methods  # noqa: E402  (registers the methods)
from credit.diagnostics import AlignmentCallback, alignment  # noqa: E402
from credit.model import Gradients, Model, Sequential, compute_gradients, wrap  # noqa: E402
from credit.registry import available, get, register  # noqa: E402
from credit.signal import ErrorSignal, Trace  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "AlignmentCallback",
    "ErrorSignal",
    "Gradients",
    "Model",
    "Sequential",
    "Trace",
    "alignment",
    "available",
    "compute_gradients",
    "get",
    "methods",
    "register",
    "wrap",
]
