"""Keras integration: models that train with any credit-assignment method.

``credit.Sequential`` and ``credit.Model`` are Keras models with two more keyword
arguments, ``compile(method=...)`` and ``fit(method=...)``. Their ``train_step`` calls
:func:`compute_gradients`, the same function a custom training loop uses; backprop runs
Keras's own ``train_step``.
"""

import collections
import contextlib

import keras

from credit._tensorflow import tf
from credit import _keras_compat as compat
from credit import graph as graph_lib
from credit import backends, recurrent, registry, transports
from credit.backends import tensorflow as tf_backend
from credit.signal import MethodState, Trace

Gradients = collections.namedtuple("Gradients", ["gradients", "loss", "y_pred", "logs"])
Gradients.__doc__ = """What :func:`compute_gradients` returns.

Attributes:
    gradients: one tensor per ``model.trainable_variables`` entry, in that order (None
        for a variable that nothing reaches).
    loss: the batch loss (regularisation included), a scalar tensor.
    y_pred: the model output on the batch.
    logs: a dict of the method's extra scalars (e.g. ``sg_loss``); empty for most.
"""


# --------------------------------------------------------------------------------------
# Binding a method to a model


def bind(method, model, inputs=None):
    """Bind ``method`` to ``model`` (once): analyse the graph, build the method's state.

    Called by ``compile`` when the model's input shape is known, otherwise by the first
    training step (``inputs``: the first batch's x, to learn the input shape).

    Raises:
        ValueError: the method is bound to another model, or the input shape is unknown.
        credit.graph.GraphError: the method's points or transports do not fit the model.
    """
    if method.model is model and method.plan is not None:
        return method
    if method.model is not None and method.model is not model:
        raise ValueError(
            f"this {type(method).__name__} instance is already bound to model "
            f"{method.model.name!r}; give each model its own method, e.g. "
            "credit.get(method.get_config()).")
    if backends.is_jax():
        jax_backend().check_method(method)
        scope, init = contextlib.nullcontext(), contextlib.nullcontext()
    else:
        scope = (contextlib.nullcontext() if tf.distribute.has_strategy()
                 else model.distribute_strategy.scope())
        init = tf.init_scope()
    with init, scope:
        graph = _analyse(model, inputs)
        method.model, method.graph = model, graph
        method.state = MethodState(name=f"{method.name}_state")
        method.points, method.transported, method.intercepted = (), (), ()
        try:
            method.build(graph)
            for attr in ("feedback_matrices", "synthesizers"):
                if getattr(method, attr, None) is None:  # the same attributes on every method
                    setattr(method, attr, {})
            method.points = tuple(graph.resolve_points(list(method.points)))
            method.transported = tuple(_check_transported(graph, method))
            for name in method.intercepted:
                if name not in graph.layers:
                    raise graph_lib.GraphError(
                        f"{type(method).__name__} intercepts {name!r}, which is not a "
                        f"layer of model {model.name!r}.")
            method.plan = graph_lib.Plan(graph, method.points, method.transported,
                                         tuple(method.intercepted))
            if backends.is_jax():
                jax_backend().check_bound(method)
        except Exception:
            method.model = method.graph = method.plan = None
            raise
        method.state.built = True
    return method


def jax_backend():
    """credit's JAX step (imported only on the JAX backend)."""
    from credit.backends import jax as jax_step
    return jax_step


def _analyse(model, inputs):
    """The model's graph: traced on TensorFlow, read from Keras's functional graph on
    other backends (built first from the batch ``inputs`` where needed)."""
    if backends.is_jax():
        from credit.backends import keras_graph
        if not model.built and inputs is not None and isinstance(model, keras.Sequential):
            first = next(t for t in keras.tree.flatten(inputs) if t is not None)
            model.build((None,) + tuple(first.shape[1:]))
        return keras_graph.analyse(model)
    spec = _input_spec(model, inputs)
    _ensure_built(model, spec)
    return graph_lib.analyse(model, spec)


