"""Transports: how the backward pass crosses a weighted layer's linear op.

For each weighted layer type there is one linear op ``a = L(x; K) (+ bias)`` and one
adjoint, the vector-Jacobian product of ``L`` with respect to its input ``x``,
``VJP_x[L(.; K)](g)``. Backprop crosses a layer with its own kernel ``W``; feedback
alignment with a fixed random ``B`` shaped like ``W``; sign symmetry with ``sign(W)``. The
layer's *weight* gradient is always its own local one (its input times the signal at
its pre-activation); only the input gradient changes.

The forward pass always runs the layer itself (``layer.call``); the functions here are
used for the backward product only. Given ``K = W`` each adjoint equals TensorFlow's own
VJP of the layer's call with respect to its input (the tests check this for every layer
type, padding and dilation).

Supported: Dense, EinsumDense, Conv1D/2D/3D (every padding, causal included, and
dilation), Conv1D/2D/3DTranspose, DepthwiseConv1D/2D, SeparableConv1D/2D. Recurrent
layers (SimpleRNN, GRU, LSTM, alone or in a Bidirectional) have two kernels per cell,
the input and the recurrent one, crossed at every step through time: they have no
single linear op here; :mod:`credit.recurrent_transports` crosses them.

Example:
    >>> layer = keras.layers.Conv1D(4, 3, padding="causal")     # doctest: +SKIP
    >>> credit.transports.adjoint(layer, g, x, (B,))           # g B^T for a convolution
"""

import keras
from credit._tensorflow import tf
from keras import ops

from credit import recurrent_transports

_L = keras.layers
_CONV = (_L.Conv1D, _L.Conv2D, _L.Conv3D)
_CONV_TRANSPOSE = (_L.Conv1DTranspose, _L.Conv2DTranspose, _L.Conv3DTranspose)
_DEPTHWISE = (_L.DepthwiseConv1D, _L.DepthwiseConv2D)
_SEPARABLE = (_L.SeparableConv1D, _L.SeparableConv2D)

#: Layer types with an adjoint, and the names of their kernels (in the order the
#: adjoint takes them).
KERNELS = (
    (_SEPARABLE, ("depthwise_kernel", "pointwise_kernel")),
    (_DEPTHWISE, ("kernel",)),
    (_CONV_TRANSPOSE, ("kernel",)),
    (_CONV, ("kernel",)),
    ((_L.EinsumDense,), ("kernel",)),
    ((_L.Dense,), ("kernel",)),
)

#: Every layer type with a transport.
TYPES = tuple(t for types, _ in KERNELS for t in types)


def supports(layer):
    """Whether a transport can replace ``layer``'s kernels: a layer type with an adjoint,
    or a recurrent layer whose kernels are crossed through time."""
    return isinstance(layer, TYPES) or recurrent_transports.supports(layer)


def kernel_names(layer):
    """The names of the kernels the transport of ``layer`` replaces, e.g. ``("kernel",)``
    (``("kernel", "recurrent_kernel")`` for a recurrent layer, on its cell)."""
    for types, names in KERNELS:
        if isinstance(layer, types):
            return names
    if recurrent_transports.covered_type(layer):
        reason = recurrent_transports.refusal(layer)
        if reason is None:
            return recurrent_transports.kernel_names(layer)
        raise ValueError(
            f"layer {layer.name!r} ({type(layer).__name__}) has no transport through "
            f"time: {reason}. Or leave it out of the method's layers= (its input and "
            "recurrent kernels are then crossed with the true W, by backpropagation "
            "through time).")
    raise TypeError(
        f"layer {layer.name!r} ({type(layer).__name__}) has no transport: credit has "
        f"adjoints for {', '.join(sorted({t.__name__ for t in TYPES}))}, and crosses the "
        "kernels of SimpleRNN, GRU and LSTM layers (and RNN layers over their cells) "
        "through time. Its input gradient is the true one; do not ask for a transport "
        "on it.")


def kernels(layer):
    """The layer's current kernels (with LoRA, the effective kernels), as a tuple; for a
    recurrent layer each cell's input and recurrent kernel."""
    if recurrent_transports.is_recurrent(layer):
        kernel_names(layer)  # the explanatory error for what is not covered
        return recurrent_transports.kernels(layer)
    return tuple(getattr(layer, name) for name in kernel_names(layer))


