"""PEPITA: two forward passes, the second on an input modulated by the output error."""

import keras
import numpy as np
from keras import ops

from credit.graph import GraphError
from credit.methods import _synthesizers as sg
from credit.methods.forward_gradient import raise_no_signals
from credit.registry import register
from credit.signal import ErrorSignal, flat, output_units

#: Layers that draw random numbers in training: PEPITA's two passes would differ by them.
_RANDOM = tuple(t for t in (keras.layers.Dropout, keras.layers.GaussianNoise,
                            keras.layers.GaussianDropout, keras.layers.AlphaDropout,
                            getattr(keras.layers, "SpatialDropout1D", None))
                if t is not None)


@register
class Pepita(ErrorSignal):
    """PEPITA, "Present the Error to Perturb the Input To modulate Activity"
    (Dellaferrera & Kreiman 2022, "Error-driven Input Modulation: Solving the Credit
    Assignment Problem without a Backward Pass", ICML).

    Rule, on a chain of Dense blocks ``h_l = phi(h_{l-1} W_l + b_l)``, ``h_0 = x``:

    1. a forward pass on ``x`` gives the output error per example ``e`` (the loss
       gradient at the logits times the batch size: ``p - onehot(y)`` for softmax and
       cross-entropy);
    2. a second forward pass on ``x' = x + e F``, with ``F`` fixed random of shape
       ``(output units, input units)``, gives ``h'_l``;
    3. hidden layer l gets ``h'_{l-1}^T (h_l - h'_l) / batch`` (bias: the batch mean of
       ``h_l - h'_l``), the output layer ``h'_{L-1}^T e / batch`` (bias: the mean of
       ``e``); ``h'_0 = x'``.

    No backward pass is taken. ``F`` is uniform in ``±scale``, by default
    ``0.05 sqrt(6 / input units)``, as in the authors' code (GiorgiaD/PEPITA,
    ``main_pytorch.py``: ``sd = sqrt(6/nin)``, ``Bstd = 0.05``). Their code reads the
    output layer's error from the modulated pass; this follows the paper's formula
    (the first pass's ``e``).

    Supported models: chains of Dense blocks (Dense layers with any activation, and
    Flatten/Activation/Reshape layers between them); a model with any other layer
    with weights, a layer that draws random numbers in training (dropout: the two
    passes would differ by their masks) or a branch gets a GraphError that names the
    first layer it cannot handle. The regularisation terms of the loss do not enter
    the update.

    Args:
        seed: seed of ``F`` (None: drawn from numpy's global state).
        scale: ``F`` is uniform in ``±scale``; default ``0.05 sqrt(6 / input units)``.

    Attributes:
        feedback_matrices: ``{"input": F}``, after binding.

    Example:
        >>> model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
        ...               loss="categorical_crossentropy",
        ...               method="pepita")                         # doctest: +SKIP
    """

    name = "pepita"
    aliases = ()
    computes_gradients = True
    dense_chains_only = True
    point_rule = "h_l - h'_l (two forward passes, the second on x + e F)"

    def __init__(self, seed=None, scale=None):
        if seed is not None and not sg.is_int(seed):
            raise ValueError(f"seed must be None or an integer; got {seed!r}.")
        if scale is not None and (not sg.is_real(scale) or not scale > 0):
            raise ValueError(f"scale must be None (0.05 sqrt(6 / input units)) or a "
                             f"positive number; got {scale!r}.")
        super().__init__(seed=seed)
        self.scale = None if scale is None else float(scale)
        self.feedback_matrices = None
        self._dense = None

    def build(self, graph):
        self._dense = dense_chain(graph, "PEPITA")
        d_out = output_units(graph, "PEPITA")
        d_in = int(self._dense[0].kernel.shape[0])
        scale = 0.05 * np.sqrt(6.0 / d_in) if self.scale is None else self.scale
        value = self.seed_for(0).uniform(-scale, scale, size=(d_out, d_in))
        value = value.astype("float32")
        self.feedback_matrices = {"input": self.add_state_variable(value, "feedback_input")}
        # The hidden block outputs are recorded (not cut) in both passes.
        self.points = [b.point for b in graph.blocks[:-1]]

    def transport(self, layer, kernels):
        return None

    def layer_rule(self, name):
        """The rule layer ``name`` trains with, for :func:`credit.summary`."""
        if self._dense and self._dense[-1].name == name:
            return "h'_{L-1}^T e (input from the modulated pass, no backward pass)"
        return "h'_{l-1}^T (h_l - h'_l) (two forward passes, no backward pass)"

    def signals(self, trace):
        raise_no_signals(self)

    def update(self, trace, signals):
        return {}

    def updates(self, first, second, x_mod):
        """The weight updates from two traces (the passes on ``x`` and ``x + e F``).

        Returns a dict from each variable's ``id`` to its update (unscaled).
        """
        e = ops.cast(flat(first.output_error()), "float32")
        batch = ops.cast(ops.shape(e)[0] * sg.replicas(), "float32")
        points = list(self.points)
        inputs = [x_mod] + [ops.cast(flat(second.outputs[p]), "float32") for p in points]
        out = {}
        for l, layer in enumerate(self._dense):
            if l < len(points):
                p = points[l]
                delta = (ops.cast(flat(first.outputs[p]), "float32")
                         - ops.cast(flat(second.outputs[p]), "float32")) / batch
            else:
                delta = e  # the loss's batch mean is already in e
            out[id(layer.kernel)] = ops.matmul(ops.transpose(inputs[l]), delta)
            if layer.use_bias:
                out[id(layer.bias)] = ops.sum(delta, axis=0)
        return out

    def compute_gradients(self, model, x, y=None, sample_weight=None, *, loss_fn=None,
                          training=True):
        """PEPITA's updates for one batch, aligned with ``model.trainable_variables``.

        Called by :func:`credit.compute_gradients` in place of its backward pass (on
        JAX, by the step, with the model's variables mapped to the step's values).
        """
        from credit import model as engine

        engine.bind(self, model, inputs=x)
        first = engine.record(model, x, y, sample_weight, method=self, training=training,
                              loss_fn=loss_fn, cut=False, use_transports=False)
        e = ops.cast(flat(first.output_error()), "float32")
        batch = ops.cast(ops.shape(e)[0] * sg.replicas(), "float32")
        x = ops.convert_to_tensor(x)
        modulation = ops.matmul(e * batch, self.feedback_matrices["input"])
        x_mod = ops.cast(flat(x), "float32") + modulation
        second = engine.record(model, ops.cast(ops.reshape(x_mod, ops.shape(x)), x.dtype),
                               y, sample_weight, method=self, training=training,
                               loss_fn=loss_fn, cut=False, use_transports=False)
        updates = self.updates(first, second, x_mod)
        scale = engine._scale(model, ops.convert_to_tensor(1.0))
        gradients = []
        for v in model.trainable_variables:
            g = updates.get(id(v))
            gradients.append(None if g is None else ops.cast(g * scale, v.dtype))
        return engine.Gradients(gradients, first.loss, first.y_pred, {})


