"""The error-signal interface: what every credit-assignment method implements.

A method makes two choices on a model's own graph (:mod:`credit.graph`):

- **transports**: how the backward pass crosses each weighted layer's linear op on its
  way to the layer's input (the true kernel ``W``, a fixed random ``B``, ``sign(W)``, ...);
- **feedback points**: layer outputs where the method cuts the backward pass and injects
  its own signal ``delta_p`` in place of whatever would arrive from above.

A training step runs the model's own forward pass with the method's transports and
points in place, records a :class:`Trace`, asks the method for its signals, and then
takes one backward pass: the loss (read on a cut copy of a model output that carries a
point, so that the point's signal replaces that output's loss gradient) plus each
point output with its signal as output gradient. Every layer's weight gradient is its
own local one, given the signal that reaches its output.
"""

import abc
import difflib
import inspect
import warnings

import keras
import numpy as np

from credit._tensorflow import tf
from credit import _keras_compat as compat
from credit import recurrent_transports
from credit.graph import GraphError, size_of


class MethodState(keras.layers.Layer):
    """Holds a method's variables and sub-objects so that Keras saves them with the model.

    It is never called. The model keeps it in an untracked attribute, so its variables
    are not among ``model.weights`` (the model's optimizer never sees them), while
    ``model.save`` still writes them and ``keras.models.load_model`` restores them.
    """

    def call(self, inputs):  # pragma: no cover - never called
        raise RuntimeError("MethodState only holds variables; it is not a layer to call.")


