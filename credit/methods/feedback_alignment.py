"""Feedback alignment: the backward pass through fixed random matrices."""

from credit.methods import _sign
from credit.registry import register
from credit.signal import ErrorSignal, random_kernels, transported_layers


@register
class FeedbackAlignment(ErrorSignal):
    """Feedback alignment (Lillicrap et al. 2016, "Random synaptic feedback weights
    support error backpropagation for deep learning", Nature Communications).

    The backward pass crosses every weighted layer's linear op with a fixed random
    ``B`` shaped like its kernel ``W`` instead of ``W`` itself: for a Dense layer,
    ``delta_in = g B^T`` with ``g`` the signal at its pre-activation; for a convolution
    the transposed convolution with ``B``. Everything else in the backward pass
    (activation, normalisation, pooling derivatives, residual additions) is the true
    one, and each layer's weight gradient is its own local one. Removes weight transport.

    Layers whose input gradient nothing uses (the first layer) get no matrix. Inside a
    SimpleRNN, GRU or LSTM layer (also Bidirectional, stacked) the input kernel and the
    recurrent kernel each have their own ``B``, crossed at every step of the backward
    pass through time (``credit.recurrent_transports``); such a layer gets its two
    matrices even as the first layer. ``credit.summary`` lists what each layer trains
    with.

    Args:
        seed: seed of the feedback matrices (None: drawn from numpy's global state).
        scale: the matrices are uniform in ``±scale``; default ``1/sqrt(d)``, d the
            number of terms each backward sum has (units of a Dense layer; kernel size
            x filters / groups of a convolution; see ``credit.transports.fan_in``).
        layers: names of the layers to cross with feedback matrices (default: every
            Dense, EinsumDense and convolution whose input gradient is used, and every
            recurrent layer).

    Attributes:
        feedback_matrices: dict from layer name to its non-trainable ``B`` (shaped like
            the kernel; a (depthwise, pointwise) pair for separable convolutions; an
            (input, recurrent) pair per cell for a recurrent layer, in the order of
            ``credit.transports.kernel_names``).

    Example:
        >>> model.compile(optimizer="adam", loss="mse", method="fa")  # doctest: +SKIP
        >>> model.method.feedback_matrices["dense_1"].shape          # doctest: +SKIP
    """

    name = "feedback_alignment"
    aliases = ("fa",)
    transport_rule = "B (fixed random, shaped like W)"

    def __init__(self, seed=None, scale=None, layers=None):
        super().__init__(seed=seed)
        self.scale = _sign.check_scale(scale)
        self.layers = _sign.check_layers(layers)

    def build(self, graph):
        self.transported = transported_layers(graph, self.layers)
        self.feedback_matrices = random_kernels(self, graph, self.scale)

    def transport(self, layer, kernels):
        matrices = self.feedback_matrices[self.graph.name_of(layer)]
        return matrices if isinstance(matrices, tuple) else (matrices,)

    def signals(self, trace):
        return {}

    def update(self, trace, signals):
        return {}
