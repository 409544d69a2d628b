"""Keras integration: models that train with any credit-assignment method.

``credit.Sequential`` and ``credit.Model`` are Keras models with two more keyword
arguments, ``compile(method=...)`` and ``fit(method=...)``. Their ``train_step`` calls
:func:`compute_gradients`, the same function a custom training loop uses.
"""

import collections

import keras
import numpy as np
import tensorflow as tf
from keras.src.models.functional import Functional
from keras.src.models.model import functional_init_arguments
from keras.src.trainers.data_adapters import data_adapter_utils

from credit import blocks as blocks_lib
from credit import registry

Gradients = collections.namedtuple("Gradients", ["gradients", "loss", "y_pred", "logs"])
Gradients.__doc__ = """What :func:`compute_gradients` returns.

Attributes:
    gradients: one tensor per ``model.trainable_variables`` entry, in that order.
    loss: the batch loss (regularisation included), a scalar tensor.
    y_pred: the model output on the batch.
    logs: a dict of the method's extra scalars (e.g. ``sg_loss``); empty for most.
"""


def bind(method, model, input_shape=None):
    """Build ``method``'s state for ``model`` (once): cut the blocks, create variables.

    Called by ``compile`` when the model's input shape is known, otherwise by the first
    training step. Backprop binds without cutting (it trains any model).
    """
    if method.model is model and (method.exact or method.blocks is not None):
        return method
    if method.model is not None and method.model is not model:
        raise ValueError(
            f"this {type(method).__name__} instance is already bound to model "
            f"{method.model.name!r}; give each model its own method, e.g. "
            "credit.get(method.get_config()).")
    method.model = model
    if method.exact:
        return method
    with tf.init_scope():
        if input_shape is None:
            input_shape = _model_input_shape(model)
        if not model.built:
            if isinstance(model, (keras.Sequential, Functional)):
                model.build((None,) + tuple(input_shape))
            else:  # a subclassed model builds its layers by being called
                model(np.zeros((1,) + tuple(input_shape), "float32"), training=False)
        blocks = blocks_lib.cut(model)
        blocks_lib.infer_shapes(blocks, input_shape)
        if not isinstance(model, (keras.Sequential, Functional)):
            _check_chain(model, blocks, input_shape)
        from credit.signal import MethodState

        method.state = MethodState(name=f"{method.name}_state")
        try:
            method.build(blocks)
        except Exception:
            method.model = None
            raise
        method.state.built = True
        method.blocks = blocks
    return method


def _model_input_shape(model):
    try:
        return tuple(model.inputs[0].shape[1:])
    except (AttributeError, IndexError, TypeError, ValueError):
        pass
    shape = getattr(model, "_build_shapes_dict", None) or {}
    if len(shape) == 1:
        return tuple(next(iter(shape.values()))[1:])
    raise ValueError(f"the input shape of model {model.name!r} is not known yet; "
                     "give it a keras.Input, or train one step first.")


def _check_chain(model, blocks, input_shape):
    """A subclassed model: check that its layers, in order, reproduce ``model.call``."""
    x = np.random.default_rng(0).normal(size=(2,) + tuple(input_shape)).astype("float32")
    expected = model(x, training=False)
    h = x
    for block in blocks:
        h = block(h, training=False)
    if tuple(h.shape) != tuple(expected.shape) or not np.allclose(h, expected, atol=1e-4):
        raise blocks_lib.CutError(
            f"credit could not cut subclassed model {model.name!r} into a chain of "
            "blocks: its layers, applied in the order they were created, do not "
            "reproduce model.call. Use method='backprop', or build the model as a "
            "credit.Sequential or a functional credit.Model.")


