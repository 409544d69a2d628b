"""Synthetic gradients through time for stateful recurrent layers (DNI's recurrent case).

Truncated backpropagation through time in Keras: a ``stateful=True`` recurrent layer
(LSTM, GRU, SimpleRNN; fixed batch size) trained with ``fit(shuffle=False)`` over
consecutive windows of a long sequence (:func:`credit.data.tbptt_windows`). The state is
carried from one window to the next; the gradient is not: whatever the state at a
window's end does to the loss of later windows is lost.

Jaderberg et al. 2016, "Decoupled Neural Interfaces using Synthetic Gradients" (ICML
2017), §3.2, put a synthesizer ``M`` on that state: at the end of each window, ``M(s_T)``
estimates the gradient of all future loss with respect to the final state ``s_T`` (for
an LSTM, ``h`` and ``c`` together) and is added to the window's backward pass. ``M`` is
trained by bootstrapping: in the next window, the target at that window's initial state
``s_0`` (the same values: the state was carried) is the gradient that reaches ``s_0``
from the window's own loss plus ``M(s_T)`` carried back through the window. With a
stateful layer, ``s_0`` is the state variable read at the start of the step, so the
prediction ``M(s_0)``, the window's forward and backward pass and the target all live in
one training step; the one backward pass gives the weights' gradients and the target.

This module holds the mechanics, as small functions and two helpers that own variables;
the method is :class:`credit.methods.SyntheticGradientsThroughTime`
(``"dni_through_time"``, ``"cdni_through_time"``)::

    import credit, keras
    from credit import data

    w = data.next_step_windows(data.pydoc_text().train, window=5, batch_size=32)
    model = credit.Sequential([
        keras.Input(batch_shape=(32, 5)),
        keras.layers.Embedding(104, 32),
        keras.layers.LSTM(128, stateful=True, return_sequences=True),
        keras.layers.Dense(104),
    ])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  method="dni_through_time")
    model.fit(w, epochs=1)     # a credit.data.Windows: in order, states reset per sequence

- :func:`stateful_layers`: the stateful recurrent layers of a model (clear errors on
  anything else);
- :func:`run_window`: run an intercepted layer from its carried state, recording the
  initial and final state tensors of the window;
- :class:`CarriedState`: the state a layer carried out of the last step, saved with the
  method, which tells a carried row from a reset one and restores the layer's state on
  load (Keras does not save a stateful layer's state);
- :func:`encode_targets`: a window's targets as a ``(batch, units)`` condition (cDNI);
- :class:`StatefulWindows`: a callback that keeps a model in step with
  :class:`credit.data.Windows` (order check, state resets where sequences begin, the
  next window's targets for cDNI);
- :class:`LookaheadCheck`: a callback that stops fit with a clear error when cDNI
  through time lacks the next window's targets;
- :func:`fit_arguments`: what ``credit.Model.fit`` checks and fills in.
"""

import inspect

import keras
import numpy as np

from credit._tensorflow import tf
from credit import _keras_compat as compat
from credit.data.windows import Windows
from credit.graph import GraphError

__all__ = ["CarriedState", "LookaheadCheck", "StatefulWindows", "Window", "encode_targets",
           "fit_arguments", "run_window", "state_units", "stateful_layers"]


# --------------------------------------------------------------------------------------
# Which layers


def _recurrent_units(graph):
    """Recurrent layers among the model's units, in call order (each call once)."""
    seen, names = set(), []
    for node in graph.units:
        layer = node.layer
        if isinstance(layer, (keras.layers.RNN, keras.layers.Bidirectional)) \
                and layer.name not in seen:
            seen.add(layer.name)
            names.append(layer.name)
    return names


