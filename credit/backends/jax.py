"""credit's step on Keras's JAX backend: one ``jax.vjp`` over the model's stateless call.

The step is the one TensorFlow takes (see :func:`credit.model.compute_gradients`), with
``jax.vjp`` in place of the tape:

1. ``forward(trainable, probes, cuts, output_probes)`` runs ``model.stateless_call(
   trainable, non_trainable, x, training=True)`` with credit's hooks on the layers
   (:class:`credit.graph.Hooks`): a transported layer runs on a stop-gradient copy of
   its input, and a custom VJP at its pre-activation sends the gradient to its input
   through the method's feedback kernels (:func:`gate`; a recurrent layer's cells get
   a probe in their bias, :func:`probe`); a feedback point records the layer's output
   ``h_p`` and hands a stop-gradient copy on. It returns ``(loss, [h_p])`` and,
   besides, the model output and the logits. ``probes``, ``cuts`` and
   ``output_probes`` are zeros added to the logits, to the cut copies of the points
   and to the model outputs: their cotangents are the output error ``e = dL/dlogits``,
   the gradient arriving at a point from above, and ``dL/dy_pred``.
2. ``jax.vjp(forward, ...)`` runs it once (:func:`forward_trace`).
3. The method's ``signals(trace)`` reads the trace (:class:`JaxTrace`: the point
   outputs, the output error, the targets, and backward products such as
   ``trace.gradient`` and ``trace.loss_gradients``, each a call of the same VJP) and
   returns ``delta_p`` per point.
4. One call of the VJP with cotangents ``(1, [delta_p])`` gives every weight's
   gradient, aligned with ``model.trainable_variables``: each layer's local gradient
   given the signal that reaches its output. Then the method's ``update`` (its own
   optimizers, synthesizers, heads, buffers) runs in a ``keras.StatelessScope``.

Inside ``jit`` (``fit``) what a call of the VJP does not use is pruned: the output
error costs the backward pass from the loss to the logits.

The method's state (feedback matrices, counters, synthesizers and heads, and its
optimizers' slots) and the trackers of its logs ride with the model's non-trainable
variables (``credit.Model.non_trainable_variables``), so Keras's JAX trainer carries
them through the jitted step and writes their updates back.

A method without a backward pass (``computes_gradients = True``: forward gradients,
PEPITA, Forward-Forward) forms its whole update in its own ``compute_gradients``,
written in ``keras.ops`` with :func:`credit.backends.jvp` and
:func:`credit.backends.value_and_gradients` for its derivatives; the step runs it in a
``keras.StatelessScope`` that maps the model's variables to the step's values
(:func:`_own_step`).

Methods that run here: :data:`METHODS`; the others are refused with an error that
names those that run. Not here yet: extra targets and sources of the backward pass
(synthetic gradients through time), per-step signals through time, loss scaling.

Example:
    >>> # KERAS_BACKEND=jax
    >>> model.compile("adam", "sparse_categorical_crossentropy", method="dfa")
    >>> model.fit(x, y)                                          # doctest: +SKIP
"""

import types

import jax
import keras
from keras import ops

from credit import _keras_compat as compat
from credit import graph as graph_lib
from credit import transports
from credit.graph import GraphError
from credit.signal import Trace

#: The built-in methods that run on the JAX backend (canonical names).
METHODS = ("backprop", "feedback_alignment", "direct_feedback_alignment", "kickback",
           "kolen_pollack", "delayed_feedback", "synthetic_gradients", "local_losses",
           "direct_random_target_projection", "sign_symmetry",
           "fixed_random_sign_feedback", "batchwise_random_sign_feedback",
           "forward_gradient", "pepita", "forward_forward")

_LOGIT_KINDS = ("activation", "input", "output_of", "output")


def check_method(method):
    """Raise a ValueError if ``method`` does not run on the JAX backend (named, with the
    methods that do)."""
    builtin = type(method).__module__.startswith("credit.methods")
    reason = None
    if builtin and method.name not in METHODS:
        reason = "it is not ported to the JAX backend yet"
    if reason is not None:
        raise ValueError(
            f"method {method.name!r} does not run on Keras's JAX backend: {reason}. On "
            f"JAX credit runs {', '.join(METHODS)}; every method runs on the tensorflow "
            "backend (KERAS_BACKEND=tensorflow).")


