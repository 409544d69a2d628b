"""credit: train Keras models with backprop, feedback alignment, DFA, kickback or
synthetic gradients, behind one argument, and compare them.

Example:
    >>> import credit, keras                                   # doctest: +SKIP
    >>> model = credit.Sequential([keras.Input((784,)),
    ...                            keras.layers.Dense(256, activation="relu"),
    ...                            keras.layers.Dense(10, activation="softmax")])
    >>> model.compile("adam", "sparse_categorical_crossentropy", method="dfa")
"""

import json as _json
import os as _os


def _configured_backend():
    """The Keras backend that `import keras` will pick, read without importing it."""
    if "KERAS_BACKEND" in _os.environ:
        return _os.environ["KERAS_BACKEND"]
    home = _os.environ.get("KERAS_HOME", _os.path.join(_os.path.expanduser("~"), ".keras"))
    try:
        with open(_os.path.join(home, "keras.json")) as f:
            return _json.load(f).get("backend", "tensorflow")
    except (OSError, ValueError):
        return "tensorflow"


#: The Keras backends credit runs on. TensorFlow is the reference and runs every
#: method; on JAX a first set of methods runs (see ``credit.backends.jax``).
BACKENDS = ("tensorflow", "jax")


def _refuse(backend):
    raise ImportError(
        f"credit runs on Keras's {' and '.join(repr(b) for b in BACKENDS)} backends, but "
        f"the Keras backend is {backend!r}. Set the environment variable "
        "KERAS_BACKEND=tensorflow (every method) or KERAS_BACKEND=jax (backprop, feedback "
        "alignment, DFA, DRTP and the sign methods) before importing keras or credit (or "
        "\"backend\": \"tensorflow\" in ~/.keras/keras.json).")


if _configured_backend() not in BACKENDS:
    _refuse(_configured_backend())

import keras as _keras  # noqa: E402

if _keras.config.backend() not in BACKENDS:  # keras was imported earlier with another one
    _refuse(_keras.config.backend())

from credit import distributed  # noqa: E402
from credit import methods  # noqa: E402  (registers the methods)
from credit import recurrent  # noqa: E402
from credit import transports  # noqa: E402
from credit.diagnostics import (AlignmentCallback, alignment, point_summary,  # noqa: E402
                               summary)
from credit.graph import GraphError  # noqa: E402
from credit.model import Gradients, Model, Sequential, compute_gradients, wrap  # noqa: E402
from credit.registry import available, get, register  # noqa: E402
from credit.signal import ErrorSignal, Trace  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "AlignmentCallback",
    "ErrorSignal",
    "Gradients",
    "GraphError",
    "Model",
    "Sequential",
    "Trace",
    "alignment",
    "available",
    "compute_gradients",
    "distributed",
    "get",
    "methods",
    "point_summary",
    "recurrent",
    "register",
    "summary",
    "transports",
    "wrap",
]
