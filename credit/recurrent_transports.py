"""Transports through time: feedback matrices inside SimpleRNN, GRU and LSTM layers.

A recurrent layer has two weighted linear ops per step, ``x_t W`` (the input kernel)
and ``h_{t-1} U`` (the recurrent kernel). Under feedback alignment and its relatives
the backward pass through time crosses both with the method's kernels, at every step:
with ``g_t`` the signal at step t's pre-activations (the gates),

    delta x_t     = g_t B_x^T                       (instead of g_t W^T)
    delta h_{t-1} = g_t B_h^T + the elementwise paths (a GRU's ``z * h``)

while every other derivative of the step (gates, activations, the LSTM carry, masking,
dropout masks) is the true one, and the kernels' weight gradients stay the local ones,
``x_t^T g_t`` and ``h_{t-1}^T g_t`` summed over the steps.

How, without re-implementing a cell: Keras's own cell runs every step. The gradient a
matmul sends to its input is fixed by the kernel's forward value, so the kernels cannot
be swapped; instead each step reads ``g_t`` where it is exactly available, at the bias.
For the step, the cell's bias is a tensor ``b + p``, where ``p`` is a zero-valued
*probe* of shape (batch, gates) made by a custom-gradient op of ``x_t`` and
``h_{t-1}``: its forward value is zero (the step's output is Keras's, bit for bit),
and the gradient that reaches it is ``g_t``, per example. Its backward sends
``g_t B_x^T`` to ``x_t`` (which the cell reads behind a stop-gradient) and
``g_t (B_h - U)^T`` to ``h_{t-1}``, which adds to the cell's own ``g_t U^T`` to make
``g_t B_h^T``. Dropout masks on the kernels' inputs multiply these, as they multiply
the true ones. The bias's own gradient is unchanged (the probe adds nothing to it).

Covered: SimpleRNN, LSTM and GRU (``reset_after=True``, Keras's default) layers, and
``keras.layers.RNN`` over their cells or a ``StackedRNNCells`` of them, alone or in a
``Bidirectional``; every activation, ``use_bias``, dropout, recurrent dropout (SimpleRNN,
LSTM), masking, ``go_backwards``, ``stateful``, ``unroll``, ``return_sequences`` and
``return_state``. Refused, with the option named: a GRU with ``reset_after=False`` (its
recurrent kernel reads ``r * h``, a product inside the cell, where no probe can reach)
and a GRU with ``recurrent_dropout`` (Keras then runs the cell's implementation 1, which
slices the bias per gate), and cells of other types. On a GPU the cuDNN kernels are
switched off for the transported call (they fuse the steps, so no cell runs).

Cuts through time (:func:`cut_through_time`), for the point methods' per-step signals
(DFA and DRTP with ``through_time="eprop"`` or ``"per_step"``): the same machinery,
with the backward pass through time cut inside Keras's own cell.

- ``"eprop"``: every path that crosses the recurrent kernel is dropped, the cell's
  elementwise paths from one step's state to the next are kept: the probe above with
  ``B_x = W`` (the input keeps its true gradient) and ``B_h = 0``, so that
  ``delta h_{t-1}`` is only what reaches ``h_{t-1}`` without crossing ``U``. A
  SimpleRNN has no such path (nothing crosses from step to step); an LSTM keeps its
  carry ``c_{t-1} -> c_t`` through the forget gate (the cell reads ``h_{t-1}`` only
  through ``U``); a GRU keeps ``z_t * h_{t-1}``. These are the eligibility traces of
  e-prop (Bellec et al. 2020), computed backwards instead of forwards (the same sums).
  Covered: what the transports cover (so not a GRU with ``reset_after=False`` or
  recurrent dropout).
- ``"per_step"``: every state the cell reads is cut (``h`` and, for an LSTM, ``c``):
  each step's signal reaches that step's weights only. Any SimpleRNN, GRU or LSTM cell.
"""

import contextlib
import inspect
import threading

import keras
from keras import ops

from credit import backends
from credit._tensorflow import tf

