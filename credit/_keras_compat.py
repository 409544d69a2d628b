"""The only module that touches private Keras API.

Each function here wraps one private piece of Keras that credit cannot do without, with
a comment saying why. setup.cfg bounds the Keras versions this was tested with; a Keras
upgrade that moves one of these breaks this file alone, and the tests that run Keras's
own model tests against credit's models catch it.
"""

import keras
from keras.src.backend.common import masking
from keras.src.losses import loss as loss_module
from keras.src.models import model as model_module
from keras.src.models.functional import Functional
from keras.src.trainers.data_adapters import data_adapter_utils

__all__ = ["Functional", "functional_init_arguments", "get_mask", "inject_functional_class",
           "input_specs", "inputs_struct", "set_mask", "sublayers", "unpack_x_y_sample_weight",
           "aggregate_additional_loss", "unscale_loss_for_distribution", "keras_logits",
           "set_keras_logits", "outputs_without_loss"]

# Keras decides whether `Model(...)` is functional from its arguments; credit.Model must
# decide the same way to return its own functional class.
functional_init_arguments = model_module.functional_init_arguments

# How Keras splits a batch into (x, y, sample_weight) in train_step.
unpack_x_y_sample_weight = data_adapter_utils.unpack_x_y_sample_weight

# Keras divides the loss by the number of replicas under tf.distribute; the loss tracker
# undoes it. credit's train_step logs the loss the same way.
unscale_loss_for_distribution = loss_module.unscale_loss_for_distribution


def sublayers(layer, recursive=False, include_self=False):
    """The layers that ``layer`` owns (directly, or at any depth), in creation order.

    Keras tracks sublayers of any layer (a custom block, MultiHeadAttention, a nested
    model) in a private list; only models expose theirs publicly, and only one level
    deep (``model.layers``).
    """
    return list(layer._flatten_layers(include_self=include_self, recursive=recursive))


def inputs_struct(model):
    """The nested structure of a functional model's inputs (a dict, a list, one tensor),
    or None: a model called on a dict of inputs must be analysed with the same dict."""
    return getattr(model, "_inputs_struct", None)


def get_mask(x):
    """The Keras mask attached to tensor ``x`` (None if there is none)."""
    return masking.get_keras_mask(x)


def set_mask(x, mask):
    """Attach a Keras mask to ``x``: a feedback point's stop-gradient copy keeps it."""
    if mask is not None:
        masking.set_keras_mask(x, mask)


def aggregate_additional_loss(model, loss):
    """A ``model.losses`` entry as Keras adds it to the loss (scaled for distribution)."""
    return model._aggregate_additional_loss(loss)


def compute_loss(model, x, y, y_pred, sample_weight, training):
    """The model's compiled loss, exactly as Keras's train_step computes it.

    ``Model._compute_loss`` is what Keras's own train_step calls (it dispatches to a
    user's ``compute_loss`` override and scales for distribution).
    """
    return model._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                               training=training)


def has_compiled_loss(model):
    """Whether ``compile`` was given a loss."""
    return getattr(model, "_compile_loss", None) is not None


def build_shapes(model):
    """The input shapes a subclassed model was built with (None if unknown)."""
    shapes = getattr(model, "_build_shapes_dict", None) or {}
    return dict(shapes) or None


def inject_functional_class(cls, credit_model, credit_functional):
    """Make ``cls`` (a subclass of credit.Model built the functional way) functional.

    Keras does this for subclasses of keras.Model by rewriting the class's bases with
    keras's Functional (``inject_functional_model_class``); applied to a credit.Model
    subclass, that would rewrite credit.Model itself for the whole process. This does
    the same rewrite, stopping at credit's own functional class.
    """
    if cls is credit_model:
        return credit_functional
    if cls is object or cls is credit_functional or issubclass(credit_functional, cls):
        return cls
    if not issubclass(cls, credit_model):
        return cls
    cls.__bases__ = tuple(inject_functional_class(base, credit_model, credit_functional)
                          for base in cls.__bases__)
    return cls


def input_specs(model):
    """The model's symbolic inputs as Keras knows them, or None."""
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        return None
    return inputs or None


def quantized(layer):
    """Whether ``layer`` runs a quantized call (int8, float8, ...) instead of ``call``."""
    return getattr(layer, "quantization_mode", None) is not None


def is_keras_tensor(x):
    """Whether ``x`` is a symbolic Keras tensor (a functional graph's, not a value)."""
    return isinstance(x, keras.KerasTensor)


def keras_logits(x):
    """The logits Keras's TensorFlow backend keeps on a softmax/sigmoid output (None if
    none): its cross-entropy reads them, so the loss gradient reaches them and not the
    probabilities."""
    return getattr(x, "_keras_logits", None)