def _check_transported(graph, method):
    names = list(method.transported)
    for name in names:
        if name not in graph.layers:
            raise graph_lib.GraphError(
                f"{type(method).__name__} asks for a transport on {name!r}, which is not "
                f"a layer of model {graph.model.name!r}.")
        layer = graph.layers[name]
        if not transports.supports(layer):
            transports.kernel_names(layer)  # raises a TypeError that names the types
        if compat.quantized(layer):
            raise graph_lib.GraphError(
                f"layer {name!r} is quantized ({layer.quantization_mode}); credit's "
                "transports need its float kernel. Train it before quantizing, or use "
                "method='backprop'.")
    if len(set(names)) != len(names):
        raise graph_lib.GraphError(f"{type(method).__name__} transports a layer twice: "
                                   f"{names}.")
    return names


def _stateful(model):
    return any(getattr(layer, "stateful", False)
               for layer in compat.sublayers(model, recursive=True))


def _input_spec(model, inputs):
    keep_batch = _stateful(model)

    def from_tensor(t):
        if t is None:  # an optional input left out (Keras passes it on as None)
            return None
        t = tf.convert_to_tensor(t) if not isinstance(t, (tf.Tensor, keras.KerasTensor)) else t
        shape = tuple(t.shape)
        if not keep_batch:
            shape = (None,) + shape[1:]
        return tf.TensorSpec(shape, tf.as_dtype(keras.backend.standardize_dtype(t.dtype)))

    if inputs is not None:
        return tf.nest.map_structure(from_tensor, inputs)
    known = compat.input_specs(model)
    if known is not None:
        specs = [tf.TensorSpec(tuple(t.shape), tf.as_dtype(t.dtype)) for t in known]
        struct = compat.inputs_struct(model)
        if struct is not None:
            try:
                return tf.nest.pack_sequence_as(struct, specs)
            except (TypeError, ValueError):
                pass
        return specs[0] if len(specs) == 1 else specs
    shapes = compat.build_shapes(model)
    if shapes and len(shapes) == 1:
        shape = tuple(next(iter(shapes.values())))
        return tf.TensorSpec(shape if keep_batch else (None,) + shape[1:],
                             tf.as_dtype(model.input_dtype))
    raise ValueError(f"the input shape of model {model.name!r} is not known yet; give it "
                     "a keras.Input, build it, or train one step first.")


def _all_built(model):
    return all(layer.built for layer in compat.sublayers(model, recursive=True,
                                                         include_self=True))


def _ensure_built(model, spec):
    if model.built and _all_built(model):
        return
    if isinstance(model, keras.Sequential) and not isinstance(spec, (list, tuple, dict)):
        model.build(tuple(spec.shape))
        if _all_built(model):
            return
    # A subclassed model builds its layers by being called. Call it symbolically, as
    # Keras's fit does: nothing in its call runs (a variable it assigns, a stateful
    # layer's state), so building leaves the model as it was.
    def symbolic(s):
        if s is None:
            return None
        return keras.KerasTensor(tuple(s.shape), dtype=s.dtype.name)

    model(tf.nest.map_structure(symbolic, spec), training=False)


# --------------------------------------------------------------------------------------
# One step