_L = keras.layers
CELLS = (_L.SimpleRNNCell, _L.GRUCell, _L.LSTMCell)
#: The layer types whose kernels can be crossed through time.
TYPES = (_L.RNN, _L.Bidirectional)
_KERNELS = ("kernel", "recurrent_kernel")
#: The ways :func:`cut_through_time` cuts a layer's backward pass through time.
CUTS = ("eprop", "per_step")
_STOP = "stop every state"  # the active entry of a cell whose states are all cut


def is_recurrent(layer):
    """Whether ``layer`` is a recurrent layer (an RNN, or a Bidirectional one)."""
    return isinstance(layer, TYPES)


def rnns(layer):
    """The RNN layers that run ``layer``'s cells (two for a Bidirectional layer)."""
    if isinstance(layer, _L.Bidirectional):
        return [layer.forward_layer, layer.backward_layer]
    return [layer]


def cells(layer):
    """The cells of a recurrent layer, in order (forward then backward; stacked cells
    in stack order)."""
    found = []
    for rnn in rnns(layer):
        cell = rnn.cell
        found.extend(cell.cells if isinstance(cell, _L.StackedRNNCells) else [cell])
    return found


def covered_type(layer):
    """Whether ``layer`` is a recurrent layer over SimpleRNN, GRU or LSTM cells (whatever
    their options)."""
    return is_recurrent(layer) and all(isinstance(rnn, _L.RNN) for rnn in rnns(layer)) \
        and all(isinstance(cell, CELLS) for cell in cells(layer))


def refusal(layer):
    """Why ``layer``'s kernels cannot be crossed through time (a phrase), or None."""
    if not is_recurrent(layer):
        return "it is not a recurrent layer"
    for rnn in rnns(layer):
        if not isinstance(rnn, _L.RNN):
            return (f"it wraps {type(rnn).__name__}, not a SimpleRNN, GRU or LSTM layer")
    for cell in cells(layer):
        if not isinstance(cell, CELLS):
            return (f"its cell {cell.name!r} is a {type(cell).__name__}; credit crosses the "
                    "kernels of SimpleRNNCell, GRUCell and LSTMCell")
        if isinstance(cell, _L.GRUCell):
            if not cell.reset_after:
                return ("its GRU cell has reset_after=False: the recurrent kernel then reads "
                        "r * h, a product inside the cell that no transport can reach. Use "
                        "reset_after=True (Keras's default)")
            if cell.implementation != 2:
                why = (f"recurrent_dropout={cell.recurrent_dropout}" if cell.recurrent_dropout
                       else f"implementation={cell.implementation}")
                return (f"its GRU cell has {why} (Keras then runs the GRU's implementation "
                        "1, which slices the bias gate by gate). Use recurrent_dropout=0 "
                        "(dropout on the inputs is covered)")
    return None


def supports(layer):
    """Whether ``layer`` is a recurrent layer whose kernels credit crosses through time."""
    return is_recurrent(layer) and refusal(layer) is None


def kernel_names(layer):
    """Names of the kernels, in the order of :func:`kernels`: ``("kernel",
    "recurrent_kernel")`` for one cell; ``"<cell>/kernel"``, ... for several."""
    found = cells(layer)
    if len(found) == 1:
        return _KERNELS
    return tuple(f"{_path(layer, i)}/{k}" for i in range(len(found)) for k in _KERNELS)


def _path(layer, i):
    """A name for the i-th cell of ``layer`` (its RNN's name, and its index if stacked)."""
    k = 0
    for rnn in rnns(layer):
        cell = rnn.cell
        inner = cell.cells if isinstance(cell, _L.StackedRNNCells) else [cell]
        for j in range(len(inner)):
            if k == i:
                return f"{rnn.name}/{j}" if len(inner) > 1 else rnn.name
            k += 1
    raise IndexError(i)


def kernels(layer):
    """Each cell's input kernel and recurrent kernel, in cell order (a flat tuple)."""
    return tuple(getattr(cell, name) for cell in cells(layer) for name in _KERNELS)