class Trace:
    """The record of one forward pass of a model under a method.

    Attributes:
        graph: the model's :class:`credit.graph.Graph`.
        points: the method's feedback points (layer names), in topological order.
        outputs: dict from point to its output ``h_p`` (connected to the layers below).
        stops: dict from point to the stop-gradient copy of ``h_p`` that the layers above
            consumed (None for a point on the model output, which is not cut).
        below, above: dict from point to the points directly below / above it.
        x, y, sample_weight: the batch.
        y_pred: the model output.
        loss: the compiled loss of the batch (regularisation included), a scalar.
        objective: what the backward pass differentiates besides the point signals: the
            loss, read on cut copies of the model outputs that carry a point (so only
            the other outputs' losses and the regularisation reach the model).
        loss_read: dict from the index of a model output that carries a point to the
            cut copies the loss read in its place (the output, and its Keras logits or
            None); empty without such points.
        tape: the persistent ``tf.GradientTape`` on which all of the above were recorded.
        training: whether the forward pass ran in training mode.
        gradients: after the backward pass, the weight gradients aligned with
            ``variables`` (None before).
        variables: the model's trainable variables.
        records: what the method's ``intercept`` recorded during the forward pass.
        extra_targets: ``(tensor, gradient)`` pairs the backward pass adds (see
            :meth:`add_target`).
        extra_sources: tensors of the forward pass at which the backward pass also
            reads the arriving gradient (see :meth:`add_source`).
        source_gradients: after the backward pass, the gradients at ``extra_sources``
            (zeros where nothing arrives; unscaled under mixed precision), else None.

    The methods return the vector-Jacobian products methods are made of.
    """

    def __init__(self, plan, recorder, x, y, sample_weight, y_pred, loss, objective, tape,
                 training, variables):
        self.plan = plan
        self.graph = plan.graph
        self.points = plan.order
        self.outputs = dict(recorder.outputs)
        self.stops = dict(recorder.stops)
        self.below = plan.below
        self.above = plan.above
        self._logits = recorder.logits
        self.records = recorder.records
        self.extra_targets = []
        self.extra_sources = []
        self.source_gradients = None
        self.x = x
        self.y = y
        self.sample_weight = sample_weight
        self.y_pred = y_pred
        self.loss = loss
        self.objective = objective
        self.tape = tape
        self.training = training
        self.variables = variables
        self.gradients = None
        self.loss_read = {}
        self._output_errors = None
        self._output_gradient = None
        missing = [p for p in self.points if p not in self.outputs]
        if missing:
            raise GraphError(
                f"the forward pass did not reach the feedback point(s) {missing}: the "
                "model's call took another path than when credit analysed it (a Python "
                "branch on training?). Choose points on layers every call runs.")

    # -- the output ------------------------------------------------------------------

    @property
    def logits(self):
        """The tensor the output error is read at (the input of a final softmax/sigmoid)."""
        self._single_output("the output error")
        return self.output_logits()[0]

    def output_logits(self):
        """The tensors the output errors are read at, one per model output (in the order
        of ``tf.nest.flatten(y_pred)``): the input of a final softmax or sigmoid (a layer,
        a layer's activation or an op in a ``call``, also behind parameter-free shape
        layers such as Reshape or Flatten), else the output itself.

        Raises:
            GraphError: an output whose logits credit cannot read, named.
        """
        outputs = [t for t in tf.nest.flatten(self.y_pred) if t is not None]
        found = []
        for j, (t, (kind, where)) in enumerate(zip(outputs, self.graph.output_logits)):
            name = self.graph.output_names[j]
            if kind == "output":
                logits = t
            elif kind == "keras_logits":
                logits = compat.keras_logits(t)
            elif kind == "unreachable":
                raise GraphError(
                    f"credit cannot read the logits of model output {name!r}: {where}. "
                    "Apply the reshape before the softmax/sigmoid, or make the "
                    "softmax/sigmoid a layer (keras.layers.Softmax / Activation).")
            else:
                logits = self._logits.get(where)
            if logits is None:
                raise GraphError(
                    f"credit found no logits for model output {name!r} in this forward "
                    f"pass (expected at layer {where!r}, {kind}); the model's call took "
                    "another path than when credit analysed it.")
            found.append(logits)
        return found

    @property
    def output_units(self):
        """Number of values in the output error per example."""
        self._single_output("the output error")
        return size_of(self.graph.output_shapes[0])

    def _single_output(self, what):
        require_one_output(self.graph, what, "Use output_errors() (one error per output), "
                           "or a method")

    def output_error(self):
        """``e = dL/da_N``: the loss gradient at the logits (the model output if none).

        Shaped like the logits; with the loss's batch reduction included, so for softmax
        + cross-entropy it is ``(p - onehot(y)) / batch``. Computed once per step. For a
        model with several outputs see :meth:`output_errors`.
        """
        self._single_output("the output error")
        return self.output_errors()[0]

    def output_errors(self):
        """The output error of every model output, a list (see :meth:`output_error`).

        Output j's error is the gradient of the compiled loss at its logits: its own
        loss's gradient times its loss weight (``compile(loss_weights=...)``). It is
        read at the logits also where a point sits on the output (the loss reads a cut
        copy of it there). An output that the compiled loss gives no loss
        (``loss=[..., None]``) or that is not a float tensor has a zero error.

        Raises:
            GraphError: the loss does not reach an output that has a loss, named.
        """
        if self._output_errors is not None:
            return self._output_errors
        outputs = [t for t in tf.nest.flatten(self.y_pred) if t is not None]
        logits = self.output_logits()
        read = getattr(self, "loss_read", {}) or {}
        without = None
        errors = []
        for j, (t, l) in enumerate(zip(outputs, logits)):
            if not l.dtype.is_floating:
                errors.append(tf.zeros_like(l, dtype="float32"))
                continue
            e = self._error_at(j, t, l, read.get(j))
            if e is None:
                if without is None:
                    without = compat.outputs_without_loss(self.graph.model, self.y_pred)
                if without is None or j not in without:
                    raise GraphError(
                        f"the loss does not reach model output "
                        f"{self.graph.output_names[j]!r} (no gradient at its logits "
                        f"{getattr(l, 'name', '')}); credit cannot compute its output "
                        "error. Check that the loss reads this output.")
                e = tf.zeros_like(l)
            errors.append(e)
        self._output_errors = errors
        return errors

    def _error_at(self, j, t, logits, read):
        """``dL/dlogits`` of output ``j`` (``t``); ``read``: the cut copies the loss read
        instead of ``t`` (and of its Keras logits), or None."""
        if read is None:
            return self.tape.gradient(self.loss, logits)
        copy, copy_logits = read
        source, grad = t, self.tape.gradient(self.loss, copy)
        if grad is None and copy_logits is not None:
            source, grad = compat.keras_logits(t), self.tape.gradient(self.loss, copy_logits)
        if grad is None:
            return None
        if source is logits:
            return grad
        # Carry the gradient at the cut copy back to the logits through the model's own
        # ops between them (the softmax, a reshape).
        return self.tape.gradient(source, logits, output_gradients=grad)

    def flat_output_error(self):
        """The output errors of all outputs, flattened per example and concatenated.

        A ``(batch, units)`` tensor, ``units`` the sum of the outputs' sizes: the error
        vector ``e`` of a model with several outputs, as if they were one (DFA's ``e``).
        """
        errors = [flat(e) for e in self.output_errors()]
        if len(errors) == 1:
            return errors[0]
        if len({keras.backend.standardize_dtype(e.dtype) for e in errors}) > 1:
            errors = [keras.ops.cast(e, "float32") for e in errors]
        return keras.ops.concatenate(errors, axis=1)

    def output_gradient(self, point=None):
        """``dL/dh_N`` at a model output, also for a softmax/sigmoid + cross-entropy output.

        Args:
            point: for a model with several outputs, the feedback point that is one of
                them (its layer name): that output's own loss gradient (times its loss
                weight). None: the model's one output.

        Keras computes cross-entropy of such an output from its logits, so no gradient
        reaches the probabilities; it is recovered from ``e = dL/da_N``: ``e / p`` for a
        softmax (exact up to the softmax's invariance to a constant, as ``e`` sums to 0
        per example), ``e / (p (1 - p))`` for a sigmoid.
        """
        j = self._output_index(point)
        if self._output_gradient is None:
            self._output_gradient = {}
        if j in self._output_gradient:
            return self._output_gradient[j]
        outputs = [t for t in tf.nest.flatten(self.y_pred) if t is not None]
        read = (getattr(self, "loss_read", {}) or {}).get(j)
        grad = self.tape.gradient(self.loss, outputs[j] if read is None else read[0])
        if grad is None:
            fn = self.graph.output_squashing[j]
            if fn is None:
                raise GraphError(
                    f"the loss does not reach model output {self.graph.output_names[j]!r}; "
                    "credit cannot compute its gradient.")
            p = outputs[j]
            e = self.output_errors()[j]
            tiny = np.finfo(p.dtype.as_numpy_dtype).tiny
            scale = p if fn == "softmax" else p * (1 - p)
            grad = e / tf.maximum(scale, tiny)
        self._output_gradient[j] = grad
        return grad

    def _output_index(self, point):
        """The index of the model output that ``point`` is (None: the one output)."""
        if point is None:
            self._single_output("the output gradient")
            return 0
        indices = self.graph.output_indices(point)
        if len(indices) != 1:
            raise GraphError(f"point {point!r} is not one model output; its output "
                             "gradient is not defined.")
        return indices[0]

    def labels(self, units=None):
        """The targets as a ``(batch, units)`` tensor: one-hot classes or the target itself.

        Integer class labels are one-hot encoded with as many classes as the output has
        units; a target shaped like the output (one-hot labels, regression targets) is
        used as it is.
        """
        y = self.y
        units = self.output_units if units is None else units
        if y is None or isinstance(y, (dict, list, tuple)):
            raise ValueError(
                f"this method needs one target tensor y per batch; got "
                f"{type(y).__name__}. Pass y to fit (or to compute_gradients).")
        # keras.ops: the same on every backend (the JAX step's trace uses it as it is).
        y = keras.ops.convert_to_tensor(y)
        y_pred = keras.tree.flatten(self.y_pred)[0]
        batch, dtype = keras.ops.shape(y_pred)[0], y_pred.dtype
        dims = tuple(y.shape)[1:]
        size = int(np.prod(dims)) if len(y.shape) and None not in dims else None
        if size == units:
            return keras.ops.cast(keras.ops.reshape(y, (batch, units)), dtype)
        if size in (None, 1) and len(y.shape) <= 2 and units > 1:
            labels = keras.ops.cast(keras.ops.reshape(y, (batch,)), "int32")
            return keras.ops.one_hot(labels, units, dtype=dtype)
        raise ValueError(
            f"targets of shape {tuple(y.shape)} do not fit a model output of {units} units "
            f"per example: y must hold one class index per example (classification) or "
            f"{units} values per example (one-hot labels or a regression target).")

    def add_target(self, tensor, gradient):
        """Inject ``gradient`` at ``tensor`` (recorded in this forward pass) in the step's
        backward pass, besides the point signals: e.g. a synthetic gradient at a
        recurrent layer's final state."""
        self.extra_targets.append((tensor, gradient))

    def add_source(self, tensor):
        """Read the gradient arriving at ``tensor`` in the step's one backward pass.

        ``tensor`` must have been watched on the tape (``records.watch`` in an
        ``intercept``) or computed from something watched. After the backward pass,
        ``source_gradients[i]`` is the gradient at the i-th source added: e.g. the
        gradient reaching a stateful RNN's initial state, the bootstrap target of
        synthetic gradients through time. Returns the source's index.
        """
        self.extra_sources.append(tensor)
        return len(self.extra_sources) - 1

    # -- backward products -----------------------------------------------------------

    def gradient(self, signals, sources, objective=True):
        """The gradient arriving at the points ``sources`` by the backward pass.

        Args:
            signals: dict from point to the signal injected at its output (None entries
                are skipped).
            sources: points at which to read the arriving gradient (their stop-gradient
                copies: what arrives from the layers above them).
            objective: include the gradient of ``objective`` (the loss).

        Returns:
            A dict from each source point to a tensor shaped like its output (zeros where
            nothing arrives). The backward pass crosses weighted layers by the method's
            transports; between points it is otherwise the true one.
        """
        targets, grads = [], []
        if objective:
            targets.append(self.objective)
            grads.append(tf.ones_like(self.objective))
        for p, s in signals.items():
            if s is not None:
                h = self.outputs[p]
                targets.append(h)
                grads.append(tf.cast(tf.stop_gradient(s), h.dtype))
        cut = []
        for p in sources:
            if self.stops[p] is None:
                raise GraphError(f"point {p!r} is a model output; nothing arrives at it "
                                 "from above.")
            cut.append(self.stops[p])
        if not targets:
            return {p: tf.zeros_like(c) for p, c in zip(sources, cut)}
        result = self.tape.gradient(targets, cut, output_gradients=grads,
                                    unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return dict(zip(sources, result))

    def weight_gradients(self, signals):
        """The weight gradients of a backward pass with ``signals`` at the points (the
        method's update, aligned with ``variables``), without the method's own update:
        what :func:`credit.alignment` compares with backprop's."""
        targets, grads = [self.objective], [tf.ones_like(self.objective)]
        for p, s in signals.items():
            if s is not None:
                targets.append(self.outputs[p])
                grads.append(tf.cast(s, self.outputs[p].dtype))
        return self.tape.gradient(targets, self.variables, output_gradients=grads)

    def true_point_gradient(self, point):
        """``dL/dh_p`` at ``point`` in a trace recorded with ``cut=False`` (the loss's own
        gradient at the point's output, through the layers above)."""
        g = self.tape.gradient(self.loss, self.outputs[point])
        return g if g is not None else self.output_gradient(point)

    def vjp(self, point, signal):
        """The signal at ``point``'s output carried down to the points directly below it.

        Returns a dict from each point below to a tensor shaped like its output.
        """
        return self.gradient({point: signal}, self.below[point], objective=False)

    def loss_gradients(self):
        """``dL/dh_p`` at every point, carried across the points by the backward pass.

        Exact backprop under methods with true transports. Computed top down, one
        backward product per point.
        """
        grads = {}
        for p in reversed(self.points):
            if self.stops[p] is None:
                grads[p] = self.output_gradient(p)
                continue
            above = {q: grads[q] for q in self.above[p]}
            grads[p] = self.gradient(above, [p])[p]
        return grads


class ErrorSignal(abc.ABC):
    """Abstract base of every credit-assignment method.

    A method implements four things:

    - :meth:`build` ``(graph)``: choose its feedback points (``self.points``, layer
      names) and the layers it transports (``self.transported``), and create its state
      (feedback matrices, synthesizers) with :meth:`add_state_variable` or on
      ``self.state``. Called once per model, when the model is bound.
    - :meth:`transport` ``(layer, kernels)``: the kernels the backward pass crosses a
      transported layer with, in place of ``kernels`` (its own); None for its own.
    - :meth:`signals` ``(trace)``: a dict from point to its signal ``delta_p``, shaped
      like the point's output, used in place of ``dL/dh_p``.
    - :meth:`update` ``(trace, signals)``: update the method's own state after the
      backward pass (``trace.gradients`` is set); return a dict of scalar logs named as
      in ``log_names``.

    Optionally, a method that must act inside a layer's call (synthetic gradients through
    time read a stateful RNN's carried state) names those layers in ``self.intercepted``
    in :meth:`build` and implements :meth:`intercept`; its ``intercept_rule`` (a short
    phrase, or None) tells :func:`credit.summary` what it adds to those layers.

    A method without a backward pass (forward gradients, PEPITA) sets the class
    attribute ``computes_gradients = True`` and implements ``compute_gradients(model, x,
    y, sample_weight, loss_fn=None, training=True)``, returning a
    :class:`credit.model.Gradients` tuple: :func:`credit.compute_gradients` hands it the
    whole step. It describes each layer's update in ``layer_rule(name)`` (a phrase), which
    :func:`credit.summary` shows in place of a signal and a transport.

    Hyperparameters are the keyword arguments of the subclass's ``__init__``, stored on
    the instance under the same names: :meth:`get_config` reads them from there.

    Attributes (every method, after binding; empty where the method does not use them):
        points: the feedback points, layer names in topological order (a tuple).
        transported: the layers crossed by the method's transports (a tuple of names).
        feedback_matrices: dict from layer name (or point) to the feedback matrix the
            method uses there (FA, Kolen-Pollack, DFA, DRTP).
        synthesizers: dict from point to its synthesizer (synthetic gradients).

    Class attributes:
        name: the canonical registry name.
        aliases: other names accepted by :func:`credit.get`.
        exact: True only for backprop's fast path (Keras's own train step).
        log_names: names of the extra values :meth:`update` returns (logged by fit).
        transport_rule, point_rule: short descriptions for :func:`credit.summary`.

    Example:
        >>> class Zero(credit.ErrorSignal):                  # doctest: +SKIP
        ...     name = "zero"
        ...     def build(self, graph):
        ...         self.points = graph.points("stream")
        ...     def transport(self, layer, kernels):
        ...         return None
        ...     def signals(self, trace):
        ...         return {p: tf.zeros_like(trace.outputs[p]) for p in trace.points}
        ...     def update(self, trace, signals):
        ...         return {}
    """

    name = None
    aliases = ()
    exact = False
    log_names = ()
    transport_rule = None
    point_rule = None
    intercept_rule = None

    def __init__(self, seed=None):
        if seed is not None and (isinstance(seed, (bool, np.bool_))
                                 or not isinstance(seed, (int, np.integer)) or seed < 0):
            raise ValueError(f"seed must be None (drawn from numpy's global state) or an "
                             f"integer >= 0; got {seed!r} of type {type(seed).__name__}. "
                             "Pass e.g. seed=0.")
        self.seed = seed
        self.model = None
        self.graph = None
        self.plan = None
        self.state = None
        self.points = ()
        self.transported = ()
        self.intercepted = ()
        # Every method has these, so that code comparing methods reads them alike;
        # a method that uses them fills them in build (empty where unused). A method
        # that reads them from its state defines them as properties instead.
        for attribute in ("feedback_matrices", "synthesizers"):
            if not isinstance(getattr(type(self), attribute, None), property):
                setattr(self, attribute, {})
        self._drawn_seed = int(np.random.randint(0, 2**31 - 1)) if seed is None else None

    # -- what subclasses implement ---------------------------------------------------

    @abc.abstractmethod
    def build(self, graph):
        """Set ``self.points`` and ``self.transported`` (layer names); create state."""

    @abc.abstractmethod
    def transport(self, layer, kernels):
        """Kernels to cross ``layer`` with in the backward pass (None: its own).

        Called in each forward pass for each transported layer, with the layer's own
        kernels (a tuple: one kernel, or a depthwise and a pointwise one).
        """

    @abc.abstractmethod
    def signals(self, trace):
        """A dict from point name to ``delta_p`` (a tensor shaped like ``h_p``, or None)."""

    @abc.abstractmethod
    def update(self, trace, signals):
        """Update the method's own state after a step; return a dict of scalar logs."""

    def intercept(self, layer, call, args, kwargs, records):
        """Run a call of an intercepted layer (only for layers in ``self.intercepted``).

        ``call(*args, **kwargs)`` runs the layer as the engine would; ``records`` is the
        trace's dict, where the method keeps what its ``signals`` will need. Return the
        layer's output.
        """
        raise NotImplementedError(
            f"{type(self).__name__} names layers in self.intercepted but does not "
            "implement intercept(layer, call, args, kwargs, records).")

    # -- configuration ---------------------------------------------------------------

    def get_config(self):
        """The method's name and hyperparameters; ``credit.get(config)`` rebuilds it."""
        params = inspect.signature(type(self).__init__).parameters
        config = {"name": self.name}
        for p in list(params)[1:]:
            if params[p].kind in (params[p].VAR_POSITIONAL, params[p].VAR_KEYWORD):
                continue
            value = getattr(self, p)
            if isinstance(value, tuple):
                value = list(value)
            config[p] = value
        return config

    @classmethod
    def from_config(cls, config):
        """Build a method from :meth:`get_config`'s output.

        Raises:
            ValueError: a key that is not one of the method's hyperparameters (the
                message lists them, with the closest as a suggestion).
        """
        config = dict(config)
        config.pop("name", None)
        params = inspect.signature(cls.__init__).parameters
        valid = [n for n, p in list(params.items())[1:]
                 if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        unknown = [k for k in config if k not in valid]
        if unknown and not any(p.kind == p.VAR_KEYWORD for p in params.values()):
            close = difflib.get_close_matches(unknown[0], valid, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"bad config for method {cls.name!r}: unknown hyperparameter(s) "
                f"{', '.join(f'{k}={config[k]!r}' for k in unknown)}.{hint} Its "
                f"hyperparameters: {', '.join(valid)}.")
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "name")
        return f"{type(self).__name__}({args})"

    # -- helpers for subclasses ------------------------------------------------------

    def seed_for(self, *keys):
        """A numpy Generator derived from the method's seed and ``keys`` (ints or names).

        With ``seed=None`` the base seed was drawn from numpy's global generator when the
        method was made, so ``keras.utils.set_random_seed`` still makes runs reproducible.
        """
        base = self._drawn_seed if self.seed is None else int(self.seed)
        return np.random.default_rng([base, *[_key(k) for k in keys]])

    def add_state_variable(self, value, name, trainable=False, dtype="float32"):
        """Add a variable holding ``value`` (a numpy array) to the method's state."""
        value = np.asarray(value, dtype=dtype)
        with compat.init_scope():
            return self.state.add_weight(
                shape=value.shape, initializer=keras.initializers.Constant(value),
                trainable=trainable, name=name, dtype=dtype)


def _key(k):
    """An int for a seed key: ints as they are, names by a stable hash."""
    if isinstance(k, (int, np.integer)) and not isinstance(k, bool):
        return int(k)
    h = 0
    for ch in str(k).encode("utf-8"):
        h = (h * 131 + ch) % (2**31 - 1)
    return h


def uniform_feedback(rng, shape, fan_in, scale=None):
    """A fixed random feedback matrix, uniform in ``±scale``.

    The default scale is ``1/sqrt(fan_in)`` (Nøkland 2016), where ``fan_in`` is the
    number of terms the backward product sums over, so a signal keeps its size.
    """
    scale = 1.0 / np.sqrt(fan_in) if scale is None else float(scale)
    return rng.uniform(-scale, scale, size=shape).astype("float32")


def random_kernels(method, graph, scale=None, trainable=False):
    """Fixed random matrices shaped like the kernels of ``method.transported``.

    Uniform in ``±scale`` (default ``1/sqrt(fan_in)``, see :func:`uniform_feedback`),
    seeded per layer position and kernel. Returns a dict from layer name to a variable
    (a tuple of them for a layer with two kernels, e.g. a separable convolution).
    """
    from credit import transports

    matrices = {}
    for i, name in enumerate(method.transported):
        layer = graph.layers[name]
        made = []
        for j, kernel in enumerate(transports.kernels(layer)):
            value = uniform_feedback(method.seed_for(i, j), tuple(kernel.shape),
                                     transports.fan_in(layer, j), scale)
            made.append(method.add_state_variable(value, f"feedback_{i}_{j}",
                                                  trainable=trainable))
        matrices[name] = made[0] if len(made) == 1 else tuple(made)
    return matrices


def project(v, matrices, trace):
    """``v B_p`` for every point p, reshaped to ``h_p``: DFA's and DRTP's signals.

    Args:
        v: a ``(batch, d)`` tensor (the flattened output error, or the targets).
        matrices: dict from point to its ``(d, units of h_p)`` matrix.
        trace: the step's trace.
    """
    deltas = {}
    for name in trace.points:
        h = trace.outputs[name]
        delta = keras.ops.matmul(v, keras.ops.cast(matrices[name], v.dtype))
        deltas[name] = keras.ops.reshape(delta, keras.ops.shape(h))
    return deltas


#: The named placements of a point method's ``at=``: ``"stream"`` (the default: one point
#: where the stream leaves each residual block, a transformer block counting as one, and
#: one per block elsewhere), ``"residuals"`` (after every residual merge) and ``"blocks"``
#: (every hidden block's output, residual branches included).
PLACEMENTS = ("stream", "residuals", "blocks")


def hidden_points(graph, points, argument="points"):
    """The points a point method uses: ``points`` resolved, or a named placement.

    ``points`` is None or ``"stream"`` (the default placement: one point where the
    residual stream leaves each residual block, after its merge and the normalisation
    or activation that follows it, a transformer block's attention and feed-forward
    sublayers counting as one block, and none on the blocks of the branches; a plain
    chain keeps one point per block, see :meth:`credit.graph.Graph.stream_points`),
    ``"residuals"`` (one after every residual merge), ``"blocks"`` (every hidden
    block's output, residual branches included), or layer names and block indices.

    A layer called several times (a shared encoder, a layer inside TimeDistributed) gets
    a point on each call, named ``"name:0"``, ``"name:1"``, ...; naming the layer in
    ``points`` means all of its calls.

    Raises:
        GraphError: a name that is not a layer, a layer called several times, or a model
            without hidden blocks.
    """
    if points is None:
        return graph.points("stream")
    if isinstance(points, str) and points in PLACEMENTS:
        return graph.points(points)
    return graph.resolve_points(points, argument)


def transported_layers(graph, layers=None):
    """The layers a transport method crosses: ``layers`` checked, or by default every
    layer with a transport whose input gradient is used, and every recurrent layer (its
    recurrent kernel is crossed at every step through time, whatever lies below it).

    A recurrent layer with an option that has no transport through time is left out of
    the default, with a warning that names it and the option (its kernels are then
    crossed with the true W, by backpropagation through time).
    """
    if layers is None:
        for node in graph.units:
            layer = node.layer
            if recurrent_transports.covered_type(layer) and layer.trainable_weights:
                reason = recurrent_transports.refusal(layer)
                if reason is not None:
                    warnings.warn(
                        f"layer {layer.name!r} ({type(layer).__name__}) is crossed with its "
                        f"true kernels (backpropagation through time): {reason}.",
                        UserWarning, stacklevel=3)
        return [n for n in graph.transportable if graph.needs_input_gradient(n)
                or recurrent_transports.is_recurrent(graph.layers[n])]
    names = []
    for name in layers:
        if name not in graph.layers:
            raise GraphError(f"layers={list(layers)!r} names {name!r}, which is not a layer "
                             f"of model {graph.model.name!r}; its layers with a transport: "
                             f"{graph.transportable}.")
        names.append(name)
    return names


def output_error_units(graph):
    """Units of the output errors of all the model's outputs together (see
    :meth:`Trace.flat_output_error`)."""
    return sum(size_of(shape) for shape in graph.output_shapes)


def require_one_output(graph, what, use="Use a method"):
    """Raise a GraphError naming the outputs unless the model has one output.

    The one check for every reader of the output error or the target of one output
    (``what`` says who reads it; ``use`` starts the suggested fix).
    """
    if len(graph.output_shapes) != 1:
        raise GraphError(
            f"{what} needs a model with one output; model {graph.model.name!r} has "
            f"{len(graph.output_shapes)} outputs ({', '.join(graph.output_names)}). {use} "
            "that does not read the output error or the target (backprop, feedback "
            "alignment and its sign variants, Kolen-Pollack, synthetic gradients without "
            "conditioning).")


def output_units(graph, method):
    """Units of the model output (the output error's size); an error for several outputs."""
    require_one_output(graph, f"{method}, which reads the output error,")
    return size_of(graph.output_shapes[0])


def flat(t):
    """``t`` reshaped to ``(batch, -1)``."""
    return keras.ops.reshape(t, (keras.ops.shape(t)[0], -1))
