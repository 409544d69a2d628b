"""Feedback alignment: the backward pass through fixed random matrices."""

from credit import transports
from credit.registry import register
from credit.signal import ErrorSignal, transported_layers, uniform_feedback


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

    Layers whose input gradient nothing uses (the first layer) get no matrix. Recurrent
    layers are crossed with their true weights (backpropagation through time inside);
    ``credit.summary`` lists what each layer trains with.

    Args:
        seed: seed of the feedback matrices (None: drawn from numpy's global state).
        scale: the matrices are uniform in ``±scale``; default ``1/sqrt(d)``, d the
            number of terms each backward sum has (units of a Dense layer; filters x
            kernel size of a convolution).
        layers: names of the layers to cross with feedback matrices (default: every
            Dense, EinsumDense and convolution whose input gradient is used).

    Attributes:
        feedback_matrices: dict from layer name to its non-trainable ``B`` (shaped like
            the kernel; a (depthwise, pointwise) pair for separable convolutions).

    Example:
        >>> model.compile(optimizer="adam", loss="mse", method="fa")  # doctest: +SKIP
        >>> model.method.feedback_matrices["dense_1"].shape          # doctest: +SKIP
    """

    name = "feedback_alignment"
    aliases = ("fa",)
    transport_rule = "B (fixed random, shaped like W)"

    def __init__(self, seed=None, scale=None, layers=None):
        super().__init__(seed=seed)
        self.scale = scale
        self.layers = None if layers is None else list(layers)
        self.feedback_matrices = None

    def build(self, graph):
        self.transported = transported_layers(graph, self.layers)
        self.feedback_matrices = {}
        for i, name in enumerate(self.transported):
            layer = graph.layers[name]
            matrices = []
            for j, kernel in enumerate(transports.kernels(layer)):
                value = uniform_feedback(self.seed_for(i, j), tuple(kernel.shape),
                                         transports.fan_in(layer, j), self.scale)
                matrices.append(self.add_state_variable(value, f"feedback_{i}_{j}"))
            self.feedback_matrices[name] = matrices[0] if len(matrices) == 1 else tuple(matrices)

    def transport(self, layer, kernels):
        matrices = self.feedback_matrices[layer.name]
        return matrices if isinstance(matrices, tuple) else (matrices,)

    def signals(self, trace):
        return {}

    def update(self, trace, signals):
        return {}