def check_bound(method):
    """Raise a GraphError for what the bound method asks of the JAX step that it lacks."""
    plan = method.plan
    if plan.intercepted or method.intercepted:
        raise GraphError(
            f"method {method.name!r} intercepts layer calls ({list(method.intercepted)}: "
            "per-step signals through time), which the JAX backend does not run yet; use "
            "through_time='bptt' or the tensorflow backend.")
    for kind, where in plan.graph.output_logits:
        if kind not in _LOGIT_KINDS:
            raise GraphError(
                f"credit reads this model's logits as {kind!r} ({where}), which the JAX "
                "backend does not do yet: end the model with a Dense/Conv layer whose "
                "activation is softmax or sigmoid, a Softmax/Activation layer, or no "
                "squashing; or use the tensorflow backend.")


def _recurrent(layer):
    from credit import recurrent_transports
    return recurrent_transports.is_recurrent(layer)


# --------------------------------------------------------------------------------------
# Transports


def adjoint(layer, g, x, kernels_):
    """``VJP_x[L(.; kernels_)](g)`` of the layer's linear op (see
    :func:`credit.transports.adjoint`), by ``jax.vjp`` of :func:`credit.transports.linear`
    at zero (the VJP of a linear op does not depend on where it is taken)."""
    kernels_ = tuple(ops.cast(k, g.dtype) for k in kernels_)
    if isinstance(layer, keras.layers.Dense):
        return ops.tensordot(g, kernels_[0], [[-1], [1]])
    x0 = ops.zeros(ops.shape(x), g.dtype)
    _, vjp = jax.vjp(lambda v: transports.linear(layer, v, kernels_), x0)
    return vjp(g)[0]


def gate(a, x, layer, feedback):
    """Identity on ``a``; its cotangent goes to ``a`` unchanged and to ``x`` as the
    adjoint of ``layer``'s linear op with the ``feedback`` kernels (a ``jax.custom_vjp``).

    Put at a weighted layer's pre-activation with the layer run on a stop-gradient copy
    of ``x``: the weights get their true local gradient, ``x`` the transport's.
    """

    @jax.custom_vjp
    def _gate(a, x, feedback):
        return a

    def forward(a, x, feedback):
        return a, (x, feedback)

    def backward(residuals, g):
        x_, feedback_ = residuals
        return (g, ops.cast(adjoint(layer, g, x_, feedback_), x_.dtype),
                tuple(ops.zeros_like(k) for k in feedback_))

    _gate.defvjp(forward, backward)
    return _gate(a, x, tuple(feedback))


def probe(x, h, shape, dtype, grad_x, grad_h, residuals):
    """Zeros of ``shape`` whose cotangent ``g`` goes to ``x`` as ``grad_x(g,
    *residuals)`` and to ``h`` as ``grad_h(g, *residuals)`` (a ``jax.custom_vjp``):
    the probe in a recurrent cell's bias that crosses its kernels with feedback
    matrices at every step (:mod:`credit.recurrent_transports`)."""
    x_dtype, h_dtype = x.dtype, h.dtype

    @jax.custom_vjp
    def _probe(x, h, residuals):
        return ops.zeros(shape, dtype)

    def forward(x, h, residuals):
        return ops.zeros(shape, dtype), residuals

    def backward(residuals_, g):
        zeros = jax.tree_util.tree_map(ops.zeros_like, residuals_)
        return (ops.cast(grad_x(g, *residuals_), x_dtype),
                ops.cast(grad_h(g, *residuals_), h_dtype), zeros)

    _probe.defvjp(forward, backward)
    return _probe(x, h, residuals)


# --------------------------------------------------------------------------------------
# The forward pass's hooks