def compute_gradients(model, x, y=None, sample_weight=None, *, method=None, loss_fn=None,
                      training=True):
    """The method's weight gradients for one batch, for a custom training loop.

    Runs the model's own forward pass with the method's transports and feedback points
    in place, asks the method for its error signals, turns them into gradients aligned
    with ``model.trainable_variables`` in one backward pass, and updates the method's
    own state (e.g. trains its synthesizers). Works eagerly and inside ``tf.function``;
    ``credit.Model.train_step`` is this function followed by the optimizer.

    Args:
        model: a credit model, or any Keras model if ``method`` is given.
        x, y, sample_weight: the batch.
        method: an ErrorSignal or a name; default ``model.method``.
        loss_fn: ``loss_fn(y, y_pred[, sample_weight]) -> scalar``; default the model's
            compiled loss. A ``keras.losses.Loss`` takes the sample weights.
        training: run the layers in training mode.

    Returns:
        A :class:`Gradients` tuple ``(gradients, loss, y_pred, logs)``.

    Example:
        >>> method = credit.get("dfa")                       # doctest: +SKIP
        >>> @tf.function
        ... def step(x, y):
        ...     out = credit.compute_gradients(model, x, y, method=method,
        ...                                    loss_fn=keras.losses.MeanSquaredError())
        ...     optimizer.apply(out.gradients, model.trainable_variables)
        ...     return out.loss
    """
    method = _resolve(model, method)
    if backends.is_jax():
        bind(method, model, inputs=x)
        return jax_backend().compute_gradients(model, method, x, y, sample_weight,
                                               loss_fn=loss_fn, training=training)
    if getattr(method, "computes_gradients", False):
        # Methods without a backward pass (forward gradients, PEPITA) form the whole
        # update themselves: method.compute_gradients returns a Gradients tuple.
        return method.compute_gradients(model, x, y, sample_weight, loss_fn=loss_fn,
                                        training=training)
    if method.exact:
        if not model.built:
            with tf.init_scope():
                _ensure_built(model, _input_spec(model, x))
        variables = model.trainable_variables
        with tf.GradientTape() as tape:
            y_pred = model(x, training=training)
            loss = compute_loss(model, x, y, y_pred, sample_weight, training, loss_fn)
            scaled = _scale(model, loss)
        return Gradients(tape.gradient(scaled, variables), loss, y_pred, {})
    trace = record(model, x, y, sample_weight, method=method, training=training,
                   loss_fn=loss_fn)
    plan = method.plan
    signals = method.signals(trace) or {}
    unknown = [p for p in signals if p not in plan.order]
    if unknown:
        raise ValueError(f"{type(method).__name__}.signals returned signals for {unknown}, "
                         f"which are not its points {list(plan.order)}.")
    # One backward pass with the signals injected at the points, then the method's
    # update, behind a barrier (credit.backends.tensorflow).
    gradients = tf_backend.backward(trace, signals, lambda t: _scale(model, t))
    gradients, logs = tf_backend.update(method, trace, signals, gradients)
    del trace.tape
    return Gradients(gradients, trace.loss, trace.y_pred, logs)


def record(model, x, y=None, sample_weight=None, *, method=None, training=True,
           loss_fn=None, cut=True, use_transports=True):
    """Run the forward pass of one step under a method and return its :class:`Trace`.

    The trace holds the point outputs, the loss and a persistent tape: what a method's
    ``signals`` reads. Nothing is updated. Useful to write and test methods.

    Args:
        model, x, y, sample_weight, method, training, loss_fn: as in
            :func:`compute_gradients` (backprop is bound too, to read its graph).
        cut: cut the backward pass at the points (False: only record their outputs, so
            that the tape gives true gradients at them).
        use_transports: apply the method's transports (False: true ones).

    Example:
        >>> trace = credit.model.record(model, x, y, method="dfa")   # doctest: +SKIP
        >>> trace.output_error()
    """
    method = _resolve(model, method)
    bind(method, model, inputs=x)
    if backends.is_jax():
        # The trace's backward products are calls of one jax.vjp (no tape).
        trace, _, _ = jax_backend().forward_trace(
            model, method, x, y, sample_weight,
            [v.value for v in model.trainable_variables],
            [v.value for v in model.non_trainable_variables],
            [v.value for v in model.metrics_variables], training, loss_fn, cut=cut,
            use_transports=use_transports)
        return trace
    plan = method.plan
    variables = model.trainable_variables
    tape = tf.GradientTape(persistent=True)
    recorder = plan.recorder(method.transport, tape, stop=cut, use_transports=use_transports,
                             intercept=method.intercept if plan.intercepted else None)
    with tape:
        with graph_lib.Hooks(plan.hooked, recorder):
            y_pred = model(x, training=training)
        read = _loss_read(plan, tape, y_pred) if cut else {}
        if read:
            # The loss reads a cut copy of each output that carries a point: the point's
            # signal replaces that output's loss gradient, the other outputs keep theirs.
            # Computed once, so that Keras's per-output loss trackers count it once.
            flat = tf.nest.flatten(y_pred)
            for j, (copy, _) in read.items():
                flat[j] = copy
            loss = compute_loss(model, x, y, tf.nest.pack_sequence_as(y_pred, flat),
                                sample_weight, training, loss_fn)
        else:
            loss = compute_loss(model, x, y, y_pred, sample_weight, training, loss_fn)
    trace = Trace(plan, recorder, x, y, sample_weight, y_pred, loss, loss, tape,
                  training, variables)
    trace.loss_read = read
    return trace