def compute_gradients(model, x, y, sample_weight=None, *, method=None, loss_fn=None,
                      training=True):
    """The method's weight gradients for one batch, for a custom training loop.

    Runs the forward pass, asks the method for its error signals, turns them into
    gradients aligned with ``model.trainable_variables``, and updates the method's own
    state (e.g. trains its synthesizers). Works eagerly and inside ``tf.function``;
    ``credit.Model.train_step`` is this function followed by the optimizer.

    Args:
        model: a credit model, or any Keras model if ``method`` is given.
        x, y, sample_weight: the batch.
        method: an ErrorSignal or a name; default ``model.method``.
        loss_fn: ``loss_fn(y, y_pred) -> scalar``; default the model's compiled loss.
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
    if method is None:
        method = getattr(model, "method", None)
        if method is None:
            raise ValueError(f"model {model.name!r} is not a credit model: pass method=, "
                             "e.g. credit.compute_gradients(model, x, y, method='dfa').")
    elif not isinstance(method, registry.ErrorSignal):
        method = _method_for(model, method)
    variables = model.trainable_variables
    if method.exact:
        bind(method, model)
        with tf.GradientTape() as tape:
            y_pred = model(x, training=training)
            loss = blocks_lib.compute_loss(model, x, y, y_pred, sample_weight, training,
                                           loss_fn)
            scaled = _scale(model, loss)
        return Gradients(tape.gradient(scaled, variables), loss, y_pred, {})
    bind(method, model, input_shape=tuple(x.shape[1:]))
    trace = blocks_lib.record(model, method.blocks, x, y, sample_weight, training, loss_fn)
    signals = list(method.signals(trace))
    if len(signals) != len(trace.blocks):
        raise ValueError(f"{type(method).__name__}.signals returned {len(signals)} "
                         f"signals for {len(trace.blocks)} blocks; return one per block.")
    # One backward pass: the loss (or, if the output block has a signal, the
    # regularisation) as a target, plus each block output h_k with its signal delta_k
    # as output gradient -- the VJP of sum_k <h_k, delta_k>, without building that sum.
    # Passing delta_k itself (not the gradient of a product with it) lets grappler
    # share the VJP of block k's nonlinearity with the one the method already took.
    with trace.tape:
        base = trace.loss if signals[-1] is None else _regularization(model)
        base = _scale(model, base)
    targets, output_gradients = [base], [tf.ones_like(base)]
    for h, delta in zip(trace.outputs, signals):
        if delta is not None:
            targets.append(h)
            output_gradients.append(_scale(model, tf.stop_gradient(delta)))
    gradients = trace.tape.gradient(targets, variables, output_gradients=output_gradients)
    logs = method.update(trace, signals) or {}
    del trace.tape
    return Gradients(gradients, trace.loss, trace.y_pred, logs)


def _method_for(model, identifier):
    """A method given by name is resolved once per model, so its state persists."""
    cache = model.__dict__.setdefault("_credit_loop_methods", {})
    key = repr(identifier)
    if key not in cache:
        cache[key] = registry.get(identifier)
    return cache[key]


def _scale(model, loss):
    optimizer = getattr(model, "optimizer", None)
    return optimizer.scale_loss(loss) if optimizer is not None else loss


def _regularization(model):
    losses = model.losses
    return tf.add_n([tf.cast(l, "float32") for l in losses]) if losses else tf.constant(0.0)


class Model(keras.Model):
    """A Keras model that trains with any credit-assignment method.

    Use it exactly like ``keras.Model`` (functional or subclassed); ``compile`` and
    ``fit`` take one more argument, ``method``: a name from ``credit.available()``, an
    alias, a config dict or an :class:`credit.ErrorSignal`. Default: backprop.

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
        if cls is Model and functional_init_arguments(args, kwargs):
            return FunctionalModel.__new__(FunctionalModel, *args, **kwargs)
        return super().__new__(cls, *args, **kwargs)

    @property
    def method(self):
        """The resolved :class:`credit.ErrorSignal` this model trains with."""
        method = self.__dict__.get("_credit_method")
        if method is None:
            self._set_method(None)
            method = self.__dict__["_credit_method"]
        return method

    def _set_method(self, method):
        current = self.__dict__.get("_credit_method")
        resolved = registry.get(method)
        if current is not None and (resolved is current or (
                resolved.model is None and resolved.get_config() == current.get_config())):
            return  # the same method again: keep its state (feedback matrices, ...)
        method = resolved
        if method.model is not None and method.model is not self:
            raise ValueError(
                f"this {type(method).__name__} instance already trains model "
                f"{method.model.name!r}; pass a name or a fresh instance.")
        # Bypass Keras's attribute tracking: the method's variables must not join
        # model.weights (the model's optimizer would update them), but saving still
        # finds the state holder by attribute.
        object.__setattr__(self, "_credit_method", method)
        object.__setattr__(self, "_credit_trackers",
                           {n: keras.metrics.Mean(name=n) for n in method.log_names})
        if self.built:
            try:
                bind(method, self)
            except ValueError as err:
                if "input shape" not in str(err):
                    raise
        self._sync_state()
        # Keras caches the traced train function; a switch must retrace it.
        self.train_function = None
        self.test_function = None

    def _sync_state(self):
        object.__setattr__(self, "_credit_state", self.method.state)

    def compile(self, *args, method=None, **kwargs):
        """``keras.Model.compile`` with ``method=`` (default backprop).

        If the input shape is known, the method's state (feedback matrices,
        synthesizers) is created here; otherwise at the first training step.
        """
        super().compile(*args, **kwargs)
        object.__setattr__(self, "_credit_method", None)
        self._set_method(method)

    def fit(self, *args, method=None, **kwargs):
        """``keras.Model.fit`` with ``method=``: switches the method, and it stays switched."""
        if method is not None:
            self._set_method(method)
        return super().fit(*args, **kwargs)

    def train_step(self, data):
        """One step: :func:`compute_gradients` with ``self.method``, then the optimizer."""
        x, y, sample_weight = data_adapter_utils.unpack_x_y_sample_weight(data)
        method = self.method
        out = compute_gradients(self, x, y, sample_weight, method=method)
        self._sync_state()
        self._loss_tracker.update_state(out.loss, sample_weight=tf.shape(x)[0])
        self.optimizer.apply(out.gradients, self.trainable_variables)
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
class FunctionalModel(Model, Functional):
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
    if isinstance(model, Functional):
        return Model(model.inputs, model.outputs, name=model.name)
    raise TypeError(
        f"credit.wrap takes a keras.Sequential or a functional keras.Model; got "
        f"{type(model).__name__}. For a subclassed model, subclass credit.Model instead "
        "of keras.Model.")
