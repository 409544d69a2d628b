"""F³: direct feedback alignment with each example's error from the previous epoch."""

import keras
import numpy as np
from keras import ops

from credit import _keras_compat as compat
from credit import backends
from credit.graph import size_of
from credit.methods import _sign
from credit.methods import _synthesizers as sg
from credit.registry import register
from credit.signal import (ErrorSignal, hidden_points, project, require_one_output,
                           uniform_feedback)


@register
class DelayedFeedback(ErrorSignal):
    """F³, feed-forward with delayed feedback (Flügel, Coquelin, Weiel, Debus, Streit &
    Götz, "Feed-Forward Optimization With Delayed Feedback for Neural Network Training",
    arXiv:2304.13372, 2023, ICONIP 2024; code: Helmholtz-AI-Energy/f3). The paper's
    rule, ``delta h_i = B_i^T e^{t-1}`` with ``e^{t-1}`` the example's error of the
    previous epoch, is read from its abstract and a summary of it; the first epoch and
    the stored quantity follow the authors' code.

    Direct feedback alignment whose signal does not wait for this step's output: at each
    feedback point p, ``delta_p = eps_i B_p / batch`` for example i, where ``eps_i`` is
    the error that the **same example** produced when it was last trained on (in the
    previous epoch), stored per example, and ``B_p`` a fixed random matrix of shape
    ``(units of the output, units of h_p)`` (uniform in ``±1/sqrt(units of the output)``,
    as DFA's). The stored error is the loss gradient at the logits of that example,
    without the batch reduction: ``eps_i = batch * e_i`` with ``e = dL/da_N`` as in
    DFA (``p_i - onehot(y_i)`` for softmax + cross-entropy), so that with a fixed batch
    size the signal is DFA's ``e B_p`` with last epoch's ``e``. Before an example has
    been seen (the first epoch) ``eps_i = -y_i``, its target (one-hot classes, or the
    target itself): the error of an output that predicts nothing. The first epoch is
    then DRTP (up to sign and the ``1/batch``), as in the authors' code, which starts
    its per-example buffer from the targets. The output block trains on its true loss
    gradient; the hidden blocks need neither this step's output nor a backward pass.

    Relation to the authors' code (``f3/training.py``): they store ``target - output``
    ("delayed_error", with a sigmoid output; ``target - softmax(output)`` for
    "delayed_error_softmax") or minus the loss gradient ("delayed_loss"), and start
    from the target. ``eps_i`` here is the negative of their "delayed_error" for
    softmax or sigmoid outputs with cross-entropy (credit's ``e`` has DFA's sign;
    ``B_p`` is symmetric, so the sign is a relabelling of ``B_p``), and the initial
    ``-y`` keeps their first epoch continuous with the later ones.

    Sample weights reach the stored errors (``e`` includes them), not the initial
    ``-y``. Under ``tf.distribute`` with several replicas the per-example buffer is not
    supported (each replica would write its own rows at the same position).

    **Which example is which.** Keras's ``fit`` does not pass sample indices, so the
    key of an example is its position in the epoch: the method counts the rows it has
    trained on (``state.position``, saved with the model) and example i of a batch is
    entry ``(position + i) mod examples`` of the buffer. That is the same example every
    epoch only when the data come in the same order every epoch and every epoch has
    ``examples`` rows: ``fit(x, y, shuffle=False)`` on arrays with ``examples`` = the
    number of training examples (after ``validation_split``). ``credit.Model.fit``
    refuses array data with ``shuffle=True``, ``steps_per_epoch`` or another number of
    training examples; a ``tf.data.Dataset`` must itself repeat one order (it cannot be
    checked). A custom loop calls :func:`credit.compute_gradients` on the batches in
    the same order every epoch.

    Args:
        examples: the number of training examples per epoch (the size of the buffer of
            stored errors). Required to bind the method to a model.
        seed: seed of the feedback matrices (None: drawn from numpy's global state).
        scale: the matrices are uniform in ``±scale``; default ``1/sqrt(units of e)``.
        at: where the points go, as in DFA: ``"stream"`` (default), ``"residuals"``,
            ``"blocks"``, or layer names and block indices.

    Attributes:
        feedback_matrices: dict from point (layer name) to its ``B_p``.
        errors: the stored ``eps`` of every example, ``(examples, units of the
            output)``, a variable on ``state`` (None before binding).
        seen: 1 for the examples whose error is stored, 0 for those still at ``-y``.
        position: rows trained on so far (int64 variable on ``state``).

    Example:
        >>> model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
        ...               method={"name": "f3", "examples": len(x)})  # doctest: +SKIP
        >>> model.fit(x, y, epochs=10, shuffle=False)                   # doctest: +SKIP
    """

    name = "delayed_feedback"
    aliases = ("f3",)
    #: Needs the examples in one order every epoch: left out of ``credit.available()``
    #: (listed by ``credit.available(ordered=True)``).
    ordered_only = True
    point_rule = "eps_i B_p: fixed random projection of example i's error from the " \
                 "previous epoch (its target -y_i before it was seen)"

    def __init__(self, examples=None, seed=None, scale=None, at=None):
        super().__init__(seed=seed)
        if examples is not None and (not sg.is_int(examples) or examples < 1):
            raise ValueError(f"examples must be a positive integer (the number of training "
                             f"examples per epoch); got {examples!r}.")
        self.examples = None if examples is None else int(examples)
        self.scale = _sign.check_scale(scale)
        self.at = _sign.check_at(at)

    @property
    def errors(self):
        return sg.state_attribute(self, "errors")

    @property
    def seen(self):
        return sg.state_attribute(self, "seen")

    @property
    def position(self):
        return sg.state_attribute(self, "position")

    def build(self, graph):
        if self.examples is None:
            raise ValueError(
                "delayed_feedback (F³) needs examples=: the number of training examples "
                "per epoch, one stored error each; got examples=None. Pass e.g. "
                "method={'name': 'f3', 'examples': len(x_train)} and fit with "
                "shuffle=False.")
        require_one_output(graph, "delayed_feedback (F³) (it stores the error and "
                           "reads the target of one output)")
        d_out = size_of(graph.output_shapes[0])
        self.points = hidden_points(graph, self.at, "at")
        self.feedback_matrices = {}
        for i, name in enumerate(self.points):
            units = graph.point_units(name)
            value = uniform_feedback(self.seed_for(i), (d_out, units), d_out, self.scale)
            self.feedback_matrices[name] = self.add_state_variable(value, f"feedback_{i}")
        state = self.state
        with compat.init_scope():
            state.errors = state.add_weight(
                shape=(self.examples, d_out), dtype="float32", name="errors",
                initializer="zeros", trainable=False)
            state.seen = state.add_weight(
                shape=(self.examples,), dtype="float32", name="seen",
                initializer="zeros", trainable=False)
            state.position = state.add_weight(
                shape=(), dtype=backends.counter_dtype(), name="position",
                initializer="zeros", trainable=False)

    def transport(self, layer, kernels):
        return None

    # -- the per-example buffer --------------------------------------------------------

    def rows(self, batch):
        """The buffer entries of this step's ``batch`` rows: ``(position + i) mod
        examples``, an integer vector (int64 on TensorFlow, int32 on JAX)."""
        start = ops.convert_to_tensor(self.state.position)
        return (start + ops.arange(batch, dtype=start.dtype)) % self.examples

    def stored_errors(self, trace):
        """``eps`` of this step's examples, ``(batch, units)``: the stored error of each
        example seen before, ``-y`` for the others."""
        y = trace.labels()
        idx = self.rows(ops.shape(y)[0])
        stored = ops.take(ops.convert_to_tensor(self.state.errors), idx, axis=0)
        seen = ops.take(ops.convert_to_tensor(self.state.seen), idx, axis=0)[:, None]
        return ops.where(seen > 0, ops.cast(stored, y.dtype), -y)

    def signals(self, trace):
        if not trace.points:
            return {}
        eps = self.stored_errors(trace)
        batch = ops.cast(ops.shape(eps)[0], eps.dtype)
        return project(eps / batch, self.feedback_matrices, trace)

    def update(self, trace, signals):
        """Store this step's error of each example (for its next epoch); advance the
        position."""
        e = ops.cast(trace.flat_output_error(), "float32")
        batch = ops.shape(e)[0]
        idx = self.rows(batch)[:, None]
        state = self.state
        state.errors.assign(ops.scatter_update(
            ops.convert_to_tensor(state.errors), idx, e * ops.cast(batch, e.dtype)))
        state.seen.assign(ops.scatter_update(
            ops.convert_to_tensor(state.seen), idx, ops.ones((batch,), "float32")))
        state.position.assign_add(ops.cast(batch, state.position.dtype))
        return {}

    # -- fit's checks --------------------------------------------------------------------

    def check_fit(self, given):
        """Refuse ``fit`` arguments under which an example's position in the epoch is
        not its key (called by ``credit.Model.fit`` with fit's arguments, a dict)."""
        x = given.get("x")
        if x is None or _is_dataset(x) or not _is_array(x):
            return  # the dataset makes the batches: its order cannot be checked
        if given.get("shuffle", True):
            raise ValueError(
                "shuffle=True (Keras's default): delayed_feedback (F³) keys each "
                "example's stored error by its position in the epoch, so the examples "
                "must come in the same order every epoch. Pass shuffle=False (shuffle "
                "the training set once, before fit, if you want a random order).")
        if given.get("steps_per_epoch") is not None:
            raise ValueError(
                f"steps_per_epoch={given['steps_per_epoch']}: delayed_feedback (F³) "
                "needs every epoch to pass over all its training examples once. Leave "
                "steps_per_epoch out.")
        n = len(keras.tree.flatten(x)[0])
        split = given.get("validation_split") or 0.0
        if given.get("validation_data") is None and split:
            n = int(np.floor(n * (1.0 - split)))  # as Keras splits
        if n != self.examples:
            raise ValueError(
                f"x: fit trains on {n} examples per epoch"
                f"{' (after validation_split)' if split else ''}, but the method was "
                f"made with examples={self.examples}; each example needs its own stored "
                f"error. Make the method with examples={n}.")


def _is_dataset(x):
    """A ``tf.data.Dataset`` or a Keras ``PyDataset`` (without importing TensorFlow)."""
    return (isinstance(x, keras.utils.PyDataset)
            or type(x).__module__.startswith("tensorflow.python.data"))


def _is_array(x):
    return (isinstance(x, (np.ndarray, list, tuple, dict)) or hasattr(x, "__array__")
            or ops.is_tensor(x))
