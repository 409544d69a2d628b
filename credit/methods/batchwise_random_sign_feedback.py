"""Batchwise random-magnitude sign-concordant feedback (BioTorch's brSF)."""

import keras

from credit import _keras_compat as compat
from credit import backends, transports
from credit.methods import _sign
from credit.registry import register
from credit.signal import ErrorSignal, transported_layers


@register
class BatchwiseRandomSignFeedback(ErrorSignal):
    """Batchwise random-magnitude sign-concordant feedback, "brSF" (Liao, Leibo & Poggio
    2016, "How Important Is Weight Symmetry in Backpropagation?", AAAI; as implemented
    in BioTorch, Sanfiz & Akrout 2021, "Benchmarking the Accuracy and Robustness of
    Feedback Alignment Algorithms", arXiv:2108.13446).

    The backward pass crosses every weighted layer's linear op with
    ``B = |M_t| * sign(W)``: the signs of the current kernel with random magnitudes
    redrawn at every training step t, ``M_t ~ U(-a, a)`` with
    ``a = sqrt(6 / (fan_in + fan_out))`` and PyTorch's fans of the kernel (a
    convolution's include its kernel size; other layer types: see
    ``credit.methods._sign``), as BioTorch's ``xavier_uniform_``. No other scale is
    applied (BioTorch applies none). Everything else in the backward pass is the true
    one and each layer's weight gradient is its own local one. Removes the transport of
    weight magnitudes.

    The draws are stateless: ``M_t`` of a layer is a function of the method's seed (a
    state variable), the step counter ``step`` (a state variable, advanced after each
    training step) and the layer's position. So runs are reproducible, the same eagerly
    and inside ``tf.function``, and a model saved and loaded continues the same
    sequence of draws. (BioTorch redraws at every forward call; only training steps
    use the feedback here, so only they advance the counter.)

    Args:
        seed: seed of the draws (None: drawn from numpy's global state, then kept in
            the method's state).
        layers: names of the layers to cross (default: every Dense, EinsumDense and
            convolution whose input gradient is used, and every recurrent layer: its
            input and recurrent kernels, at every step).

    Attributes:
        step: the number of training steps taken (a non-trainable int64 variable; int32
            on the JAX backend).

    Example:
        >>> model.compile(optimizer="sgd", loss="mse", method="brsf")  # doctest: +SKIP
        >>> model.method.draw(model.layers[1].name)    # this step's |M_t|  # doctest: +SKIP
    """

    name = "batchwise_random_sign_feedback"
    aliases = ("brsf",)
    transport_rule = "|M_t| sign(W) (M_t random, Glorot uniform, redrawn each step)"

    def __init__(self, seed=None, layers=None):
        super().__init__(seed=seed)
        self.layers = _sign.check_layers(layers)
        self.step = None
        self._seed_variable = None
        self._kernels = None

    def build(self, graph):
        self.transported = transported_layers(graph, self.layers)
        kernels, k = {}, 0
        for name in self.transported:
            layer = graph.layers[name]
            entries = []
            for j, kernel in enumerate(transports.kernels(layer)):
                entries.append((k, tuple(kernel.shape), _sign.glorot_limit(layer, j)))
                k += 1
            kernels[name] = entries
        self._kernels = kernels
        base = int(self.seed_for("batchwise_random_sign_feedback").integers(0, 2**31 - 1))
        with compat.init_scope():
            self._seed_variable = self.state.add_weight(
                shape=(), dtype=backends.counter_dtype(), name="seed", trainable=False,
                initializer=keras.initializers.Constant(base),
                aggregation="only_first_replica")
            self.step = self.state.add_weight(
                shape=(), dtype=backends.counter_dtype(), name="step", trainable=False,
                initializer="zeros", aggregation="only_first_replica")

    def draw(self, name, step=None):
        """The magnitudes ``|M_t|`` of layer ``name`` at step ``step`` (default: now).

        A tuple with one tensor per kernel (two for a separable convolution).
        """
        if self._kernels is None:
            raise ValueError("the method is not bound to a model yet: compile the model "
                             "with it (or take a training step) first.")
        if name not in self._kernels:
            raise ValueError(f"layer {name!r} is not crossed by brSF; its layers: "
                             f"{list(self._kernels)}.")
        step = self.step if step is None else step
        out = []
        for k, shape, limit in self._kernels[name]:
            m = backends.stateless_uniform(shape, self._seed_variable, step, k, -limit, limit)
            out.append(keras.ops.abs(m))
        return tuple(out)

    def transport(self, layer, kernels):
        return tuple(_sign.signed(m, w) for m, w in zip(self.draw(self.graph.name_of(layer)), kernels))

    def signals(self, trace):
        return {}

    def update(self, trace, signals):
        self.step.assign_add(1)
        return {}