class Recorder:
    """The hooks' recorder of one JAX forward pass (the JAX twin of
    :class:`credit.graph.StepRecorder`): transports, points and logits (plus their
    probes)."""

    def __init__(self, plan, transport, probes, logit_outputs, cuts=None, cut=True):
        self.plan = plan
        self.transport = transport
        self.probes = probes
        self.cuts = cuts or {}
        self.cut = cut
        self.logit_outputs = logit_outputs  # layer name -> model output index
        self.frames = {}
        self.outputs = {}
        self.stops = {}
        self.logits = {}
        self.calls = {}

    def _logit(self, name, t):
        j = self.logit_outputs[name]
        t = ops.add(t, ops.cast(self.probes[j], t.dtype))
        self.logits[j] = t
        return t

    def on_call(self, layer, original, args, kwargs):
        key = id(layer)
        plan = self.plan
        logits = plan.logits_layers.get(key)
        if logits is not None and logits[0] == "input":
            args = (self._logit(logits[1], args[0]),) + tuple(args[1:])
        if key in plan.transported:
            x = ops.convert_to_tensor(args[0])
            feedback = self.transport(layer, transports.kernels(layer))
            if feedback is None:
                output = original(*args, **kwargs)
            elif _recurrent(layer):
                # Crossed at every step, inside the layer's own loop.
                from credit import recurrent_transports
                with recurrent_transports.through_time(layer, feedback):
                    output = original(*args, **kwargs)
            else:
                feedback = tuple(ops.convert_to_tensor(k) for k in feedback)
                frame = {"x": x, "feedback": feedback, "used": False}
                self.frames.setdefault(key, []).append(frame)
                try:
                    output = original(jax.lax.stop_gradient(x), *args[1:], **kwargs)
                finally:
                    self.frames[key].pop()
                if not frame["used"]:  # a layer without an activation function
                    output = gate(output, x, layer, feedback)
        else:
            output = original(*args, **kwargs)
        if key in plan.points:
            k = self.calls.get(key, 0)
            self.calls[key] = k + 1
            name = plan.points[key].get(k)
            if name is not None:
                output = self._point(name, output)
        if logits is not None and logits[0] == "output_of":
            output = self._logit(logits[1], output)
        return output

    def on_activation(self, layer, original, a):
        key = id(layer)
        frames = self.frames.get(key)
        if frames and not frames[-1]["used"]:
            frame = frames[-1]
            frame["used"] = True
            a = gate(a, frame["x"], layer, frame["feedback"])
        logits = self.plan.logits_layers.get(key)
        if logits is not None and logits[0] == "activation":
            a = self._logit(logits[1], a)
        return original(a)

    def on_regularizer(self, layer, original, output):
        # The activity penalty on the layer's own output at a point (see StepRecorder).
        for name in self.plan.points.get(id(layer), {}).values():
            if self.stops.get(name) is output:
                output = self.outputs[name]
                break
        return original(output)

    def _point(self, name, output):
        if name in self.outputs:
            raise GraphError(f"the feedback point at layer {name!r} was reached twice in one "
                             "forward pass; points need layers called once.")
        if isinstance(output, (list, tuple, dict)):
            raise GraphError(f"layer {name!r} returned {type(output).__name__}; a feedback "
                             "point needs a layer with one output tensor.")
        self.outputs[name] = output
        if name in self.plan.no_stop:
            # A point on a model output is not cut (the loss reads a cut copy of the
            # output instead: forward_trace). Uncut (record's cut=False), a zero input
            # reads the whole dL/dh_p there (the loss's and the layers' above).
            self.stops[name] = None
            if name in self.cuts:
                output = ops.add(output, ops.cast(self.cuts[name], output.dtype))
            return output
        # cut=False (credit.model.record): the point only records; the zero input's
        # cotangent is then the true dL/dh_p.
        cut = jax.lax.stop_gradient(output) if self.cut else output
        if name in self.cuts:
            # A zero input added to the cut copy: its cotangent is what arrives at the
            # point from the layers above (Trace.gradient).
            cut = ops.add(cut, ops.cast(self.cuts[name], cut.dtype))
        self.stops[name] = cut
        return cut


# --------------------------------------------------------------------------------------
# The trace