def _loss_read(plan, tape, y_pred):
    """``{output index: (cut copy, cut copy of its Keras logits or None)}`` for the model
    outputs that carry a point; the copies are watched on ``tape``."""
    flat = tf.nest.flatten(y_pred)
    read = {}
    for j in plan.output_points:
        t = flat[j]
        copy = tf.stop_gradient(t)
        compat.set_mask(copy, compat.get_mask(t))
        tape.watch(copy)
        logits = compat.keras_logits(t)
        if logits is not None:
            # Keras's cross-entropy reads the logits kept on a softmax output: cut them
            # too, or the loss would reach the model through them.
            logits = tf.stop_gradient(logits)
            tape.watch(logits)
            compat.set_keras_logits(copy, logits)
        read[j] = (copy, logits)
    return read


def _resolve(model, method):
    if not isinstance(model, keras.Model):
        raise TypeError(f"model must be a Keras model; got {model!r} of type "
                        f"{type(model).__name__}. Pass the model first, e.g. "
                        "credit.compute_gradients(model, x, y, method='dfa').")
    if method is None:
        method = getattr(model, "method", None)
        if method is None:
            raise ValueError(f"model {model.name!r} is not a credit model: pass method=, "
                             "e.g. credit.compute_gradients(model, x, y, method='dfa').")
        return method
    if isinstance(method, registry.ErrorSignal):
        return method
    # A method given by name is resolved once per model, so its state persists. The
    # cache is keyed on the method's canonical config, not on its spelling: "dfa",
    # "DFA", "direct-feedback-alignment" and {"name": "dfa", "scale": None} are one
    # method with one set of feedback matrices.
    resolved = registry.get(method)
    key = _config_key(resolved)
    current = model.__dict__.get("_credit_method")
    if current is not None and _config_key(current) == key:
        return current  # the credit model's own method, spelled another way
    cache = model.__dict__.setdefault("_credit_loop_methods", {})
    if key not in cache:
        cache[key] = resolved
    return cache[key]


def _config_key(method):
    """A hashable form of ``method.get_config()`` (equal configs, equal keys)."""
    return repr(sorted(method.get_config().items()))


def compute_loss(model, x, y, y_pred, sample_weight=None, training=True, loss_fn=None):
    """The model's compiled loss (regularisation included), or ``loss_fn``'s plus it."""
    if loss_fn is not None:
        if not callable(loss_fn):
            raise TypeError(
                f"loss_fn must be a callable loss_fn(y, y_pred[, sample_weight]); got "
                f"{loss_fn!r} of type {type(loss_fn).__name__}. Pass e.g. "
                f"loss_fn=keras.losses.get({loss_fn!r}) or a keras.losses.Loss instance.")
        if sample_weight is None:
            loss = loss_fn(y, y_pred)
        else:
            try:
                loss = loss_fn(y, y_pred, sample_weight)
            except TypeError as err:
                raise TypeError(
                    f"loss_fn={loss_fn!r} does not take sample weights ({err}); pass a "
                    "keras.losses.Loss (it takes them as a third argument), or fold the "
                    "weights into your loss function and drop sample_weight.") from None
        extra = _regularization(model, zero=False)
        return loss if extra is None else loss + tf.cast(extra, loss.dtype)
    if not compat.has_compiled_loss(model) and not model.losses:
        raise ValueError(
            f"model {model.name!r} has no loss: compile it with a loss, e.g. "
            "model.compile(loss='sparse_categorical_crossentropy', ...), or pass "
            "loss_fn=... to credit.compute_gradients.")
    return compat.compute_loss(model, x, y, y_pred, sample_weight, training)


