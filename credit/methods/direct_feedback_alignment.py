"""Direct feedback alignment: the output error sent straight to every hidden block."""

from credit.methods import _per_step, _sign
from credit.registry import register
from credit.signal import (ErrorSignal, hidden_points, output_error_units, project,
                           uniform_feedback)


@register
class DirectFeedbackAlignment(ErrorSignal):
    """Direct feedback alignment (Nøkland 2016, "Direct Feedback Alignment Provides
    Learning in Deep Neural Networks", NeurIPS).

    ``delta_p = e B_p`` at each feedback point p, with ``e = dL/da_N`` the loss gradient
    at the model's logits (for softmax + cross-entropy ``(p - onehot(y)) / batch``),
    flattened per example, and ``B_p`` a fixed random matrix of shape
    ``(units of e, units of h_p)``; the result is reshaped to ``h_p``'s shape, so
    convolutional, recurrent and attention blocks work too. A model with several outputs
    has one ``e``: the errors of all its outputs, each flattened, concatenated (an output
    without a loss contributes zeros). The backward pass is cut at every point: a block's
    weights learn from its own point's signal, pushed through its own nonlinearity. The
    output blocks get the true loss gradient. Removes weight transport and backward
    locking.

    Args:
        seed: seed of the feedback matrices (None: drawn from numpy's global state).
        scale: the matrices are uniform in ``±scale``; default ``1/sqrt(units of e)``.
        at: where the points go. ``"stream"`` (the default, also None): on the
            residual stream, one point where it leaves each residual block (after the
            merge and the normalisation or activation that follows it; a transformer
            block's attention and feed-forward sublayers count as one block, as in
            LightOn's transformer experiments), and one at every other hidden block's
            output (a plain chain: every block). ``"residuals"``: one after every
            residual merge. ``"blocks"``: every hidden block's output, residual
            branches included. Or layer names and block indices (see
            ``credit.summary``).
            A layer called several times (a shared encoder, the layer inside a
            TimeDistributed) gets a point, and a matrix, per call: ``"name:0"``,
            ``"name:1"``, ... (naming the layer means all of its calls).
        through_time: on a sequence model with a loss at every step, how the signal
            meets time. ``"eprop"`` (the default there, also None): per step, as
            "random e-prop" (Bellec et al. 2020, Nat. Commun. 11:3625): each step's
            error ``e_t`` is projected to that step's hidden state, ``delta_t = e_t
            B_p`` (one ``B_p`` of shape ``(units of e per step, units of h_p per
            step)``, uniform in ``±1/sqrt(units of e per step)``, shared by the steps),
            and the recurrent layers under the points drop every path through time
            that crosses their recurrent kernel. What that leaves is e-prop's
            eligibility trace: for a SimpleRNN nothing (a step's weight gradient is
            its input ``[x_t, h_{t-1}]`` times ``delta_t * phi'(a_t)``: no
            backward pass through time); for an LSTM the carry ``c_{t-1} -> c_t``
            through the forget gate (its gates read ``h_{t-1}`` only through the
            recurrent kernel, which is cut, as in the authors' LSTM code, which stops
            the gradient at ``h_{t-1}``); for a GRU the elementwise ``z_t * h_{t-1}``.
            The layer's input keeps its true gradient (the authors' code stops it
            too; it matters only for a layer below without a point of its own).
            ``"per_step"``: the same signals, every state cut (an LSTM's carry and a
            GRU's ``z_t * h_{t-1}`` too). ``"bptt"``: the whole sequence at once, as
            on any other model: ``e`` is the whole sequence's error, ``B_p`` of shape
            ``(T x units of e per step, T x units of h_p per step)``, and Keras
            backpropagates through time inside the recurrent layers. None is
            ``"eprop"`` where it applies (every output and point has the same time
            axis, and a recurrent layer with ``return_sequences=True`` lies under the
            points) and ``"bptt"`` elsewhere; an explicit ``"eprop"`` or
            ``"per_step"`` where it does not apply is an error. See
            ``credit.summary`` for what each layer does.

    Attributes:
        feedback_matrices: dict from point (layer name) to its non-trainable ``B_p``.
        through_time_mode: what ``through_time`` resolved to on the model
            (``"eprop"``, ``"per_step"`` or ``"bptt"``; None before binding).

    Example:
        >>> model.compile(optimizer="adam", loss="mse", method="dfa")  # doctest: +SKIP

        A sequence-to-sequence model trains per step, as random e-prop:

        >>> model = credit.Sequential([keras.Input((20, 8)),
        ...                            keras.layers.LSTM(32, return_sequences=True),
        ...                            keras.layers.Dense(4)])    # doctest: +SKIP
        >>> model.compile("adam", keras.losses.SparseCategoricalCrossentropy(
        ...     from_logits=True), method="dfa")                  # doctest: +SKIP
        >>> model.method.through_time_mode                        # doctest: +SKIP
        'eprop'
    """

    name = "direct_feedback_alignment"
    aliases = ("dfa",)
    point_rule = "e B_p (fixed random projection of the output error)"

    def __init__(self, seed=None, scale=None, at=None, through_time=None):
        super().__init__(seed=seed)
        self.scale = _sign.check_scale(scale)
        self.at = _sign.check_at(at)
        self.through_time = _per_step.check_through_time(through_time)
        self._time = _per_step.Resolved(None)  # resolved on the model in build

    @property
    def through_time_mode(self):
        return self._time.mode

    def build(self, graph):
        d_out = output_error_units(graph)
        self.points = hidden_points(graph, self.at, "at")
        self._time = _per_step.resolve(graph, self.points, self.through_time)
        self.intercepted = self._time.layers
        self.point_rule = type(self).point_rule
        if self._time.per_step:
            self.point_rule = ("e_t B_p at every step t (fixed random projection of "
                               f"each step's output error; {self._time.mode})")
        shapes = _per_step.matrix_shapes(graph, self._time, self.points, d_out)
        self.feedback_matrices = {}
        for i, name in enumerate(self.points):
            shape = shapes[name]
            value = uniform_feedback(self.seed_for(i), shape, shape[0], self.scale)
            self.feedback_matrices[name] = self.add_state_variable(value, f"feedback_{i}")

    def intercept(self, layer, call, args, kwargs, records):
        return _per_step.intercept(self._time, layer, call, args, kwargs)

    def through_time_rule(self, name):
        """What the backward pass does through time inside recurrent layer ``name``
        (None: Keras's backprop through time)."""
        return _per_step.cut_rule(self._time, name, self.graph)

    def transport(self, layer, kernels):
        return None

    def signals(self, trace):
        if not trace.points:
            # No hidden block (e.g. one Dense layer, or no weights at all): nothing to
            # project, and the output layer trains on its true gradient.
            return {}
        if self._time.per_step:
            return _per_step.project(_per_step.errors(trace, self._time.steps),
                                     self.feedback_matrices, trace)
        return project(trace.flat_output_error(), self.feedback_matrices, trace)

    def update(self, trace, signals):
        return {}