class JaxTrace(Trace):
    """The record of one forward pass on the JAX backend (see :class:`credit.Trace`).

    It answers what methods read of a trace: ``points``, ``outputs``, ``stops``, ``x``,
    ``y``, ``sample_weight``, ``y_pred``, ``loss``, :meth:`output_error(s)
    <output_errors>`, :meth:`flat_output_error`, :meth:`output_gradient`,
    :meth:`labels`, and the backward products :meth:`gradient`, :meth:`vjp` and
    :meth:`loss_gradients`, each a call of the step's one ``jax.vjp`` with other
    cotangents (inside ``jit`` what a call does not use is pruned). Extra targets and
    sources (synthetic gradients through time) are not available here.
    """

    def __init__(self, plan, outputs, stops, x, y, sample_weight, y_pred, loss, logits,
                 pullback, variables, split=False):
        # What Trace reads from TensorFlow's recorder; no tape: the backward products
        # are calls of the step's jax.vjp (pullback).
        recorder = types.SimpleNamespace(outputs=outputs, stops=stops, logits=None,
                                         records={})
        super().__init__(plan, recorder, x, y, sample_weight, y_pred, loss, loss, None,
                         True, variables)
        for p in plan.no_stop:
            self.stops[p] = None
        self._logit_list = logits
        self.pullback = pullback
        self._loss_pullback = None
        self._split = split  # a point sits on a model output

    def _of_loss(self):
        """The pullback of the loss alone, on the uncut outputs (computed once per
        step): the output errors and gradients."""
        if self._loss_pullback is None:
            self._loss_pullback = (self.pullback(0.0, {}, 1.0) if self._split
                                   else self.pullback(1.0, {}))
        return self._loss_pullback

    def output_logits(self):
        return list(self._logit_list)

    def output_errors(self):
        if self._output_errors is None:
            errors = self._of_loss()[1]
            self._output_errors = [ops.cast(e, l.dtype)
                                   for e, l in zip(errors, self._logit_list)]
        return self._output_errors

    def output_gradient(self, point=None):
        j = self._output_index(point)
        outputs = [t for t in keras.tree.flatten(self.y_pred) if t is not None]
        return ops.cast(self._of_loss()[3][j], outputs[j].dtype)

    def gradient(self, signals, sources, objective=True):
        for p in sources:
            if self.stops[p] is None:
                raise GraphError(f"point {p!r} is a model output; nothing arrives at it "
                                 "from above.")
        signals = {p: s for p, s in signals.items() if s is not None}
        if not signals and not objective:
            return {p: ops.zeros_like(self.stops[p]) for p in sources}
        at_cuts = (self._of_loss() if objective and not signals and not self._split
                   else self.pullback(1.0 if objective else 0.0, signals))[2]
        return {p: ops.cast(at_cuts[p], self.stops[p].dtype) for p in sources}

    def weight_gradients(self, signals):
        return list(self.pullback(1.0, signals)[0])

    def true_point_gradient(self, point):
        at_cuts = self._of_loss()[2]
        if point in at_cuts:  # recorded with cut=False: the zero input's cotangent
            return at_cuts[point]
        return self.output_gradient(point)

    def add_target(self, tensor, gradient):
        raise NotImplementedError(_not_here("Trace.add_target"))

    def add_source(self, tensor):
        raise NotImplementedError(_not_here("Trace.add_source"))


def _not_here(what):
    return (f"{what} is not available on Keras's JAX backend yet (extra targets and "
            "sources of the backward pass: synthetic gradients through time); use the "
            "tensorflow backend for a method that needs it.")


# --------------------------------------------------------------------------------------
# The step


def _logit_outputs(graph):
    """``{layer name: model output index}`` for logits read at a layer."""
    return {where: j for j, (kind, where) in enumerate(graph.output_logits)
            if kind != "output"}


def _point_shape(graph, name):
    """A point's output shape without the batch axis, from the model's graph."""
    shape = tuple(graph.node(name).output_tensor.shape[1:])
    if any(d is None for d in shape):
        raise GraphError(f"the output of point {name!r} has an unknown dimension "
                         f"{shape}; the JAX step needs its shape. Give the model's inputs "
                         "a fixed shape, or use the tensorflow backend.")
    return shape


def _is_float(t):
    return "float" in keras.backend.standardize_dtype(t.dtype)


def _logit_shapes(graph):
    """The logits' shapes without the batch axis, one per model output."""
    shapes = []
    for j, (kind, where) in enumerate(graph.output_logits):
        if kind == "output":
            shapes.append(tuple(graph.output_shapes[j]))
            continue
        node = graph.node(where)
        t = node.input_tensors[0] if kind == "input" else node.output_tensor
        shapes.append(tuple(t.shape[1:]))
    return shapes