def _scale(model, loss):
    optimizer = getattr(model, "optimizer", None)
    return optimizer.scale_loss(loss) if optimizer is not None else loss


def _regularization(model, zero=True):
    losses = [keras.ops.cast(compat.aggregate_additional_loss(model, l), "float32")
              for l in model.losses]
    if losses:
        return keras.ops.sum(keras.ops.stack(losses))
    return keras.ops.convert_to_tensor(0.0) if zero else None


# --------------------------------------------------------------------------------------
# Models


class Model(keras.Model):
    """A Keras model that trains with any credit-assignment method.

    Use it exactly like ``keras.Model`` (functional or subclassed); ``compile`` and
    ``fit`` take one more argument, ``method``: a name from ``credit.available()``, an
    alias, a config dict or an :class:`credit.ErrorSignal`. Default: backprop, for a
    model that never had a method; otherwise the current one, whose state (feedback
    matrices, synthesizers) is kept, also when the same method is given again by another
    spelling. A method change that fails leaves the model exactly as it was.

    Example:
        >>> inputs = keras.Input((784,))                     # doctest: +SKIP
        >>> h = keras.layers.Dense(256, activation="relu")(inputs)
        >>> outputs = keras.layers.Dense(10, activation="softmax")(h)
        >>> model = credit.Model(inputs, outputs)
        >>> model.compile("adam", "sparse_categorical_crossentropy", method="dfa")
        >>> model.fit(x, y, epochs=5)
        >>> model.fit(x, y, epochs=5, method="backprop")    # switches, and stays switched
    """

    def __new__(cls, *args, **kwargs):
        if cls is Model and compat.functional_init_arguments(args, kwargs):
            return FunctionalModel.__new__(FunctionalModel, *args, **kwargs)
        return super().__new__(cls, *args, **kwargs)

    def __init__(self, *args, **kwargs):
        if (compat.functional_init_arguments(args, kwargs)
                and not isinstance(self, compat.Functional)):
            # A subclass of credit.Model built the functional way: make it functional
            # the way Keras does for keras.Model subclasses, but through credit's
            # functional class (Keras's own rewrite would rebase credit.Model itself).
            compat.inject_functional_class(type(self), Model, FunctionalModel)
        super().__init__(*args, **kwargs)

    @property
    def method(self):
        """The resolved :class:`credit.ErrorSignal` this model trains with."""
        method = self.__dict__.get("_credit_method")
        if method is None:
            self._set_method(None)
            method = self.__dict__["_credit_method"]
        return method

    def _set_method(self, method):
        """Switch to ``method`` (None: keep the current one; backprop if there is none).

        The same method again (the same instance, or an unbound one with the same
        config: a name, alias or config dict) keeps the current instance and its state
        (feedback matrices, synthesizers). Raises before changing anything when the
        method is bound to another model; if binding fails, ``compile`` and ``fit``
        put the model back as it was (:meth:`_snapshot`, :meth:`_restore`).
        """
        current = self.__dict__.get("_credit_method")
        if method is None and current is not None:
            return
        resolved = registry.get(method)
        if resolved.model is not None and resolved.model is not self:
            raise ValueError(
                f"method={resolved!r} is already bound to model {resolved.model.name!r}, "
                f"so it cannot train model {self.name!r}; pass a name or a fresh "
                "instance, e.g. method=credit.get(method.get_config()).")
        if current is not None and (resolved is current or (
                resolved.model is None and resolved.get_config() == current.get_config())):
            return  # the same method again: keep its state (feedback matrices, ...)
        method = resolved
        # Bypass Keras's attribute tracking: the method's variables must not join
        # model.weights (the model's optimizer would update them), but saving still
        # finds the state holder by attribute.
        object.__setattr__(self, "_credit_method", method)
        object.__setattr__(self, "_credit_trackers",
                           {n: keras.metrics.Mean(name=n) for n in method.log_names})
        if not method.exact:
            self._try_bind()
        self._sync_state()
        # Keras caches the traced train function; a switch must retrace it.
        self.train_function = None
        self.test_function = None

    @property
    def non_trainable_variables(self):
        """Keras's non-trainable variables; on the JAX backend also the method's state
        (feedback matrices, brSF's step counter, its optimizers' slots) and the trackers
        of its logs, so that Keras's JAX trainer carries them through the jitted step
        with the model's and writes their updates back."""
        variables = super().non_trainable_variables
        if backends.is_jax():
            variables = variables + jax_backend().method_variables(self, variables)
            # The Mean trackers of the method's logs (sg_loss, ...), updated in the step.
            for tracker in self.__dict__.get("_credit_trackers", {}).values():
                variables = variables + list(tracker.variables)
        return variables

    def _try_bind(self):
        """Bind the method now if the input shape is known (else at the first step)."""
        method = self.__dict__.get("_credit_method")
        if method is None or method.exact or method.plan is not None or not self.built:
            return
        if backends.is_jax():  # the graph is Keras's own: no input shape to learn
            bind(method, self)
            return
        try:
            _input_spec(self, None)
        except ValueError:
            return
        bind(method, self)

    def _sync_state(self):
        method = self.__dict__.get("_credit_method")
        object.__setattr__(self, "_credit_state", method.state if method else None)

    def _snapshot(self):
        """The model's attributes now, for :meth:`_restore` (see there)."""
        saved = dict(self.__dict__)
        return saved, {k: list(v) for k, v in saved.items() if isinstance(v, list)}

    def _restore(self, snapshot):
        """Put back the attributes of :meth:`_snapshot`, undoing a failed method change.

        A method change (``compile``, ``fit(method=)``) either completes or leaves the
        model as it was: its method and that method's state, the compiled optimizer,
        loss and metrics, and the cached train function. Attributes are restored
        shallowly; lists that Keras's attribute tracking appends to, in place.
        """
        saved, lists = snapshot
        for key in [k for k in self.__dict__ if k not in saved]:
            del self.__dict__[key]
        self.__dict__.update(saved)
        for key, items in lists.items():
            saved[key][:] = items

    def compile(self, *args, method=None, **kwargs):
        """``keras.Model.compile`` with ``method=``.

        Without ``method=`` the model keeps the method it has (and its state), so
        recompiling to change the optimizer or the learning rate changes nothing else; a
        model that never had one trains with backprop. The same method again, by name,
        alias or config, also keeps its state. If the input shape is known, a new
        method's state (feedback matrices, synthesizers) is created here; otherwise at
        the first training step. A rejected method (bound to another model, or one that
        does not fit the model) raises and leaves the model exactly as it was.
        """
        snapshot = self._snapshot()
        try:
            super().compile(*args, **kwargs)
            self._set_method(method)
        except BaseException:
            self._restore(snapshot)
            raise

    def fit(self, *args, method=None, **kwargs):
        """``keras.Model.fit`` with ``method=``: switches the method, and it stays switched.

        A switch that fails (the method does not fit the model) raises and leaves the
        model as it was, with its previous method and that method's state.

        ``x`` may also be a :class:`credit.data.Windows` (consecutive windows for a
        stateful recurrent model): it is fed in order, in batches of its rows, with
        its mask as sample weights and a :class:`credit.recurrent.StatefulWindows`
        callback (state resets where sequences begin).
        """
        snapshot = self._snapshot() if method is not None else None
        try:
            if method is not None:
                self._set_method(method)
            args, kwargs = recurrent.fit_arguments(self, args, kwargs)
        except BaseException:
            if snapshot is not None:
                self._restore(snapshot)
            raise
        new = self.__dict__.get("_credit_method")
        if snapshot is None or new is None or new.exact or new.plan is not None:
            return super().fit(*args, **kwargs)
        # The input shape was unknown, so the new method binds at the first step: a
        # failure there is still part of the switch.
        try:
            return super().fit(*args, **kwargs)
        except BaseException:
            if new.plan is None:
                self._restore(snapshot)
            raise

    def make_train_function(self, force=False):
        # Bind before Keras traces the train function, so that the method's variables
        # are created outside it (and under the model's distribution strategy).
        self._try_bind()
        self._sync_state()
        return super().make_train_function(force)

    def train_step(self, *args):
        """One step: :func:`compute_gradients` with ``self.method``, then the optimizer.

        Backprop runs Keras's own ``train_step``. On the JAX backend the step is
        functional, as Keras's JAX trainer calls it: ``train_step(state, data)``
        returns ``(logs, state)`` (:func:`credit.backends.jax.train_step`).
        """
        method = self.method
        if method.exact:
            return super().train_step(*args)
        if backends.is_jax():
            bind(method, self, inputs=compat.unpack_x_y_sample_weight(args[1])[0])
            return jax_backend().train_step(self, *args)
        (data,) = args
        x, y, sample_weight = compat.unpack_x_y_sample_weight(data)
        out = compute_gradients(self, x, y, sample_weight, method=method)
        self._sync_state()
        batch = tf.shape(next(i for i in tf.nest.flatten(x) if i is not None))[0]
        for metric in self.metrics:
            if metric.name == "loss":
                metric.update_state(compat.unscale_loss_for_distribution(out.loss),
                                    sample_weight=batch)
        variables = self.trainable_variables
        if variables:
            self.optimizer.apply_gradients(zip(out.gradients, variables))
        for name, value in out.logs.items():
            self._credit_trackers[name].update_state(value)
        logs = self.compute_metrics(x, y, out.y_pred, sample_weight=sample_weight)
        for name, tracker in self._credit_trackers.items():
            logs[name] = tracker.result()
        return logs

    def reset_metrics(self):
        super().reset_metrics()
        for tracker in self.__dict__.get("_credit_trackers", {}).values():
            tracker.reset_state()

    def get_compile_config(self):
        config = super().get_compile_config()
        if config and self.__dict__.get("_credit_method") is not None:
            config["method"] = self.method.get_config()
        return config

    def compile_from_config(self, config):
        config = dict(config)
        method = config.pop("method", None)
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config, method=method)
        if getattr(self, "optimizer", None) is not None and self.built:
            self.optimizer.build(self.trainable_variables)