def cut_refusal(layer, cut):
    """Why the backward pass through time of ``layer`` cannot be cut as ``cut`` says
    (``"eprop"`` or ``"per_step"``), a phrase, or None."""
    if cut not in CUTS:
        raise ValueError(f"cut must be one of {CUTS}; got {cut!r}.")
    if cut == "eprop":
        reason = refusal(layer)
        if reason is not None and covered_type(layer):
            reason += ("; or cut every state with through_time='per_step' (each step's "
                       "signal reaches that step's weights only)")
        return reason
    if not covered_type(layer):
        return refusal(layer)
    return None


def fan_in(layer, kernel_index=0):
    """Terms per entry of ``g B^T``: the gates' width, the kernel's last axis."""
    return int(kernels(layer)[kernel_index].shape[-1])


# --------------------------------------------------------------------------------------
# The step's probe


def _gate_masks(cell, inputs, h, training):
    """The dropout masks the cell multiplies its kernels' inputs with this step: per
    gate (``(x masks, h masks)``, lists with one entry per gate block, None for none),
    exactly as the cell's own call decides."""
    if isinstance(cell, _L.SimpleRNNCell):
        dp = cell.get_dropout_mask(inputs)
        rec = cell.get_recurrent_dropout_mask(h)
        return ([dp if training and dp is not None else None],
                [rec if training and rec is not None else None])
    gates = 4 if isinstance(cell, _L.LSTMCell) else 3
    dp = (cell.get_dropout_mask(inputs) if training and 0.0 < cell.dropout < 1.0 else None)
    if cell.implementation == 1:  # an LSTM with recurrent dropout: one mask per gate
        rec = (cell.get_recurrent_dropout_mask(h)
               if training and 0.0 < cell.recurrent_dropout < 1.0 else None)
        return ([None] * gates if dp is None else list(dp),
                [None] * gates if rec is None else list(rec))
    return [dp], [None]


def _layout(cell, batch):
    """How the probe lies in the bias, for this cell type and implementation.

    Returns ``(shape, to_bias, x_parts, h_parts)``: the probe's shape; a function from
    (bias or None, probe) to the tensor the cell reads as its bias; and, for the input
    and the recurrent kernel, a function from the probe's gradient to a list of
    ``(g, columns)``: the signal at some of the kernel's output columns.
    """
    units = cell.units
    if isinstance(cell, _L.GRUCell):
        # bias (2, 3u): the input and the recurrent biases; the cell splits it on axis 0.
        def to_bias(bias, p):
            return p if bias is None else bias[:, None, :] + p

        return ((2, batch, 3 * units), to_bias,
                lambda g: [(g[0], slice(None))], lambda g: [(g[1], slice(None))])
    if isinstance(cell, _L.LSTMCell) and cell.implementation == 1:
        # The cell splits the bias in 4 on axis 0 and adds one part to each gate: the
        # probe lies gate by gate, (4 * batch, u).
        def to_bias(bias, p):
            full = p if bias is None else ops.reshape(bias, (4, 1, units)) + p
            return ops.reshape(full, (-1, units))

        def parts(g):
            return [(g[k], slice(k * units, (k + 1) * units)) for k in range(4)]

        return (4, batch, units), to_bias, parts, parts
    width = 4 * units if isinstance(cell, _L.LSTMCell) else units

    def to_bias(bias, p):
        return p if bias is None else bias + p

    return (batch, width), to_bias, (lambda g: [(g, slice(None))]), (lambda g: [(g, slice(None))])


def _probe(x, h, shape, dtype, grad_x, grad_h, residuals):
    """Zeros of ``shape``; its gradient ``g`` is sent on as ``grad_x(g, *residuals)``
    to ``x`` and ``grad_h(g, *residuals)`` to ``h``.

    ``residuals`` (kernels, dropout masks) are passed, not closed over: on JAX the
    backward function of a custom VJP inside the layer's scan may not close over the
    step's traced values.
    """
    if backends.is_jax():
        from credit.backends import jax as jax_backend
        return jax_backend.probe(x, h, shape, dtype, grad_x, grad_h, residuals)

    @tf.custom_gradient
    def probe(x, h):
        def grad(g):
            return grad_x(g, *residuals), grad_h(g, *residuals)

        return tf.zeros(shape, dtype), grad

    return probe(x, h)