def stateful_layers(graph, names=None, argument="at"):
    """The stateful recurrent layers that synthetic gradients through time act on.

    Args:
        graph: the model's :class:`credit.graph.Graph`.
        names: layer names to use (None: every stateful recurrent layer).
        argument: the name of the argument ``names`` came from, for messages.

    Returns:
        The layer names, in call order.

    Raises:
        GraphError: the model has no stateful ``keras.layers.RNN`` (LSTM, GRU,
            SimpleRNN), a named layer is not one, is bidirectional, or is called more
            than once per forward pass; the message says what to change.

    Example:
        >>> stateful_layers(model.method.graph)              # doctest: +SKIP
        ['lstm']
    """
    recurrent = _recurrent_units(graph)
    fix = ("give the recurrent layer stateful=True and the model a fixed batch size, "
           "e.g. keras.Input(batch_shape=(32, steps, features)) and "
           "keras.layers.LSTM(128, stateful=True, return_sequences=True), and train "
           "with fit(shuffle=False) on consecutive windows (credit.data.tbptt_windows)")
    if names is None:
        chosen = [n for n in recurrent if getattr(graph.layers[n], "stateful", False)]
        if not chosen:
            if not recurrent:
                raise GraphError(
                    f"synthetic gradients through time need a stateful recurrent layer, "
                    f"but model {graph.model.name!r} has no recurrent layer (LSTM, GRU, "
                    f"SimpleRNN). Add one and {fix}; or use the method 'synthetic_gradients' "
                    "(synthetic gradients between layers).")
            raise GraphError(
                f"synthetic gradients through time need a stateful recurrent layer, but "
                f"the recurrent layers of model {graph.model.name!r} ({recurrent}) have "
                f"stateful=False: the state is not carried from one batch to the next, "
                f"so there is no future to synthesize a gradient for. To fix it, {fix}.")
    else:
        if isinstance(names, str):
            names = [names]
        chosen = []
        for name in names:
            if not isinstance(name, str):
                example = recurrent[:1] or ["lstm"]
                raise GraphError(
                    f"{argument}={list(names)!r}: synthetic gradients through time take "
                    f"the names of stateful recurrent layers, e.g. {example}; got "
                    f"{name!r} of type {type(name).__name__}.")
            if name not in recurrent:
                raise GraphError(
                    f"{argument}={list(names)!r} names {name!r}, which is not a recurrent "
                    f"layer of model {graph.model.name!r}; its recurrent layers: "
                    f"{recurrent}.")
            if not getattr(graph.layers[name], "stateful", False):
                raise GraphError(
                    f"{argument}={list(names)!r} names layer {name!r}, which has "
                    f"stateful=False. To fix it, {fix}.")
            chosen.append(name)
    for name in chosen:
        layer = graph.layers[name]
        if isinstance(layer, keras.layers.Bidirectional):
            raise GraphError(
                f"layer {name!r} is Bidirectional: its backward direction reads the "
                "future, so a window's final state does not carry into the next window. "
                "Synthetic gradients through time need a forward stateful layer.")
        if graph.calls(name) != 1:
            raise GraphError(
                f"layer {name!r} is called {graph.calls(name)} times in one forward pass; "
                "synthetic gradients through time need a stateful layer called once "
                "(one state carried per step).")
        if not getattr(layer, "states", None) or layer.states[0] is None:
            raise GraphError(
                f"the stateful layer {name!r} has no state variables yet; build the model "
                "with a fixed batch size (keras.Input(batch_shape=(batch, steps, "
                "features))).")
        if getattr(layer, "go_backwards", False):
            raise GraphError(
                f"layer {name!r} has go_backwards=True: it reads each window from its "
                "end, so its final state is not where the next window starts. Use "
                "go_backwards=False.")
    return chosen


def state_units(layer):
    """Units of each part of a stateful layer's state (LSTM: ``[units, units]``)."""
    return [int(v.shape[-1]) for v in layer.states]


def state_batch(layer):
    """The batch size a stateful layer was built for."""
    return int(layer.states[0].shape[0])


def model_stateful_layers(model):
    """Every stateful ``keras.layers.RNN`` inside ``model`` (nested models included)."""
    found, stack, seen = [], [model], set()
    while stack:
        layer = stack.pop()
        for sub in compat.sublayers(layer):
            if id(sub) in seen:
                continue
            seen.add(id(sub))
            if isinstance(sub, keras.layers.RNN) and getattr(sub, "stateful", False):
                found.append(sub)
            else:
                stack.append(sub)
    return found


# --------------------------------------------------------------------------------------
# One window


class Window:
    """What :func:`run_window` records of one call of a stateful layer.

    Attributes:
        initial: the state read at the window's start (tensors, one per state part,
            watched on the step's tape: gradients reach them).
        final: the state at the window's end (tensors connected to the window).
        output: the layer's output (its sequence, or last step).
    """

    def __init__(self, initial, final, output):
        self.initial = list(initial)
        self.final = list(final)
        self.output = output


