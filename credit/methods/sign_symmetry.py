"""Sign symmetry (BioTorch's uSF): the backward pass through the signs of the weights."""

from credit import transports
from credit.methods import _sign
from credit.registry import register
from credit.signal import ErrorSignal, transported_layers


@register
class SignSymmetry(ErrorSignal):
    """Sign symmetry (Liao, Leibo & Poggio 2016, "How Important Is Weight Symmetry in
    Backpropagation?", AAAI; Xiao, Chen, Liao & Poggio 2018, "Biologically-Plausible
    Learning Algorithms Can Scale to Large Datasets", arXiv:1811.03567), in the form of
    BioTorch's "uSF" (Sanfiz & Akrout 2021, "Benchmarking the Accuracy and Robustness of
    Feedback Alignment Algorithms", arXiv:2108.13446).

    The backward pass crosses every weighted layer's linear op with ``B = s * sign(W)``
    instead of ``W``: for a Dense layer ``delta_in = g (s sign(W))^T``; for a
    convolution the transposed convolution with ``s sign(W)``. ``sign(W)`` is read from
    the current kernel at every step, so the feedback follows the weights' signs but
    not their magnitudes. Everything else in the backward pass is the true one and each
    layer's weight gradient is its own local one. Removes the transport of weight
    magnitudes.

    The scale ``s`` is BioTorch's: ``s = sqrt(2 / (fan_in + fan_out))``, the standard
    deviation of a Glorot (Xavier) initialisation of the kernel, computed once, when the
    method is bound, from the kernel's shape with PyTorch's fans (a convolution's include
    its kernel size; other layer types: see ``credit.methods._sign``). It keeps the
    backward signal at the size a Glorot-initialised ``W`` would give (Xiao et al.'s
    reason for it); it does not follow ``W``'s norm during training.

    Args:
        seed: unused (nothing is random); kept so that every method takes one.
        scale: ``s`` for every layer, in place of the Glorot standard deviation
            (``scale=1`` is plain ``sign(W)``, Liao et al.'s form).
        layers: names of the layers to cross with signs (default: every Dense,
            EinsumDense and convolution whose input gradient is used, and every
            recurrent layer: its input and recurrent kernels, at every step).

    Attributes:
        scales: dict from layer name to its ``s`` (a tuple of two for a separable
            convolution: depthwise, pointwise), after the method is bound.

    Example:
        >>> model.compile(optimizer="sgd", loss="mse", method="usf")   # doctest: +SKIP
        >>> model.method.scales                                        # doctest: +SKIP
        {'dense_1': 0.2886..., 'dense_2': 0.3162...}
    """

    name = "sign_symmetry"
    aliases = ("usf",)
    transport_rule = "s sign(W) (signs of the current W, Glorot-std scale)"

    def __init__(self, seed=None, scale=None, layers=None):
        super().__init__(seed=seed)
        self.scale = _sign.check_scale(scale)
        self.layers = _sign.check_layers(layers)
        self.scales = None
        self._scales = None

    def build(self, graph):
        self.transported = transported_layers(graph, self.layers)
        scales = {}
        for name in self.transported:
            layer = graph.layers[name]
            count = len(transports.kernels(layer))  # a clear error for other types
            scales[name] = tuple(
                _sign.glorot_std(layer, j) if self.scale is None else self.scale
                for j in range(count))
        self.scales = {n: s[0] if len(s) == 1 else s for n, s in scales.items()}
        self._scales = scales

    def transport(self, layer, kernels):
        return tuple(_sign.signed(s, k) for s, k in zip(self._scales[self.graph.name_of(layer)], kernels))

    def signals(self, trace):
        return {}

    def update(self, trace, signals):
        return {}
