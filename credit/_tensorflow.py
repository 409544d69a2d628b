"""TensorFlow, imported where credit first uses it.

credit's TensorFlow engine (the traced graph analysis, the tape, the transports'
custom gradients) uses ``tf`` from here. On TensorFlow it is the module itself, cached
attribute by attribute on first use. On another Keras backend (JAX) the code that runs
never touches it, so ``import credit`` works where TensorFlow is not installed; code
that does need it there raises the ImportError of ``import tensorflow``.

Example:
    >>> from credit._tensorflow import tf                       # doctest: +SKIP
    >>> tf.nest.flatten([1, (2, 3)])
    [1, 2, 3]
"""

import importlib


class _Lazy:
    """Stands for the ``tensorflow`` module; imports it at the first attribute read."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        value = getattr(importlib.import_module("tensorflow"), name)
        setattr(self, name, value)  # later reads are plain attribute reads
        return value

    def __repr__(self):
        return "<tensorflow, imported where first used>"


tf = _Lazy()