def forward_trace(model, method, x, y, sample_weight, trainable, non_trainable,
                  metrics_variables, training=True, loss_fn=None, cut=True,
                  use_transports=True):
    """The forward pass of one step on values, as a :class:`JaxTrace` (its backward
    products are calls of one ``jax.vjp``), with the new non-trainable and metrics
    values: ``(trace, non_trainable, metrics_variables)``.

    ``cut=False`` only records the points (the pass is backprop's between them, and
    :meth:`JaxTrace.gradient` at a point gives the true ``dL/dh_p``);
    ``use_transports=False`` crosses every layer with its own kernels.
    """
    plan = method.plan
    graph = plan.graph
    transport = method.transport if use_transports else (lambda layer, kernels: None)
    order = list(plan.order)
    logit_outputs = _logit_outputs(graph)
    batch = ops.shape(next(t for t in keras.tree.flatten(x) if t is not None))[0]
    probes = [ops.zeros((batch,) + shape, "float32") for shape in _logit_shapes(graph)]
    # Zero inputs at the cut copies of the points and at the model outputs: their
    # cotangents are the gradient arriving at a point from above and dL/dy_pred.
    cuts = {p: ops.zeros((batch,) + _point_shape(graph, p), "float32")
            for p in order if p not in plan.no_stop or not cut}
    output_probes = [ops.zeros((batch,) + tuple(shape), "float32")
                     for shape in graph.output_shapes]
    kinds = [kind for kind, _ in graph.output_logits]
    found = {}
    output_points = sorted(plan.output_points) if cut else []
    split = bool(output_points)

    def forward(trainable_, probes_, cuts_, output_probes_):
        recorder = Recorder(plan, transport, probes_, logit_outputs, cuts_, cut)
        with graph_lib.Hooks(plan.hooked, recorder):
            y_pred, non_trainable_, losses = model.stateless_call(
                trainable_, non_trainable, x, return_losses=True, training=training)
        flat = keras.tree.flatten(y_pred)
        outs = [t for t in flat if t is not None]
        for j, kind in enumerate(kinds):
            if kind == "output":  # the output is its own logits
                outs[j] = ops.add(outs[j], ops.cast(probes_[j], outs[j].dtype))
                recorder.logits[j] = outs[j]
        probed = [ops.add(t, ops.cast(q, t.dtype)) if _is_float(t) else t
                  for t, q in zip(outs, output_probes_)]
        it = iter(probed)
        y_pred = keras.tree.pack_sequence_as(
            y_pred, [None if t is None else next(it) for t in flat])
        if split:
            # The loss (the objective) reads a cut copy of each output that carries a
            # point, so that the point's signal replaces that output's loss gradient;
            # the same loss on the uncut outputs gives the output errors.
            read = list(probed)
            for j in output_points:
                read[j] = ops.add(jax.lax.stop_gradient(outs[j]),
                                  ops.cast(output_probes_[j], outs[j].dtype))
            it = iter(read)
            y_read = keras.tree.pack_sequence_as(
                y_pred, [None if t is None else next(it) for t in flat])
            loss, metrics_ = _loss(model, trainable_, non_trainable_, metrics_variables, x,
                                   y, y_read, sample_weight, training, loss_fn, losses)
            true_loss, _ = _loss(model, trainable_, non_trainable_, metrics_variables, x,
                                 y, y_pred, sample_weight, training, loss_fn, losses)
        else:
            loss, metrics_ = _loss(model, trainable_, non_trainable_, metrics_variables, x,
                                   y, y_pred, sample_weight, training, loss_fn, losses)
            true_loss = ops.zeros_like(loss)
        found["stops"] = recorder.stops
        logits = [recorder.logits[j] for j in range(len(kinds))]
        points = [recorder.outputs[p] for p in order]
        missing = [p for p in order if p not in recorder.outputs]
        if missing:
            raise GraphError(f"the forward pass did not reach the feedback point(s) "
                             f"{missing}.")
        return ((loss, true_loss, points),
                (y_pred, logits, non_trainable_, metrics_, recorder.outputs))

    (loss, _, points), vjp_fn, aux = jax.vjp(forward, list(trainable), probes, cuts,
                                             output_probes, has_aux=True)
    y_pred, logits, non_trainable_new, metrics_new, outputs = aux

    def pullback(objective, signals, true=0.0):
        """``(weight gradients, errors at the logits, gradients at the cut copies,
        gradients at the outputs)`` of ``objective * loss + true * loss on the uncut
        outputs + sum_p <h_p, delta_p>`` (the two losses differ only where a point sits
        on a model output)."""
        deltas = []
        for p, h in zip(order, points):
            s = signals.get(p)
            deltas.append(ops.zeros_like(h) if s is None
                          else ops.cast(jax.lax.stop_gradient(s), h.dtype))
        return vjp_fn((ops.full_like(loss, objective), ops.full_like(loss, true), deltas))

    trace = JaxTrace(plan, outputs, found.get("stops", {}), x, y, sample_weight, y_pred,
                     loss, logits, pullback, model.trainable_variables, split)
    return trace, non_trainable_new, metrics_new