def run_window(layer, call, args, kwargs, records):
    """Run a stateful recurrent layer on one window from its carried state.

    For a method's ``intercept``: reads the layer's state variables (the state carried
    from the previous window), watches them on the step's tape, runs the layer's own
    call with them as its initial state and with ``return_state`` on (so that the
    final state tensors come out connected to the window), and records a
    :class:`Window` under the layer's name in ``records``. The layer still assigns the
    final state to its variables, as a stateful layer does.

    Returns:
        What the layer's call returns for its own ``return_state`` setting.
    """
    if kwargs.get("initial_state") is not None or len(args) > 1:
        raise ValueError(
            f"layer {layer.name!r} was called with an initial_state; synthetic gradients "
            "through time start each window from the state the stateful layer carried, "
            "so call the layer without initial_state.")
    initial = [tf.identity(keras.ops.convert_to_tensor(v)) for v in layer.states]
    records.watch(*initial)
    kwargs = dict(kwargs)
    kwargs["initial_state"] = list(initial)
    own = layer.return_state
    # The final state is only returned as a tensor of the window's graph with
    # return_state; the layer's state variables hold its value but not its history.
    layer.return_state = True
    try:
        result = call(*args, **kwargs)
    finally:
        layer.return_state = own
    output, final = result[0], list(result[1:])
    records[layer.name] = Window(initial, final, output)
    return result if own else output


# --------------------------------------------------------------------------------------
# The carried state