def set_keras_logits(x, logits):
    """Attach ``logits`` to ``x`` as Keras's softmax/sigmoid does (see keras_logits): a
    cut copy of a model output keeps the logits its cross-entropy reads."""
    x._keras_logits = logits


def outputs_without_loss(model, y_pred):
    """The indices (in ``tf.nest.flatten`` order) of the outputs ``y_pred`` that the
    compiled loss gives no loss (``compile(loss=[..., None])``), or None if unknown.

    Keras keeps the losses it resolved at the first call of the compiled loss, with
    their paths into the outputs, in a private list.
    """
    from keras import tree

    compiled = getattr(model, "_compile_loss", None)
    flat_losses = getattr(compiled, "_flat_losses", None)
    if flat_losses is None:
        return None
    try:
        n = len(tree.flatten(y_pred))
        names = list(getattr(compiled, "output_names", None) or [])
        index = tree.pack_sequence_as(y_pred, list(range(n)))
        covered = set()
        for entry in flat_losses:
            obj = index
            for key in entry.path:
                if isinstance(key, str) and not isinstance(obj, dict):
                    obj = obj[names.index(key)]
                else:
                    obj = obj[key]
            covered.update(tree.flatten(obj))
        return set(range(n)) - covered
    except (AttributeError, IndexError, KeyError, TypeError, ValueError):
        return None


def functional_graph(model):
    """The functional graph behind ``model``, or None: the model itself if it is a
    functional model, the functional model Keras builds inside a ``keras.Sequential``
    (``_functional``, set once its input shape is known), else None (a subclassed
    model has no graph). credit reads the graph on backends where it cannot trace the
    model's call (JAX)."""
    if isinstance(model, keras.Sequential):
        return getattr(model, "_functional", None)
    if isinstance(model, Functional):
        return model
    return None


def functional_calls(functional):
    """The calls of a functional model's graph in the order Keras runs them: a list of
    ``(operation, input KerasTensors, output KerasTensors)``, input layers left out.

    Keras keeps the graph's nodes by depth in a private dict and runs them from the
    deepest depth up (``Functional._run_through_graph``); the order within a depth is
    the order Keras keeps them in.
    """
    calls = []
    by_depth = functional._nodes_by_depth
    for depth in sorted(by_depth, reverse=True):
        for node in by_depth[depth]:
            if isinstance(node.operation, keras.layers.InputLayer):
                continue
            calls.append((node.operation, list(node.input_tensors),
                          list(node.output_tensors)))
    return calls


class losses_override:
    """Context manager: ``model.losses`` reads ``losses`` (the losses a stateless call
    returned), as Keras's JAX trainer sets them for ``compute_loss``
    (``_losses_override``, private)."""

    def __init__(self, model, losses):
        self.model = model
        self.losses = losses

    def __enter__(self):
        if self.losses:
            self.model._losses_override.clear()
            self.model._losses_override = self.losses
        return self

    def __exit__(self, *exc):
        if self.losses:
            self.model._losses_override.clear()
        return False


def update_metrics_variables(model, metrics_variables, loss, x, y, y_pred, sample_weight):
    """The JAX trainer's stateless metrics update after a step: ``(logs, new metrics
    variables)``, the loss tracker included (``JAXTrainer._update_metrics_variables``,
    private: the one place Keras's JAX train step updates its metrics)."""
    return model._update_metrics_variables(metrics_variables, loss, x, y, y_pred,
                                           sample_weight)


def init_scope():
    """Where a method creates its state variables: outside any traced function (on
    TensorFlow ``tf.init_scope``; other backends create variables eagerly anyway)."""
    if keras.config.backend() == "tensorflow":
        import tensorflow as tf
        return tf.init_scope()
    import contextlib
    return contextlib.nullcontext()


def in_stateless_scope():
    """Whether code runs inside a ``keras.StatelessScope`` (a stateless call, where a
    variable's value is the traced value of the step)."""
    from keras.src.backend.common.stateless_scope import in_stateless_scope as inside
    return inside()


def autocast_scope(dtype):
    """Keras's autocast scope for ``dtype`` (variables read in that dtype), as
    ``Layer.__call__`` opens it under a mixed-precision policy."""
    from keras.src.backend import AutocastScope
    return AutocastScope(dtype)


def current_stateless_scope():
    """The ``keras.StatelessScope`` code runs in, or None."""
    from keras.src.backend.common.stateless_scope import get_stateless_scope
    return get_stateless_scope()


def held_value(variable):
    """The array a variable holds (its private ``_value``), or None where Keras's JAX
    trainer has released it during ``fit``: reading ``variable.value`` then fails."""
    return getattr(variable, "_value", None)