def step(model, method, x, y, sample_weight, trainable, non_trainable, metrics_variables,
         training=True, loss_fn=None, optimizer_variables=None):
    """One step of ``method`` on values (no variable is read or written: ``jit``-able).

    Args:
        model: the model (bound to ``method``).
        method: the bound method.
        x, y, sample_weight: the batch.
        trainable, non_trainable, metrics_variables: lists of values aligned with
            ``model.trainable_variables``, ``model.non_trainable_variables`` and
            ``model.metrics_variables``.
        training: run the layers in training mode.
        loss_fn: as in :func:`credit.compute_gradients` (None: the compiled loss).
        optimizer_variables: values of ``model.optimizer.variables`` (inside Keras's
            jitted step), which the method's update may read (Kolen-Pollack reads the
            learning rate); None: the variables' own.

    Returns:
        ``(gradients, loss, y_pred, non_trainable, metrics_variables, logs)``, gradients
        aligned with ``trainable``; ``logs`` the method's extra scalars (``sg_loss``).
    """
    if getattr(method, "computes_gradients", False):
        return _own_step(model, method, x, y, sample_weight, trainable, non_trainable,
                         metrics_variables, training, loss_fn, optimizer_variables)
    plan = method.plan
    trace, non_trainable_new, metrics_new = forward_trace(
        model, method, x, y, sample_weight, trainable, non_trainable, metrics_variables,
        training, loss_fn)
    # The method reads (and its update writes) its state and the weights as values of
    # this step: the variables themselves may hold no value inside Keras's jitted step.
    non_trainable_variables = model.non_trainable_variables
    mapping = list(zip(model.trainable_variables, trainable))
    mapping += list(zip(non_trainable_variables, non_trainable_new))
    if optimizer_variables is not None:
        mapping += list(zip(model.optimizer.variables, optimizer_variables))
    with keras.StatelessScope(state_mapping=mapping) as scope:
        signals = method.signals(trace) or {}
        unknown = [p for p in signals if p not in plan.order]
        if unknown:
            raise ValueError(f"{type(method).__name__}.signals returned signals for "
                             f"{unknown}, which are not its points {list(plan.order)}.")
        gradients = trace.pullback(1.0, signals)[0]
        trace.gradients = gradients
        logs = method.update(trace, signals) or {}
    non_trainable_new = [value if scope.get_current_value(v) is None
                         else scope.get_current_value(v)
                         for v, value in zip(non_trainable_variables, non_trainable_new)]
    return (list(gradients), trace.loss, trace.y_pred, non_trainable_new, metrics_new,
            dict(logs))


def _own_step(model, method, x, y, sample_weight, trainable, non_trainable,
              metrics_variables, training, loss_fn, optimizer_variables):
    """:func:`step` for a method that forms its whole update itself
    (``computes_gradients = True``: forward gradients, PEPITA, Forward-Forward): its
    ``compute_gradients`` runs in a ``keras.StatelessScope`` that maps the model's
    variables (its method state included) to this step's values, and what it writes
    (its counters, batch statistics, its heads) comes back as new values."""
    mapping = list(zip(model.trainable_variables, trainable))
    mapping += list(zip(model.non_trainable_variables, non_trainable))
    mapping += list(zip(model.metrics_variables, metrics_variables))
    if optimizer_variables is not None:
        mapping += list(zip(model.optimizer.variables, optimizer_variables))
    with keras.StatelessScope(state_mapping=mapping) as scope:
        out = method.compute_gradients(model, x, y, sample_weight, loss_fn=loss_fn,
                                       training=training)
    gradients = [ops.zeros(v.shape, v.dtype) if g is None else g
                 for v, g in zip(model.trainable_variables, out.gradients)]

    def current(variables, values):
        return [value if scope.get_current_value(v) is None
                else scope.get_current_value(v) for v, value in zip(variables, values)]

    return (gradients, out.loss, out.y_pred,
            current(model.non_trainable_variables, non_trainable),
            current(model.metrics_variables, metrics_variables), dict(out.logs or {}))


