"""credit's step on Keras's TensorFlow backend: the one backward pass.

The model's forward pass has been recorded on a persistent ``tf.GradientTape``
(:func:`credit.model.record`: the point outputs, the cut copies, the loss); the method
has returned its signals. :func:`backward` takes one backward pass: the objective, plus
each point output ``h_p`` with its signal ``delta_p`` as output gradient -- the VJP of
``sum_p <h_p, delta_p>`` without building that sum -- and :func:`update` runs the
method's own update after it. The JAX backend does the same with ``jax.vjp``
(:mod:`credit.backends.jax`).

Example:
    >>> trace = credit.model.record(model, x, y, method=method)       # doctest: +SKIP
    >>> gradients = backward(trace, method.signals(trace), lambda t: t)
"""

from credit._tensorflow import tf


def backward(trace, signals, scale):
    """The weight gradients of one step, aligned with ``trace.variables``.

    Args:
        trace: the step's :class:`credit.signal.Trace` (its tape persistent).
        signals: ``{point: delta_p}`` from the method.
        scale: the loss scale of the model's optimizer, as a function of a tensor
            (mixed precision; the identity otherwise).

    Returns:
        The gradients (None where nothing reaches a variable), behind a barrier: every
        backward op runs before any op that depends on them. Sets
        ``trace.source_gradients`` (the gradients at ``trace.extra_sources``, unscaled)
        and ``trace.gradients``.
    """
    tape, variables = trace.tape, trace.variables
    with tape:  # the loss scale (mixed precision) must be on the tape
        scaled = scale(trace.objective)
    targets, output_gradients = [scaled], [tf.ones_like(scaled)]
    for p in trace.plan.order:
        delta = signals.get(p)
        if delta is None:
            continue
        h = trace.outputs[p]
        delta = scale(tf.cast(tf.stop_gradient(delta), "float32"))
        targets.append(h)
        output_gradients.append(tf.cast(delta, h.dtype))
    for tensor, gradient in trace.extra_targets:
        gradient = scale(tf.cast(tf.stop_gradient(gradient), "float32"))
        targets.append(tensor)
        output_gradients.append(tf.cast(gradient, tensor.dtype))
    sources = list(trace.extra_sources)
    gradients = tape.gradient(targets, list(variables) + sources,
                              output_gradients=output_gradients)
    if sources:
        # The gradients at the extra sources come from the same backward pass; undo
        # the loss scale (mixed precision) that the optimizer undoes for the weights.
        unscale = 1.0 / scale(tf.constant(1.0))
        trace.source_gradients = [
            tf.zeros_like(s) if g is None else g * tf.cast(unscale, g.dtype)
            for s, g in zip(sources, gradients[len(variables):])]
        gradients = gradients[:len(variables)]
    gradients, trace.source_gradients = after_backward((gradients, trace.source_gradients))
    trace.gradients = gradients
    return gradients


def update(method, trace, signals, gradients):
    """Run ``method.update`` after the backward pass; ``(gradients, logs)``.

    In a traced step the update's ops wait for every gradient, and the returned
    gradients (which the optimizer consumes) wait for the update's ops: the update
    reads this step's weights too (synthetic gradients' bootstrapped targets).
    """
    graph = None if tf.executing_eagerly() else tf.compat.v1.get_default_graph()
    gate = barrier(all_tensors(gradients))
    known = len(graph.get_operations()) if graph is not None else 0
    with tf.control_dependencies(gate):
        logs = method.update(trace, signals) or {}
    if graph is not None and len(graph.get_operations()) > known:
        with tf.control_dependencies(barrier(graph.get_operations()[known:])):
            gradients = [None if g is None else tf.identity(g) for g in gradients]
    return gradients, logs


def all_tensors(structure):
    """The tensors of a nested ``structure`` (composites expanded), Nones left out."""
    return [t for t in tf.nest.flatten(structure, expand_composites=True) if t is not None]


def barrier(items):
    """Control inputs that make an op wait for all of ``items`` (tensors or ops).

    In a graph, one NoOp that waits for them all: each op created under it then gets
    one control edge, not one per item. (With an edge per pair, the step of
    synthetic gradients on MobileNetV2 had 1,073,028 control edges, and TensorFlow's
    graph optimizer spent minutes on them before the first step ran.) Eagerly, where
    ops run in order anyway: the items themselves.
    """
    if tf.executing_eagerly() or not items:
        return list(items)
    return [tf.group(*items)]


def after_backward(structure):
    """``structure`` (gradients) behind a barrier: the whole backward pass first.

    Transports and updates read variables that the same step then writes: the kernels
    whose signs the sign methods use, Kolen-Pollack's feedback, the weights under a
    synthesizer's bootstrapped target. TensorFlow runs each read before the write, but
    not always the ops that use what was read: in the traced step, Kolen-Pollack's
    feedback product and a backward MatMul of synthetic gradients could run after the
    optimizer's write (``test_every_use_of_a_variable_read_runs_before_the_step_writes
    _it``), and uSF, repeated 92 times on a busy machine, used this step's updated
    kernel for entries that crossed zero in 4 runs (in none of 30 with the barrier).
    Every write consumes these gradients (the optimizer) or runs under them (the
    method's ``update``), so none starts before the last backward op.
    """
    if tf.executing_eagerly():
        return structure  # ops run one after the other
    with tf.control_dependencies(barrier(all_tensors(structure))):
        return tf.nest.map_structure(lambda t: None if t is None else tf.identity(t),
                                     structure)