def fan_in(layer, kernel_index=0):
    """How many terms one entry of the adjoint sums over: the fan-in of the backward sum.

    Dense: the output units. Convolutions: the spatial taps times the output channels
    that read an input channel -- all the filters, or ``filters / groups`` of a grouped
    convolution, whose input channel feeds only the filters of its own group (the
    multiplier of a depthwise one). The default scale of the feedback matrices,
    ``1/sqrt(fan_in)``, keeps a signal's size across the transport.
    """
    if recurrent_transports.is_recurrent(layer):
        return recurrent_transports.fan_in(layer, kernel_index)
    shape = tuple(kernels(layer)[kernel_index].shape)
    if isinstance(layer, _L.Dense):
        return int(shape[-1])
    if isinstance(layer, _L.EinsumDense):
        # The kernel's axes that also appear in the output are summed over by the adjoint.
        eq = layer.equation.replace(" ", "")
        inputs, output = eq.split("->")
        kernel_axes = inputs.split(",")[1]
        size = 1
        for axis, dim in zip(kernel_axes, shape):
            if axis in output and axis not in inputs.split(",")[0]:
                size *= int(dim)
        return max(size, 1)
    if isinstance(layer, _SEPARABLE) and kernel_index == 1:
        return int(shape[-1])
    if isinstance(layer, _CONV_TRANSPOSE):
        # kernel (..., filters, in_channels): the adjoint is a convolution over the
        # spatial taps and the filters.
        size = 1
        for dim in shape[:-1]:
            size *= int(dim)
        return size
    # Convolutions: spatial taps x the output channels that read one input channel
    # (kernel (..., in / groups, filters): filters / groups of them; a depthwise kernel
    # (..., in, multiplier): the multiplier).
    taps = 1
    for dim in shape[:-2]:
        taps *= int(dim)
    groups = int(getattr(layer, "groups", 1) or 1) if isinstance(layer, _CONV) else 1
    return taps * int(shape[-1]) // groups


def _causal_padding(layer):
    left = layer.dilation_rate[0] * (layer.kernel_size[0] - 1)
    if layer.data_format == "channels_last":
        return [[0, 0], [left, 0], [0, 0]]
    return [[0, 0], [0, 0], [left, 0]]


def linear(layer, x, kernels_):
    """The layer's linear op on ``x`` with ``kernels_`` in place of its own (no bias).

    This mirrors the first line of each layer type's ``call``, with the layer's own
    strides, padding, dilation and data format.
    """
    _not_recurrent(layer)
    if isinstance(layer, _L.Dense):
        return ops.matmul(x, kernels_[0])
    if isinstance(layer, _L.EinsumDense):
        return ops.einsum(layer.equation, x, kernels_[0])
    if isinstance(layer, _SEPARABLE):
        return ops.separable_conv(x, kernels_[0], kernels_[1], strides=layer.strides,
                                  padding=layer.padding, dilation_rate=layer.dilation_rate,
                                  data_format=layer.data_format)
    if isinstance(layer, _DEPTHWISE):
        return ops.depthwise_conv(x, kernels_[0], strides=layer.strides,
                                  padding=layer.padding, dilation_rate=layer.dilation_rate,
                                  data_format=layer.data_format)
    if isinstance(layer, _CONV_TRANSPOSE):
        return ops.conv_transpose(x, kernels_[0], strides=list(layer.strides),
                                  padding=layer.padding, output_padding=layer.output_padding,
                                  dilation_rate=layer.dilation_rate,
                                  data_format=layer.data_format)
    if isinstance(layer, _CONV):
        padding = layer.padding
        if padding == "causal":
            x = ops.pad(x, _causal_padding(layer))
            padding = "valid"
        return ops.conv(x, kernels_[0], strides=list(layer.strides), padding=padding,
                        dilation_rate=layer.dilation_rate, data_format=layer.data_format)
    kernel_names(layer)  # raises the explanatory TypeError
    raise AssertionError("unreachable")


def _not_recurrent(layer):
    if recurrent_transports.is_recurrent(layer):
        raise TypeError(
            f"layer {layer.name!r} ({type(layer).__name__}) has no transport as one linear "
            "op: its kernels are crossed at every step through time, inside its call "
            "(credit.recurrent_transports.through_time).")


def _einsum_adjoint(equation):
    """``"out,kernel->x"`` for ``"x,kernel->out"``, when every axis of x is in out or in
    the kernel (else None: an axis summed within x alone needs the generic VJP)."""
    eq = equation.replace(" ", "")
    if "..." in eq:
        return None
    inputs, out = eq.split("->")
    x, kernel = inputs.split(",")
    if any(a not in out and a not in kernel for a in x):
        return None
    return f"{out},{kernel}->{x}"


def adjoint(layer, g, x, kernels_):
    """``VJP_x[L(.; kernels_)](g)``: the signal ``g`` at the pre-activation carried to the input.

    Args:
        layer: the weighted layer (its type and configuration fix ``L``).
        g: the signal at the layer's pre-activation, shaped like its output.
        x: the layer's input (only its shape and dtype are used).
        kernels_: the kernels to cross with, shaped like the layer's own.
    """
    _not_recurrent(layer)
    kernels_ = tuple(tf.cast(k, g.dtype) for k in kernels_)
    if isinstance(layer, _L.Dense):
        return tf.tensordot(g, kernels_[0], [[-1], [1]])
    if isinstance(layer, _L.EinsumDense):
        transposed = _einsum_adjoint(layer.equation)
        if transposed is not None:
            return tf.einsum(transposed, g, kernels_[0])
    # The VJP of a linear op does not depend on where it is taken: take it at zero, so
    # that nothing of the forward computation is needed (graph mode prunes it).
    x0 = tf.zeros(tf.shape(x), g.dtype)
    with tf.GradientTape() as tape:
        tape.watch(x0)
        a = linear(layer, x0, kernels_)
    return tape.gradient(a, x0, output_gradients=g)
