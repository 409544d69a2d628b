"""The one backend-specific act of credit's step, per Keras backend.

A method's step is the model's own forward pass with the method's transports and
feedback points in place, the method's signals, and one backward pass with the signals
injected at the points. Only the backward pass depends on the backend:

- TensorFlow (the default and the reference): a ``tf.GradientTape`` with output
  gradients, in :func:`credit.model.compute_gradients` and :func:`credit.model.record`;
- JAX: ``jax.vjp`` over the model's stateless call, in :mod:`credit.backends.jax`.

The methods are written in ``keras.ops`` and run unchanged on both, where the backend's
step supports what they use (:data:`credit.backends.jax.METHODS`).

Example:
    >>> credit.backends.current()                               # doctest: +SKIP
    'jax'
"""

import keras


def current():
    """The Keras backend credit runs on (``"tensorflow"`` or ``"jax"``)."""
    return keras.config.backend()


def is_jax():
    """Whether Keras runs on its JAX backend."""
    return keras.config.backend() == "jax"