def _loss(model, trainable, non_trainable, metrics_variables, x, y, y_pred, sample_weight,
          training, loss_fn, losses):
    """The loss, as Keras's JAX trainer computes it (the forward pass's losses included),
    or ``loss_fn``'s plus those losses."""
    if loss_fn is None:
        if not compat.has_compiled_loss(model) and not losses:
            raise ValueError(
                f"model {model.name!r} has no loss: compile it with a loss, e.g. "
                "model.compile(loss='sparse_categorical_crossentropy', ...), or pass "
                "loss_fn=... to credit.compute_gradients.")
        with compat.losses_override(model, losses):
            loss, (_, _, metrics_) = model.stateless_compute_loss(
                trainable, non_trainable, metrics_variables, x=x, y=y, y_pred=y_pred,
                sample_weight=sample_weight, training=training)
        return loss, metrics_
    if not callable(loss_fn):
        raise TypeError(
            f"loss_fn must be a callable loss_fn(y, y_pred[, sample_weight]); got "
            f"{loss_fn!r} of type {type(loss_fn).__name__}.")
    mapping = list(zip(model.trainable_variables, trainable))
    mapping += list(zip(model.non_trainable_variables, non_trainable))
    with keras.StatelessScope(state_mapping=mapping):
        loss = (loss_fn(y, y_pred) if sample_weight is None
                else loss_fn(y, y_pred, sample_weight))
    for extra in losses:
        loss = loss + ops.cast(extra, loss.dtype)
    return loss, list(metrics_variables)


def method_variables(model, known=()):
    """The variables of the model's method's state that are not among ``known``: on
    JAX they ride with the model's non-trainable variables (see
    ``credit.Model.non_trainable_variables``)."""
    method = model.__dict__.get("_credit_method")
    state = getattr(method, "state", None)
    if state is None or method.exact:
        return []
    seen = {id(v) for v in known}
    variables = [v for v in state_variables(state) if id(v) not in seen]
    if not compat.in_stateless_scope():
        # Keras's jitted step donates the buffers of its state: a method variable that
        # holds the very array of a model variable (``B.assign(W)`` stores W's array)
        # would be donated twice. Such a variable gets a copy of its own.
        taken = {id(compat.held_value(v))
                 for v in list(model.trainable_variables) + list(known)
                 if compat.held_value(v) is not None}
        for v in variables:
            value = compat.held_value(v)
            if value is None or isinstance(value, jax.core.Tracer):
                continue
            if id(value) in taken:
                v.assign(jax.numpy.array(value, copy=True))
            taken.add(id(compat.held_value(v)))
    return variables


def value_and_gradients(fn, variables, tensors, has_aux=False):
    """:func:`credit.backends.value_and_gradients` on JAX: ``jax.value_and_grad`` of
    ``fn`` with ``variables`` mapped to traced values in a ``keras.StatelessScope``
    that also keeps the mapping of the scope it runs in (the step's)."""
    outer = compat.current_stateless_scope()
    base = dict(outer.state_mapping) if outer is not None else {}
    values = [v.value for v in variables]

    def f(values_, tensors_):
        scope = keras.StatelessScope()
        scope.state_mapping.update(base)
        scope.state_mapping.update({id(v): value for v, value in zip(variables, values_)})
        with scope:
            return fn(*tensors_)

    value, (grads, tensor_grads) = jax.value_and_grad(f, argnums=(0, 1), has_aux=has_aux)(
        values, [ops.convert_to_tensor(t) for t in tensors])
    if has_aux:
        (value, aux) = value
        return value, list(grads), list(tensor_grads), aux
    return value, list(grads), list(tensor_grads)


