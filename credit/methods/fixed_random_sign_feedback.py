"""Fixed random-magnitude sign-concordant feedback (BioTorch's frSF)."""

import numpy as np

from credit import transports
from credit.methods import _sign
from credit.registry import register
from credit.signal import ErrorSignal, transported_layers


@register
class FixedRandomSignFeedback(ErrorSignal):
    """Fixed random-magnitude sign-concordant feedback, "frSF" (Liao, Leibo & Poggio
    2016, "How Important Is Weight Symmetry in Backpropagation?", AAAI; as implemented
    in BioTorch, Sanfiz & Akrout 2021, "Benchmarking the Accuracy and Robustness of
    Feedback Alignment Algorithms", arXiv:2108.13446).

    The backward pass crosses every weighted layer's linear op with
    ``B = |M| * sign(W)``: the signs of the current kernel (read at every step) with
    fixed random magnitudes ``|M|``, drawn once from a Glorot (Xavier) uniform
    distribution, ``M ~ U(-a, a)`` with ``a = sqrt(6 / (fan_in + fan_out))`` and
    PyTorch's fans of the kernel (a convolution's include its kernel size; other layer
    types: see ``credit.methods._sign``), as BioTorch's ``xavier_uniform_``. No other
    scale is applied (BioTorch applies none): the magnitudes' root mean square is the
    Glorot standard deviation ``sqrt(2 / (fan_in + fan_out))``, uSF's scale.
    Everything else in the backward pass is the true one and each layer's weight
    gradient is its own local one. Removes the transport of weight magnitudes.

    Args:
        seed: seed of the magnitudes (None: drawn from numpy's global state).
        layers: names of the layers to cross (default: every Dense, EinsumDense and
            convolution whose input gradient is used, and every recurrent layer: its
            input and recurrent kernels, at every step).

    Attributes:
        magnitudes: dict from layer name to its non-trainable ``|M|`` (shaped like the
            kernel; a (depthwise, pointwise) pair for separable convolutions).

    Example:
        >>> model.compile(optimizer="sgd", loss="mse", method="frsf")  # doctest: +SKIP
    """

    name = "fixed_random_sign_feedback"
    aliases = ("frsf",)
    transport_rule = "|M| sign(W) (M fixed random, Glorot uniform)"

    def __init__(self, seed=None, layers=None):
        super().__init__(seed=seed)
        self.layers = _sign.check_layers(layers)
        self.magnitudes = None

    def build(self, graph):
        self.transported = transported_layers(graph, self.layers)
        self.magnitudes = {}
        for i, name in enumerate(self.transported):
            layer = graph.layers[name]
            values = []
            for j, kernel in enumerate(transports.kernels(layer)):
                limit = _sign.glorot_limit(layer, j)
                draw = self.seed_for(i, j).uniform(-limit, limit, size=tuple(kernel.shape))
                values.append(self.add_state_variable(np.abs(draw), f"magnitude_{i}_{j}"))
            self.magnitudes[name] = values[0] if len(values) == 1 else tuple(values)

    def transport(self, layer, kernels):
        magnitudes = self.magnitudes[self.graph.name_of(layer)]
        if not isinstance(magnitudes, tuple):
            magnitudes = (magnitudes,)
        return tuple(_sign.signed(m, k) for m, k in zip(magnitudes, kernels))

    def signals(self, trace):
        return {}

    def update(self, trace, signals):
        return {}