class CarriedState(keras.layers.Layer):
    """The state a stateful layer carried out of the last training step.

    Owned by the method's state, so it is saved with the model. It serves two ends:

    - telling carried rows from reset ones: a row whose state at the start of a step
      is not, bit for bit, the state stored here at the end of the previous step was
      reset (by :class:`StatefulWindows`, ``layer.reset_states()``, an ``evaluate`` or
      ``predict`` call in between...), so the previous window's synthesizer gets no
      bootstrap target from that row;
    - resuming: Keras does not save a stateful layer's state, so on load (its
      ``load_own_variables``) the layer's state variables are set back from here, and
      training continues exactly where it stopped.

    Args:
        layer: the stateful recurrent layer (not tracked: its weights stay the model's).
    """

    def __init__(self, layer, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        batch = state_batch(layer)
        self.finals = [self.add_weight(shape=(batch, units), initializer="zeros",
                                       trainable=False, name=f"final_{k}")
                       for k, units in enumerate(state_units(layer))]
        self.has_previous = self.add_weight(shape=(), initializer="zeros", trainable=False,
                                            name="has_previous")
        # A plain function, not the layer: Keras would track the layer as a sublayer.
        self._states = lambda: list(layer.states)
        self.built = True

    def call(self, inputs):  # pragma: no cover - never called
        raise RuntimeError("CarriedState only holds variables; it is not a layer to call.")

    def carried_rows(self, initial):
        """1.0 for each row whose ``initial`` state is the one stored, else 0.0: ``(batch,)``."""
        same = None
        for value, final in zip(initial, self.finals):
            equal = tf.reduce_all(tf.equal(tf.cast(value, "float32"),
                                           tf.convert_to_tensor(final)), axis=-1)
            same = equal if same is None else tf.logical_and(same, equal)
        return tf.cast(same, "float32") * tf.convert_to_tensor(self.has_previous)

    def remember(self, final):
        """Store the window's final state (call after the step's backward pass)."""
        for variable, value in zip(self.finals, final):
            variable.assign(tf.cast(tf.stop_gradient(value), "float32"))
        self.has_previous.assign(1.0)

    def load_own_variables(self, store):
        super().load_own_variables(store)
        if float(keras.ops.convert_to_numpy(self.has_previous)) > 0:
            for state, final in zip(self._states(), self.finals):
                state.assign(keras.ops.cast(final, state.dtype))


# --------------------------------------------------------------------------------------
# Targets as a condition (cDNI)


def encode_targets(y, output_shape, dtype="float32"):
    """A window's targets as a ``(batch, units)`` tensor, to condition a synthesizer.

    Args:
        y: the targets of a batch: shaped like the model output (one-hot labels,
            regression or bit targets), or integer class ids with the output's shape
            minus its last axis (sparse labels; a trailing axis of 1 is allowed).
        output_shape: the model output's shape without the batch axis.

    Returns:
        ``(batch, prod(output_shape))``: the targets flattened, integer ids one-hot.

    Example:
        >>> encode_targets(np.array([[1, 0]]), (2, 3)).numpy().tolist()
        [[0.0, 1.0, 0.0, 1.0, 0.0, 0.0]]
    """
    y = tf.convert_to_tensor(y)
    shape = tuple(int(d) for d in output_shape)
    given = tuple(y.shape[1:])
    batch = tf.shape(y)[0]
    if given == shape:
        return tf.reshape(tf.cast(y, dtype), (batch, -1))
    if given in (shape[:-1], shape[:-1] + (1,)) and shape:
        ids = tf.cast(tf.reshape(y, (batch, -1)), "int32")
        return tf.reshape(tf.one_hot(ids, shape[-1], dtype=dtype), (batch, -1))
    raise ValueError(
        f"targets of shape {tuple(y.shape)} do not fit a model output of shape "
        f"(batch, {', '.join(map(str, shape))}): cDNI through time conditions on the "
        f"targets, which must be shaped like the output or be integer ids of shape "
        f"(batch, {', '.join(map(str, shape[:-1]))}).")


# --------------------------------------------------------------------------------------
# Feeding windows to fit


def _through_time(method):
    # Imported here: the method's module imports this one.
    from credit.methods.synthetic_gradients_through_time import SyntheticGradientsThroughTime

    return isinstance(method, SyntheticGradientsThroughTime)


class StatefulWindows(keras.callbacks.Callback):
    """Keeps a stateful model in step with :class:`credit.data.Windows` in fit/evaluate.

    - On creation, checks the windows' order markers (``window_index`` and ``row``):
      windows shuffled or reordered after they were laid out are refused.
    - At the start of training, checks that the stateful layers were built for
      ``windows.batch_size`` rows and that each step is one batch
      (``steps_per_execution=1``).
    - Before each batch, resets the state of the rows where a sequence begins
      (``windows.starts`` at the window's first step): a fresh sequence starts from a
      zero state, like the first.
    - For synthetic gradients through time, tells the method before each batch which
      rows go on after it (no synthetic future gradient is injected at the end of a
      sequence: its future is cut by the reset) and, for cDNI, the next window's
      targets (what the synthesizer at this window's end is conditioned on).

    ``credit.Model.fit(windows)`` adds this callback itself.

    Args:
        windows: the :class:`credit.data.Windows` being fed, in order.
        reset: reset states where sequences begin (default). A sequence that begins
            inside a window cannot be reset between batches; with such windows pass
            ``reset=False`` (the model then reads the rows as one continuous stream),
            or lay the sequences out so that each starts at a window (e.g. pad each
            sequence to a multiple of the window length).

    Example:
        >>> w = credit.data.tbptt_sequence_windows(batch, window=4, batch_size=32)
        >>> model.fit(w.inputs, w.targets, batch_size=32, shuffle=False,
        ...           sample_weight=w.mask,
        ...           callbacks=[credit.recurrent.StatefulWindows(w)])  # doctest: +SKIP

    Reference: Jaderberg et al. 2016, "Decoupled Neural Interfaces using Synthetic
    Gradients", §3.2 (truncated BPTT with synthetic gradients at the truncation points).
    """

    def __init__(self, windows, reset=True):
        super().__init__()
        if not isinstance(windows, Windows):
            raise TypeError(
                f"windows must be a credit.data.Windows (from tbptt_windows, "
                f"next_step_windows or tbptt_sequence_windows); got "
                f"{type(windows).__name__}.")
        windows.check_order(windows.window_index, windows.row)
        self.windows = windows
        self.reset = bool(reset)
        if self.reset and windows.starts[:, 1:].any():
            e, t = np.argwhere(windows.starts[:, 1:])[0]
            raise ValueError(
                f"a sequence begins inside a window (example {int(e)}, step {int(t) + 1} "
                f"of {windows.window}): the state can only be reset between batches. Lay "
                "the sequences out so that each begins at a window (pad each to a "
                "multiple of the window length), or pass reset=False to read each row "
                "as one continuous stream.")
        self._fitting = False

    def _layers(self):
        return model_stateful_layers(self.model)

    def on_train_begin(self, logs=None):
        self._fitting = True
        batch = self.windows.batch_size
        for layer in self._layers():
            if layer.states and layer.states[0] is not None and state_batch(layer) != batch:
                raise ValueError(
                    f"batch_size: the windows were laid out for batch_size={batch} rows, "
                    f"but the stateful layer {layer.name!r} was built for "
                    f"{state_batch(layer)}. Lay the data out with batch_size="
                    f"{state_batch(layer)} (credit.data.tbptt_windows(..., batch_size="
                    f"{state_batch(layer)})) or build the model with keras.Input("
                    f"batch_shape=({batch}, ...)).")
        steps = getattr(self.model, "steps_per_execution", 1)
        if steps not in (None, 1):
            raise ValueError(
                f"steps_per_execution={steps}: StatefulWindows resets states and informs "
                "the method before each batch, which needs one batch per step; compile "
                "with steps_per_execution=1.")

    def on_train_end(self, logs=None):
        self._fitting = False

    def _rows(self, i):
        b = self.windows.batch_size
        i = i % self.windows.n_windows
        return slice(i * b, (i + 1) * b)

    def _reset_rows(self, i):
        if not self.reset:
            return
        begins = self.windows.starts[self._rows(i), 0]
        if not begins.any():
            return
        keep = keras.ops.convert_to_tensor((~begins).astype("float32"))
        for layer in self._layers():
            for state in layer.states:
                mask = keras.ops.reshape(keep, (-1,) + (1,) * (len(state.shape) - 1))
                state.assign(keras.ops.cast(state.value * mask, state.dtype))

    def on_train_batch_begin(self, batch, logs=None):
        self._reset_rows(batch)
        method = getattr(self.model, "method", None)
        if not _through_time(method) or method.plan is None:
            return
        w = self.windows
        nxt = batch + 1
        if nxt < w.n_windows:
            rows = self._rows(nxt)
            continues = (~w.starts[rows, 0]).astype("float32") if self.reset else \
                np.ones(w.batch_size, "float32")
            targets = None if w.targets is None else w.targets[rows]
        else:  # the epoch's last window: what follows is the next epoch's start
            continues = np.zeros(w.batch_size, "float32") if self.reset else \
                np.ones(w.batch_size, "float32")
            targets = None if w.targets is None else np.zeros_like(w.targets[self._rows(0)])
        method.set_lookahead(continues=continues, next_targets=targets)

    def on_test_batch_begin(self, batch, logs=None):
        if not self._fitting:  # evaluate(windows): not the validation data of a fit
            self._reset_rows(batch)

    def on_predict_batch_begin(self, batch, logs=None):
        self._reset_rows(batch)


_FIT = inspect.signature(keras.Model.fit)


def fit_arguments(model, args, kwargs):
    """What ``credit.Model.fit`` passes on to ``keras.Model.fit``.

    - ``x`` a :class:`credit.data.Windows`: fed as ``x=inputs, y=targets,
      sample_weight=mask, batch_size=windows.batch_size, shuffle=False``, with a
      :class:`StatefulWindows` callback.
    - Under synthetic gradients through time, array data must come in order
      (``shuffle=False``) in batches of the stateful layers' batch size, a whole
      number of them.

    Returns:
        ``(args, kwargs)``.

    Raises:
        ValueError: naming the argument, the value received and the fix.
    """
    try:
        bound = _FIT.bind(model, *args, **kwargs)
    except TypeError:
        return args, kwargs  # Keras will say what is wrong
    given = dict(bound.arguments)
    given.pop("self", None)
    extra = given.pop("kwargs", {})
    x = given.get("x")
    if isinstance(x, Windows):
        given = _from_windows(x, given)
    method = model.__dict__.get("_credit_method")
    if _through_time(method) and method.plan is not None:
        _check_through_time(method, given)
        if method.conditioned:
            _add_lookahead_check(given)
    check = getattr(method, "check_fit", None)
    if check is not None:
        # Methods that need something of fit's arguments (F³: one order every epoch).
        check({**given, **extra})
    given.update(extra)
    return (), given


def _from_windows(w, given):
    if given.get("y") is not None:
        raise ValueError(
            "y: got targets besides a credit.data.Windows as x; the windows carry their "
            "own targets (windows.targets). Pass fit(windows) without y.")
    if given.get("batch_size") not in (None, w.batch_size):
        raise ValueError(
            f"batch_size={given['batch_size']}: the windows were laid out for "
            f"batch_size={w.batch_size} rows (each batch is window i of every row). Leave "
            "batch_size out, or lay the data out again with the batch size you want.")
    if given.get("shuffle", False) not in (False, None):
        raise ValueError(
            "shuffle=True: windows must reach a stateful layer in order (window i of "
            "every row in batch i). Leave shuffle out when fitting on a credit.data."
            "Windows (it is then False).")
    if given.get("validation_split"):
        raise ValueError(
            f"validation_split={given['validation_split']}: splitting windows would cut "
            "rows in the middle. Lay out validation windows of their own and pass "
            "validation_data=(v.inputs, v.targets, v.mask).")
    given["x"] = w.inputs
    given["y"] = w.targets
    if given.get("sample_weight") is None:
        given["sample_weight"] = w.mask
    given["batch_size"] = w.batch_size
    given["shuffle"] = False
    callbacks = list(given.get("callbacks") or [])
    if not any(isinstance(c, StatefulWindows) for c in callbacks):
        # First, so that the other callbacks see each batch's state after its resets.
        callbacks.insert(0, StatefulWindows(w))
    given["callbacks"] = callbacks
    return given


def _is_array(x):
    return isinstance(x, (np.ndarray, tf.Tensor, list, tuple, dict)) or hasattr(x, "__array__")


def _check_through_time(method, given):
    x = given.get("x")
    if isinstance(x, (tf.data.Dataset, keras.utils.PyDataset)) or not _is_array(x):
        return  # batches come as the dataset makes them; Keras checks their size
    if given.get("shuffle", True):
        raise ValueError(
            "shuffle=True (Keras's default): synthetic gradients through time need the "
            "windows in order, so that each batch continues the previous one row by row. "
            "Pass shuffle=False (and lay the data out with credit.data.tbptt_windows), "
            "or fit on a credit.data.Windows directly: model.fit(windows).")
    layer = method.graph.layers[method.boundaries[0]]
    batch = state_batch(layer)
    size = given.get("batch_size")
    if size is None:
        size = 32  # Keras's default for array data
    if size != batch:
        raise ValueError(
            f"batch_size={size}{' (Keras default)' if given.get('batch_size') is None else ''}"
            f": the stateful layer {layer.name!r} was built for batches of {batch} rows. "
            f"Pass batch_size={batch} to fit, with the data laid out for {batch} rows "
            f"(credit.data.tbptt_windows(..., batch_size={batch})).")
    n = len(tf.nest.flatten(x)[0])
    if n % batch:
        raise ValueError(
            f"x: got {n} examples, not a multiple of the batch size {batch}; the last "
            "batch would be smaller than the stateful layer's. Pass whole windows of "
            f"every row ({n - n % batch} examples), e.g. from credit.data.tbptt_windows.")


class LookaheadCheck(keras.callbacks.Callback):
    """Checks, before each training batch, that cDNI through time has its lookahead.

    cDNI through time conditions the synthesizer at a window's end on the next window's
    targets, given by ``method.set_lookahead`` (which :class:`StatefulWindows` calls).
    Without them the traced step could only fail with TensorFlow's
    InvalidArgumentError; this callback, last in fit's list (after any callback of the
    user's that calls ``set_lookahead``), raises a ValueError that names what is
    missing and how to give it. ``credit.Model.fit`` adds it under cDNI through time.
    """

    def on_train_batch_begin(self, batch, logs=None):
        method = getattr(self.model, "method", None)
        if _through_time(method):
            method.check_lookahead()


def _add_lookahead_check(given):
    callbacks = given.get("callbacks")
    if isinstance(callbacks, keras.callbacks.CallbackList):
        return  # the step's own check remains
    callbacks = list(callbacks or [])
    if not any(isinstance(c, LookaheadCheck) for c in callbacks):
        callbacks.append(LookaheadCheck())
    given["callbacks"] = callbacks