def _read(variable):
    """A variable's value as a tensor: on TensorFlow a read op (``keras.ops`` would
    hand back the ``tf.Variable`` itself, which the backward step may not capture)."""
    if backends.is_jax():
        return ops.convert_to_tensor(variable)
    return tf.convert_to_tensor(variable)


def _carry(parts, masks, kernel):
    """``sum_k (g_k kernel[:, cols_k]^T) * mask_k``: a signal carried across a kernel."""
    total = None
    for (g, cols), mask in zip(parts, masks):
        k = ops.cast(kernel, g.dtype)[:, cols]
        # The op the layer's own backward pass uses for ``g U^T``, so that the
        # correction ``g (B_h - U)^T`` with ``B_h = 0`` cancels it exactly.
        term = (ops.matmul(g, ops.transpose(k)) if backends.is_jax()
                else tf.matmul(g, k, transpose_b=True))
        if mask is not None:
            term = term * ops.cast(mask, term.dtype)
        total = term if total is None else total + term
    return total


_MISSING = object()
_lock = threading.RLock()
_local = threading.local()
_installed = {}  # id(cell or rnn) -> [count, object, saved attributes]


def _step(cell, original, feedback, args, kwargs):
    """One step of ``cell`` with its kernels crossed by ``feedback`` = (B_x, B_h)."""
    bound = inspect.signature(original).bind(*args, **kwargs)
    arguments = bound.arguments
    names = list(arguments)
    inputs, states = arguments[names[0]], arguments[names[1]]
    training = bool(arguments.get("training", False))
    nested = isinstance(states, (list, tuple))
    h = states[0] if nested else states
    inputs = ops.convert_to_tensor(inputs)
    x_masks, h_masks = _gate_masks(cell, inputs, h, training)
    # Read in the forward step, so that the backward step (inside the gradient of the
    # layer's While loop, in graph mode) captures tensors, not variables.
    b_x, b_h = (None if b is None else _read(b) for b in feedback)
    recurrent = _read(cell.recurrent_kernel)
    shape, to_bias, x_parts, h_parts = _layout(cell, ops.shape(inputs)[0])
    dtype = inputs.dtype

    def grad_x(g, x_masks, h_masks, b_x, b_h, recurrent):
        return _carry(x_parts(g), x_masks, b_x)

    def grad_h(g, x_masks, h_masks, b_x, b_h, recurrent):
        if b_h is None:  # no path across the recurrent kernel (e-prop's cut)
            correction = -ops.cast(recurrent, g.dtype)
        else:
            correction = ops.cast(b_h, g.dtype) - ops.cast(recurrent, g.dtype)
        return _carry(h_parts(g), h_masks, correction)

    probe = _probe(inputs, h, shape, dtype, grad_x, grad_h,
                   (x_masks, h_masks, b_x, b_h, recurrent))
    bias = cell.bias if getattr(cell, "use_bias", cell.bias is not None) else None
    bias = None if bias is None else ops.cast(bias, dtype)
    arguments[names[0]] = ops.stop_gradient(inputs)
    # The cell reads its bias from the instance: swap it for the step (under a lock:
    # replicas of a distribution strategy trace the same cell in threads).
    with _lock:
        saved = {k: cell.__dict__.get(k, _MISSING) for k in ("bias", "use_bias")}
        try:
            object.__setattr__(cell, "bias", to_bias(bias, probe))
            if "use_bias" in cell.__dict__:
                object.__setattr__(cell, "use_bias", True)
            return original(*bound.args, **bound.kwargs)
        finally:
            for k, v in saved.items():
                if v is _MISSING:
                    cell.__dict__.pop(k, None)
                else:
                    object.__setattr__(cell, k, v)


def _stopped_step(original, args, kwargs):
    """One step of the cell with every state it reads behind a stop-gradient."""
    bound = inspect.signature(original).bind(*args, **kwargs)
    names = list(bound.arguments)
    bound.arguments[names[1]] = keras.tree.map_structure(ops.stop_gradient,
                                                         bound.arguments[names[1]])
    return original(*bound.args, **bound.kwargs)


