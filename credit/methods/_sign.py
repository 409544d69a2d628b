"""Shared mechanics of the sign-transport methods (sign symmetry, brSF, frSF).

BioTorch (Sanfiz & Akrout 2021) sizes every sign feedback from the fans of the layer's
weight as PyTorch computes them (``torch.nn.init._calculate_fan_in_and_fan_out``): for a
weight of shape ``(out, in/groups, k...)``, ``fan_in = in/groups * prod(k)`` and
``fan_out = out * prod(k)``. :func:`torch_fans` gives the same two numbers for a Keras
layer's kernel, whose layout differs from PyTorch's:

======================  ==============================  ==============================
layer (Keras kernel)    fan_in                          fan_out
======================  ==============================  ==============================
Dense ``(in, out)``     ``in``                          ``out``
RNN kernels             ``in`` (input or state size)    ``gates * units``
``(in, gates * units)``
ConvND                  ``in * prod(k)``                ``out * prod(k)``
``(k..., in, out)``
ConvNDTranspose         ``filters * prod(k)``           ``in * prod(k)``
``(k..., filters, in)`` (PyTorch's weight is ``(in, filters, k...)`` and it applies the
                        conv rule to it; only the sum matters below)
DepthwiseConvND         ``prod(k)`` (a grouped conv:    ``in * multiplier * prod(k)``
``(k..., in, mult)``    one input channel per output)
SeparableConvND         depthwise kernel as above; pointwise kernel ``(1..., in * mult,
                        filters)`` as a 1x1 conv: ``in * mult`` and ``filters``
EinsumDense             product of the kernel axes      product of the kernel axes
                        summed over (in the input, not  that index the output and not
                        in the output)                  the input
======================  ==============================  ==============================

For an EinsumDense ``"ab,bc->ac"`` this is the Dense rule; for the query projection of
MultiHeadAttention, ``"abc,cde->abde"``, fan_in = ``c`` and fan_out = ``d * e``.
"""

import keras
import numpy as np

from credit import recurrent_transports, transports
from credit.signal import PLACEMENTS

_L = keras.layers
_DEPTHWISE = (_L.DepthwiseConv1D, _L.DepthwiseConv2D)
_SEPARABLE = (_L.SeparableConv1D, _L.SeparableConv2D)


def _prod(dims):
    size = 1
    for d in dims:
        size *= int(d)
    return size


def torch_fans(layer, kernel_index=0):
    """``(fan_in, fan_out)`` of a layer's kernel as PyTorch computes them (see above)."""
    kernel = transports.kernels(layer)[kernel_index]
    shape = tuple(int(d) for d in kernel.shape)
    if isinstance(layer, _L.Dense) or recurrent_transports.is_recurrent(layer):
        # A recurrent kernel (in, gates * units) is PyTorch's weight_ih / weight_hh
        # (gates * units, in): the Dense rule.
        return shape[0], shape[1]
    if isinstance(layer, _L.EinsumDense):
        eq = layer.equation.replace(" ", "")
        inputs, output = eq.split("->")
        x_axes, k_axes = inputs.split(",")
        fan_in = _prod(d for a, d in zip(k_axes, shape) if a in x_axes and a not in output)
        fan_out = _prod(d for a, d in zip(k_axes, shape) if a in output and a not in x_axes)
        return max(fan_in, 1), max(fan_out, 1)
    taps = _prod(shape[:-2])
    if isinstance(layer, _DEPTHWISE) or (isinstance(layer, _SEPARABLE) and kernel_index == 0):
        # (k..., in, multiplier): PyTorch's Conv with groups=in has weight
        # (in * multiplier, 1, k...).
        return taps, shape[-2] * shape[-1] * taps
    # Conv, ConvTranspose, the pointwise kernel of a separable conv: the last two axes
    # are PyTorch's (in, out) in reverse order, the others the receptive field.
    return shape[-2] * taps, shape[-1] * taps


def glorot_std(layer, kernel_index=0):
    """``sqrt(2 / (fan_in + fan_out))``: the standard deviation of a Glorot init.

    BioTorch's uSF scale (``scaling_factor`` in ``layers/fa_constructor``), and the
    root mean square of the magnitudes ``|M|`` of brSF / frSF.
    """
    fan_in, fan_out = torch_fans(layer, kernel_index)
    return float(np.sqrt(2.0 / (fan_in + fan_out)))


def glorot_limit(layer, kernel_index=0):
    """``sqrt(6 / (fan_in + fan_out))``: the bound of ``xavier_uniform_``."""
    fan_in, fan_out = torch_fans(layer, kernel_index)
    return float(np.sqrt(6.0 / (fan_in + fan_out)))


def signed(magnitude, kernel):
    """``magnitude * sign(kernel)``, in the kernel's dtype (``sign(0) = 0``)."""
    kernel = keras.ops.convert_to_tensor(kernel)
    return keras.ops.cast(magnitude, kernel.dtype) * keras.ops.sign(kernel)


def check_scale(scale, what="scale"):
    """``scale`` as a positive float, or None."""
    if scale is None:
        return None
    if isinstance(scale, (bool, np.bool_)) or not isinstance(scale, (int, float, np.number)) \
            or not np.isfinite(scale) or not scale > 0:
        raise ValueError(f"{what} must be None (the default) or a positive number; got "
                         f"{scale!r}.")
    return float(scale)


def check_layers(layers):
    """``layers`` as a list of names, or None."""
    if layers is None:
        return None
    if isinstance(layers, str):
        layers = [layers]
    if not isinstance(layers, (list, tuple)) or not all(isinstance(n, str) for n in layers):
        raise ValueError(f"layers must be None (every layer with a transport) or a list of "
                         f"layer names, e.g. ['dense_1']; got {layers!r}.")
    return list(layers)


def check_at(at):
    """``at`` (where a point method puts its points) as a list, or None.

    One layer name or block index may be given bare (``at="dense_1"``, ``at=0``); the
    named placements ``"stream"``, ``"residuals"`` and ``"blocks"`` stay strings (a layer called
    ``"stream"`` is named in a list: ``at=["stream"]``).
    """
    if at is None or (isinstance(at, str) and at in PLACEMENTS):
        return at
    if isinstance(at, (str, int, np.integer)) and not isinstance(at, (bool, np.bool_)):
        return [at]
    if not isinstance(at, (list, tuple)):
        raise ValueError(f"at must be None or 'stream' (points on the residual stream), "
                         f"'residuals' (after every residual merge), 'blocks' (every hidden "
                         f"block), a layer name, a block index or a "
                         f"list of them, e.g. at=['dense_1', 2]; got {at!r} of "
                         f"type {type(at).__name__}.")
    return list(at)