def dense_chain(graph, method):
    """The Dense layers of a chain of Dense blocks, in order; a GraphError naming the
    first layer that does not fit."""
    allowed = (keras.layers.Dense, keras.layers.Flatten, keras.layers.Activation,
               keras.layers.Reshape, keras.layers.ReLU, keras.layers.Softmax,
               keras.layers.LeakyReLU, keras.layers.ELU, keras.layers.InputLayer)
    for node in graph.units:
        layer = node.layer
        if isinstance(layer, _RANDOM):
            raise GraphError(
                f"{method} cannot train layer {layer.name!r} ({type(layer).__name__}): it "
                "draws random numbers in training, so the two forward passes would differ "
                "by them. Remove it, or use another method.")
        if not isinstance(layer, allowed):
            raise GraphError(
                f"{method} trains chains of Dense layers only; layer {layer.name!r} is a "
                f"{type(layer).__name__}. Use a Dense chain, or another method (e.g. "
                "'dfa', 'forward_gradient').")
    if not graph.is_chain():
        raise GraphError(f"{method} trains chains of Dense layers only; model "
                         f"{graph.model.name!r} branches or merges. Use another method.")
    dense = [b.head for b in graph.blocks]
    for layer in dense:
        if not isinstance(layer, keras.layers.Dense) or len(layer.kernel.shape) != 2:
            raise GraphError(f"{method} needs Dense layers on flat inputs; layer "
                             f"{layer.name!r} is not.")
    for b in graph.blocks:
        if len(b.output_shape or ()) != 1:
            raise GraphError(f"{method} needs flat block outputs; block of layer "
                             f"{b.head.name!r} outputs shape {b.output_shape}.")
    return dense