def _cell_wrapper(cell, original):
    def call(*args, **kwargs):
        feedback = getattr(_local, "active", {}).get(id(cell))
        if feedback is None:
            return original(*args, **kwargs)
        if feedback is _STOP:
            return _stopped_step(original, args, kwargs)
        return _step(cell, original, feedback, args, kwargs)

    call.__wrapped__ = original
    return call


def _install(cell, layers):
    with _lock:
        for obj in [cell] + layers:
            entry = _installed.get(id(obj))
            if entry is None:
                if obj is cell:
                    saved = {"call": obj.__dict__.get("call", _MISSING)}
                    object.__setattr__(obj, "call", _cell_wrapper(obj, obj.call))
                else:
                    # cuDNN runs all the steps in one kernel, without the cell.
                    saved = {"use_cudnn": obj.__dict__.get("use_cudnn", _MISSING)}
                    if saved["use_cudnn"] is not _MISSING:
                        object.__setattr__(obj, "use_cudnn", False)
                entry = _installed[id(obj)] = [0, obj, saved]
            entry[0] += 1


def _uninstall(objects):
    with _lock:
        for obj in objects:
            entry = _installed[id(obj)]
            entry[0] -= 1
            if entry[0]:
                continue
            del _installed[id(obj)]
            for name, value in entry[2].items():
                if value is _MISSING:
                    obj.__dict__.pop(name, None)
                else:
                    object.__setattr__(obj, name, value)


@contextlib.contextmanager
def through_time(layer, feedback):
    """Within the block, calls of ``layer`` cross its kernels with ``feedback``.

    Args:
        layer: a recurrent layer that :func:`supports` covers.
        feedback: the kernels to cross with, in the order of :func:`kernels`
            (``B_x, B_h`` per cell).

    Raises:
        ValueError: a layer option that is not covered, named.
    """
    reason = refusal(layer)
    if reason is not None:
        raise ValueError(f"layer {layer.name!r} ({type(layer).__name__}) has no transport "
                         f"through time: {reason}.")
    found = cells(layer)
    feedback = tuple(feedback)
    if len(feedback) != 2 * len(found):
        raise ValueError(f"layer {layer.name!r} needs {2 * len(found)} feedback kernels "
                         f"(input and recurrent, per cell); got {len(feedback)}.")
    with _activate(layer, [(feedback[2 * i], feedback[2 * i + 1])
                           for i in range(len(found))]):
        yield


@contextlib.contextmanager
def cut_through_time(layer, cut):
    """Within the block, calls of ``layer`` run with their backward pass through time cut.

    Args:
        layer: a recurrent layer over SimpleRNN, GRU or LSTM cells.
        cut: ``"eprop"`` (drop every path across the recurrent kernel, keep the
            elementwise ones: an LSTM's carry, a GRU's ``z * h``) or ``"per_step"``
            (cut every state the cell reads). See the module's docstring.

    Raises:
        ValueError: a layer or option that the cut does not cover, named.

    Example:
        >>> with cut_through_time(model.get_layer("lstm"), "eprop"):  # doctest: +SKIP
        ...     y = model(x, training=True)
    """
    reason = cut_refusal(layer, cut)
    if reason is not None:
        raise ValueError(f"layer {layer.name!r} ({type(layer).__name__}) cannot be cut "
                         f"through time as {cut!r}: {reason}.")
    found = cells(layer)
    entries = ([_STOP] * len(found) if cut == "per_step"
               else [(cell.kernel, None) for cell in found])
    with _activate(layer, entries):
        yield


@contextlib.contextmanager
def _activate(layer, entries):
    """Install the cell wrappers of ``layer`` and make ``entries`` (one per cell: the
    ``(B_x, B_h)`` of its probe, or ``_STOP``) active within the block."""
    found = cells(layer)
    layers = rnns(layer)
    active = getattr(_local, "active", None)
    if active is None:
        active = _local.active = {}
    previous = {id(c): active.get(id(c)) for c in found}
    for i, cell in enumerate(found):
        _install(cell, layers if i == 0 else [])
        active[id(cell)] = entries[i]
    try:
        yield
    finally:
        for cell in found:
            if previous[id(cell)] is None:
                active.pop(id(cell), None)
            else:
                active[id(cell)] = previous[id(cell)]
        _uninstall(found + layers)