def jvp(fn, variables, tangents, tensors, tensor_tangents, has_aux=False):
    """:func:`credit.backends.jvp` on JAX: ``jax.jvp`` of ``fn`` with ``variables``
    mapped to the primal values in a ``keras.StatelessScope`` that keeps the mapping of
    the scope it runs in (the step's); the variables ``fn`` writes get their new values
    in that outer scope."""
    outer = compat.current_stateless_scope()
    base = dict(outer.state_mapping) if outer is not None else {}
    values = [v.value for v in variables]
    tangents = [ops.cast(t, ops.convert_to_tensor(v).dtype)
                for t, v in zip(tangents, values)]
    tensors = [ops.convert_to_tensor(t) for t in tensors]
    tensor_tangents = [ops.cast(t, x.dtype) for t, x in zip(tensor_tangents, tensors)]

    def f(values_, tensors_):
        scope = keras.StatelessScope()
        scope.state_mapping.update(base)
        mapped = {id(v): value for v, value in zip(variables, values_)}
        scope.state_mapping.update(mapped)
        start = dict(scope.state_mapping)
        with scope:
            out = fn(*tensors_)
        outputs, aux = out if has_aux else (out, None)
        written = {k: value for k, value in scope.state_mapping.items()
                   if start.get(k) is not value}
        return outputs, (aux, written)

    outputs, found, (aux, written) = jax.jvp(f, (values, tensors),
                                             (tangents, tensor_tangents), has_aux=True)
    if written and outer is None:
        raise ValueError(
            "the function given to credit.backends.jvp wrote variables outside a "
            "keras.StatelessScope on JAX, where the writes would be lost; run it inside "
            "the step (credit.compute_gradients, fit) or a StatelessScope.")
    for k, value in written.items():
        outer.state_mapping[k] = value
    return (outputs, found, aux) if has_aux else (outputs, found)


def state_variables(state):
    """A method state's variables and those of its optimizers (Kolen-Pollack's copy of
    the model's optimizer, the synthesizers' and heads' optimizers): Keras tracks no
    optimizer on a layer, and a slot or step counter left out would be read as a
    constant inside the jitted step and its update dropped."""
    variables = list(state.variables)
    seen = {id(v) for v in variables}
    for value in vars(state).values():
        if isinstance(value, keras.optimizers.Optimizer):
            for v in value.variables:
                if id(v) not in seen:
                    seen.add(id(v))
                    variables.append(v)
    return variables


def _refuse_loss_scaling(model):
    optimizer = getattr(model, "optimizer", None)
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        raise ValueError(
            "credit's JAX step does not scale the loss yet (LossScaleOptimizer, mixed "
            "precision); train in float32 on JAX, or use the tensorflow backend.")


def compute_gradients(model, method, x, y=None, sample_weight=None, loss_fn=None,
                      training=True):
    """:func:`credit.compute_gradients` on the JAX backend (eagerly; the model's
    non-trainable variables, e.g. BatchNormalization statistics, are updated)."""
    from credit.model import Gradients

    _refuse_loss_scaling(model)
    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]
    metrics = [v.value for v in model.metrics_variables]
    gradients, loss, y_pred, non_trainable_new, _, logs = step(
        model, method, x, y, sample_weight, trainable, non_trainable, metrics, training,
        loss_fn)
    for v, value in zip(model.non_trainable_variables, non_trainable_new):
        if value is not None:
            v.assign(value)
    return Gradients(gradients, loss, y_pred, logs)


def train_step(model, state, data):
    """``Model.train_step(state, data)`` of Keras's JAX trainer, with credit's step in
    place of ``jax.value_and_grad``: the method's gradients, then the optimizer."""
    _refuse_loss_scaling(model)
    trainable, non_trainable, optimizer_variables, metrics_variables = state
    x, y, sample_weight = compat.unpack_x_y_sample_weight(data)
    gradients, loss, y_pred, non_trainable, metrics_variables, method_logs = step(
        model, model.method, x, y, sample_weight, trainable, non_trainable,
        metrics_variables, True, optimizer_variables=optimizer_variables)
    trainable, optimizer_variables = model.optimizer.stateless_apply(
        optimizer_variables, gradients, trainable)
    logs, metrics_variables = compat.update_metrics_variables(
        model, metrics_variables, loss, x, y, y_pred, sample_weight)
    trackers = model.__dict__.get("_credit_trackers") or {}
    if trackers:
        # The method's logs (sg_loss, ...): its Mean trackers ride with the
        # non-trainable variables (credit.Model.non_trainable_variables).
        variables = model.non_trainable_variables
        with keras.StatelessScope(state_mapping=list(zip(variables, non_trainable))) as scope:
            for name, value in method_logs.items():
                trackers[name].update_state(value)
            logs.update({name: t.result() for name, t in trackers.items()})
        non_trainable = [value if scope.get_current_value(v) is None
                         else scope.get_current_value(v)
                         for v, value in zip(variables, non_trainable)]
    return logs, (trainable, non_trainable, optimizer_variables, metrics_variables)