keras.saving.register_keras_serializable(package="credit", name="Model")(Model)


@keras.saving.register_keras_serializable(package="credit", name="Functional")
class FunctionalModel(Model, compat.Functional):
    """A functional credit model (what ``credit.Model(inputs, outputs)`` returns)."""


@keras.saving.register_keras_serializable(package="credit", name="Sequential")
class Sequential(Model, keras.Sequential):
    """A ``keras.Sequential`` that trains with any credit-assignment method.

    Example:
        >>> model = credit.Sequential([                      # doctest: +SKIP
        ...     keras.Input((784,)),
        ...     keras.layers.Dense(256, activation="relu"),
        ...     keras.layers.Dense(10, activation="softmax"),
        ... ])
        >>> model.compile("adam", "sparse_categorical_crossentropy", method="fa")
    """


def wrap(model):
    """A credit model over the same layers (and so the same weights) as ``model``.

    Args:
        model: a ``keras.Sequential`` or functional ``keras.Model``. It is not compiled
            for you: compile the result with the method you want.

    Example:
        >>> cm = credit.wrap(keras_model)                    # doctest: +SKIP
        >>> cm.compile("adam", "mse", method="dfa")
    """
    if isinstance(model, Model):
        return model
    if isinstance(model, keras.Sequential):
        layers = list(model.layers)
        if model.built and getattr(model, "inputs", None):
            layers = [keras.Input(batch_shape=model.inputs[0].shape,
                                  dtype=model.inputs[0].dtype)] + layers
        return Sequential(layers, name=model.name)
    if isinstance(model, compat.Functional):
        return Model(model.inputs, model.outputs, name=model.name)
    raise TypeError(
        f"credit.wrap takes a keras.Sequential or a functional keras.Model; got "
        f"{type(model).__name__}. For a subclassed model, subclass credit.Model instead "
        "of keras.Model.")

