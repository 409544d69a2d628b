"""The one backend-specific act of credit's step, per Keras backend.

A method's step is the model's own forward pass with the method's transports and
feedback points in place, the method's signals, and one backward pass with the signals
injected at the points. Only the backward pass depends on the backend:

- TensorFlow (the default and the reference): a ``tf.GradientTape`` with output
  gradients, in :mod:`credit.backends.tensorflow` (the forward pass is recorded on the
  tape by :func:`credit.model.record`);
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


def counter_dtype():
    """The integer dtype of a method's counters and seeds: int64 on TensorFlow, int32 on
    JAX (its default, without ``jax_enable_x64``)."""
    return "int32" if is_jax() else "int64"


def stateless_uniform(shape, seed, step, index, minval, maxval):
    """Uniform draws in ``[minval, maxval)`` that are a function of ``(seed, step,
    index)`` alone (float32): the same inside a traced or jitted step as eagerly.

    ``seed`` and ``step`` may be variables or tensors (a method's state). Each backend
    draws with its own stateless generator (TensorFlow's ``stateless_uniform`` with a
    fold-in of ``index``; JAX's ``random.uniform`` on a key folded with ``step`` and
    ``index``), so the draws differ between backends but not between runs.

    Example:
        >>> m = credit.backends.stateless_uniform((3, 2), 7, 0, 1, -1.0, 1.0)  # doctest: +SKIP
    """
    if is_jax():
        import jax
        from keras import ops

        key = jax.random.PRNGKey(ops.cast(ops.convert_to_tensor(seed), "int32"))
        key = jax.random.fold_in(key, ops.cast(ops.convert_to_tensor(step), "int32"))
        key = jax.random.fold_in(key, index)
        return jax.random.uniform(key, tuple(shape), minval=minval, maxval=maxval,
                                  dtype="float32")
    from credit._tensorflow import tf

    pair = tf.stack([tf.convert_to_tensor(seed), tf.cast(step, "int64")])
    return tf.random.stateless_uniform(
        shape, seed=tf.random.experimental.stateless_fold_in(pair, index),
        minval=minval, maxval=maxval, dtype="float32")


def value_and_gradients(fn, variables=(), tensors=(), has_aux=False):
    """``(value, variable gradients, tensor gradients)`` of a scalar ``fn(*tensors)``.

    The gradients of what a method trains on its own (synthesizers, local heads) and of
    local objectives, on either backend: a ``tf.GradientTape`` on TensorFlow, and on
    JAX ``jax.value_and_grad`` of ``fn`` with ``variables`` read as traced values (a
    ``keras.StatelessScope`` that keeps the values of any scope around it, e.g. the
    JAX step's). ``fn`` must not write variables (a write would be lost on JAX).

    Args:
        fn: a function of ``tensors`` returning a scalar; it may read ``variables``.
        variables: Keras variables to differentiate with respect to.
        tensors: tensors to differentiate with respect to (passed to ``fn``).
        has_aux: ``fn`` returns ``(scalar, aux)``; ``aux`` comes back as is, after the
            gradients.

    Returns:
        ``(value, [gradient per variable], [gradient per tensor])``, plus ``aux`` with
        ``has_aux``; a gradient is None (TensorFlow) or zeros (JAX) where ``fn`` does
        not depend on it.

    Example:
        >>> loss, (g_kernel,), (g_h,) = credit.backends.value_and_gradients(
        ...     lambda h: keras.ops.sum(head(h)), [head.kernel], [h])  # doctest: +SKIP
    """
    variables, tensors = list(variables), list(tensors)
    if is_jax():
        from credit.backends import jax as jax_backend
        return jax_backend.value_and_gradients(fn, variables, tensors, has_aux)
    from credit._tensorflow import tf

    with tf.GradientTape() as tape:
        for t in tensors:
            tape.watch(t)
        value = fn(*tensors)
    value, aux = value if has_aux else (value, None)
    grads = tape.gradient(value, variables + tensors)
    found = value, grads[:len(variables)], grads[len(variables):]
    return found + (aux,) if has_aux else found


def jvp(fn, variables=(), tangents=(), tensors=(), tensor_tangents=(), has_aux=False):
    """``(outputs, output tangents[, aux])`` of ``fn(*tensors)`` in forward mode: the
    directional derivative of every output along ``tangents`` (one per variable) and
    ``tensor_tangents`` (one per tensor), without a backward pass.

    TensorFlow: a ``tf.autodiff.ForwardAccumulator`` watching the variables and the
    tensors. JAX: ``jax.jvp`` of ``fn`` with ``variables`` read as traced values (a
    ``keras.StatelessScope`` that keeps the mapping of any scope around it, e.g. the
    JAX step's); what ``fn`` writes to variables (a counter, batch statistics) lands in
    that outer scope.

    Args:
        fn: a function of ``tensors``; returns a nested structure of float tensors,
            or ``(outputs, aux)`` with ``has_aux``.
        variables: Keras variables the tangents are on.
        tangents: one tensor per variable, of its shape.
        tensors: tensors passed to ``fn`` that carry ``tensor_tangents``.
        tensor_tangents: one tensor per entry of ``tensors``.
        has_aux: ``fn`` returns ``(outputs, aux)``; ``aux`` is returned as is (no
            tangent).

    Returns:
        ``(outputs, tangents of outputs)`` (zeros where an output does not depend on
        the tangents), plus ``aux`` with ``has_aux``.

    Example:
        >>> loss, dloss = credit.backends.jvp(
        ...     lambda: keras.ops.sum(model(x) ** 2), model.trainable_variables,
        ...     [keras.ops.ones(v.shape) for v in model.trainable_variables])  # doctest: +SKIP
    """
    variables, tangents = list(variables), list(tangents)
    tensors, tensor_tangents = list(tensors), list(tensor_tangents)
    if len(variables) != len(tangents) or len(tensors) != len(tensor_tangents):
        raise ValueError(
            f"jvp needs one tangent per variable and per tensor; got {len(variables)} "
            f"variables with {len(tangents)} tangents and {len(tensors)} tensors with "
            f"{len(tensor_tangents)} tangents.")
    if is_jax():
        from credit.backends import jax as jax_backend
        return jax_backend.jvp(fn, variables, tangents, tensors, tensor_tangents, has_aux)
    from credit._tensorflow import tf

    # The accumulator watches TensorFlow variables: a Keras variable's ``value`` (read
    # outside an autocast scope) is the tf.Variable it holds.
    primals = [v.value for v in variables] + tensors
    with tf.autodiff.ForwardAccumulator(primals, tangents + tensor_tangents) as acc:
        out = fn(*tensors)
    outputs, aux = out if has_aux else (out, None)
    found = tf.nest.map_structure(
        lambda t: acc.jvp(t, unconnected_gradients=tf.UnconnectedGradients.ZERO), outputs)
    return (outputs, found, aux) if has_aux else (outputs, found)


def after(tensors):
    """A context whose ops run after ``tensors`` are computed: ``tf.control_dependencies``
    on TensorFlow (a traced step orders a counter's write after the draws that read
    it); nothing on JAX, whose step returns values."""
    if is_jax():
        import contextlib
        return contextlib.nullcontext()
    from credit._tensorflow import tf
    return tf.control_dependencies([t for t in tf.nest.flatten(tensors) if t is not None])
