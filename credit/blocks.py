"""Cutting a Keras model into blocks, and the forward pass that records a trace.

A block starts at a layer with trainable weights (Dense, Conv1D/2D/3D) and takes along
the layers that follow it up to the next such layer: parameter-free layers (Activation,
Dropout, Flatten, pooling, Reshape, ...) and normalisation layers (BatchNormalization,
LayerNormalization). Parameter-free layers before the first weighted layer (a Flatten
or Rescaling stem) belong to the first block.
"""

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from credit.signal import Trace

WEIGHTED = (keras.layers.Dense, keras.layers.Conv1D, keras.layers.Conv2D,
            keras.layers.Conv3D)
NORMALIZATION = (keras.layers.BatchNormalization, keras.layers.LayerNormalization,
                 keras.layers.GroupNormalization)


class CutError(ValueError):
    """A model cannot be cut into a chain of blocks."""


class Block:
    """One block: an optional stem, a weighted layer's linear op, then its members.

    Attributes:
        index: position in the model.
        layer: the Dense / Conv layer that starts the block.
        stem: parameter-free layers before ``layer`` (first block only).
        members: the layers after ``layer`` that belong to the block.
        input_shape, output_shape: shapes of ``h_{k-1}`` and ``h_k`` without the batch
            axis, once known.
    """

    def __init__(self, index, layer, stem=(), members=()):
        self.index = index
        self.layer = layer
        self.stem = tuple(stem)
        self.members = tuple(members)
        self.input_shape = None
        self.output_shape = None

    @property
    def layers(self):
        """All layers of the block, in order: stem, weighted layer, members."""
        return self.stem + (self.layer,) + self.members

    @property
    def kernel(self):
        """The weighted layer's kernel (the W_k of DESIGN.md)."""
        return self.layer.kernel

    @property
    def trainable_variables(self):
        """Every trainable variable of the block's layers (kernel, bias, BN scale/shift)."""
        return [v for layer in self.layers for v in layer.trainable_variables]

    @property
    def units(self):
        """Number of values in ``h_k`` per example."""
        return int(np.prod(self.output_shape))

    def __repr__(self):
        names = ", ".join(layer.name for layer in self.layers)
        return f"Block({self.index}: {names})"

    def linear(self, x, kernel=None):
        """The block's linear op (with bias) on ``x``, with ``kernel`` if given."""
        layer = self.layer
        kernel = layer.kernel if kernel is None else kernel
        if isinstance(layer, keras.layers.Dense):
            a = ops.matmul(x, kernel)
            if layer.use_bias:
                a = ops.add(a, layer.bias)
            return a
        a = layer.convolution_op(x, kernel)
        if layer.use_bias:
            if layer.data_format == "channels_last":
                shape = (1,) * (layer.rank + 1) + (layer.filters,)
            else:
                shape = (1, layer.filters) + (1,) * layer.rank
            a = ops.add(a, ops.reshape(layer.bias, shape))
        return a

    def linear_input_vjp(self, x, g, kernel):
        """VJP of the linear op with ``kernel`` with respect to its input, at ``g``."""
        if isinstance(self.layer, keras.layers.Dense) and len(g.shape) == 2:
            return tf.matmul(g, kernel, transpose_b=True)
        x = tf.stop_gradient(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            a = self.linear(x, kernel)
        return tape.gradient(a, x, output_gradients=g)

    def nonlinear(self, a, training=None):
        """Everything after the linear op: the layer's activation, then the members."""
        h = self.layer.activation(a)
        for layer in self.members:
            h = layer(h, training=training)
        return h

    def __call__(self, x, training=None):
        for layer in self.stem:
            x = layer(x, training=training)
        return self.nonlinear(self.linear(x), training)


def _chain_layers(model):
    """The model's layers in order, checked to form a single chain."""
    if isinstance(model, keras.Sequential):
        return list(model.layers)
    if hasattr(model, "_nodes") and hasattr(model, "_operations") and model._nodes:
        from keras.src.ops.function import make_node_key

        if len(model.inputs) != 1 or len(model.outputs) != 1:
            raise CutError(
                f"model {model.name!r} has {len(model.inputs)} inputs and "
                f"{len(model.outputs)} outputs; credit cuts only single-input, "
                "single-output chains into blocks. Use method='backprop', which trains "
                "any Keras model.")
        layers = []
        previous = model.inputs[0]
        for op in model._operations:
            if isinstance(op, keras.layers.InputLayer):
                continue
            nodes = [n for i, n in enumerate(op._inbound_nodes)
                     if make_node_key(op, i) in model._nodes]
            inputs = nodes[0].input_tensors if len(nodes) == 1 else ()
            if len(nodes) != 1 or len(inputs) != 1 or inputs[0] is not previous:
                raise CutError(
                    f"layer {op.name!r} ({type(op).__name__}) is not part of a simple "
                    f"chain (it has {sum(len(n.input_tensors) for n in nodes)} input(s) "
                    f"in {len(nodes)} call(s), or does not follow the previous layer): "
                    "credit can cut only chains of layers into blocks, without branches "
                    "or residual connections. Use method='backprop', which trains any "
                    "Keras model, or make the model a chain.")
            previous = nodes[0].output_tensors[0]
            layers.append(op)
        if previous is not model.outputs[0]:
            raise CutError(f"the output of model {model.name!r} is not the end of its "
                           "layer chain; use method='backprop'.")
        return layers
    # A subclassed model: take its layers in the order they were assigned; the caller
    # checks numerically that the chain reproduces model.call.
    return list(model.layers)


def cut(model):
    """Cut ``model`` into a list of :class:`Block`.

    Raises:
        CutError: if the model is not a chain, or has a layer with weights that is
            neither a Dense/Conv layer nor a normalisation layer. The message names it.
    """
    layers = [layer for layer in _chain_layers(model)
              if not isinstance(layer, keras.layers.InputLayer)]
    blocks, stem, current = [], [], None
    for layer in layers:
        if isinstance(layer, keras.Model):
            raise CutError(
                f"layer {layer.name!r} is a nested model ({type(layer).__name__}); "
                "credit cuts only flat chains of layers. Flatten the model, or use "
                "method='backprop'.")
        if isinstance(layer, WEIGHTED):
            if getattr(layer, "lora_enabled", False) or getattr(layer, "quantization_mode", None):
                raise CutError(f"layer {layer.name!r} uses LoRA or quantization, which "
                               "credit's blockwise engine does not support; use "
                               "method='backprop'.")
            current = Block(len(blocks), layer, stem=stem if not blocks else ())
            blocks.append(current)
            continue
        has_weights = bool(layer.trainable_weights) if layer.built else False
        if has_weights and not isinstance(layer, NORMALIZATION):
            raise CutError(
                f"layer {layer.name!r} ({type(layer).__name__}) has trainable weights "
                "but is not a Dense or Conv layer: credit starts a block only at Dense, "
                "Conv1D, Conv2D or Conv3D. Use method='backprop', which trains any "
                "Keras model.")
        if current is None:
            stem.append(layer)
        else:
            current.members = current.members + (layer,)
    if not blocks:
        raise CutError(f"model {model.name!r} has no Dense or Conv layer to start a "
                       "block; credit needs at least one.")
    return blocks


def infer_shapes(blocks, input_shape):
    """Set ``input_shape``/``output_shape`` (no batch axis) on each block."""
    shape = (None,) + tuple(input_shape)
    for block in blocks:
        block.input_shape = tuple(shape[1:])
        for layer in block.layers:
            shape = tuple(layer.compute_output_shape(shape))
        block.output_shape = tuple(shape[1:])
    return blocks


def forward(blocks, x, tape, training=True):
    """Run ``x`` through the blocks, recording inputs, pre-activations and outputs.

    A stop-gradient separates the blocks, so each block's weight gradient is a VJP of
    its own output alone. Returns three lists aligned with ``blocks``.
    """
    inputs, pre_activations, outputs = [], [], []
    h = x
    for block in blocks:
        h = tf.stop_gradient(h)
        tape.watch(h)
        inputs.append(h)
        for layer in block.stem:
            h = layer(h, training=training)
        a = block.linear(h)
        h = block.nonlinear(a, training)
        pre_activations.append(a)
        outputs.append(h)
    return inputs, pre_activations, outputs


def record(model, blocks, x, y, sample_weight=None, training=True, loss_fn=None):
    """Forward pass + loss on a persistent tape; returns a :class:`credit.signal.Trace`."""
    x = _cast_input(x, blocks[0])
    tape = tf.GradientTape(persistent=True)
    with tape:
        inputs, pre_activations, outputs = forward(blocks, x, tape, training)
        loss = compute_loss(model, x, y, outputs[-1], sample_weight, training, loss_fn)
    return Trace(blocks, inputs, pre_activations, outputs, x, y, sample_weight, loss,
                 tape, training)


def compute_loss(model, x, y, y_pred, sample_weight=None, training=True, loss_fn=None):
    """The model's compiled loss (regularisation included), or ``loss_fn(y, y_pred)``."""
    if loss_fn is not None:
        loss = loss_fn(y, y_pred)
        if model.losses:
            loss = loss + ops.sum(model.losses)
        return loss
    if getattr(model, "_compile_loss", None) is None and not model.losses:
        raise ValueError(
            f"model {model.name!r} has no loss: compile it with a loss, e.g. "
            "model.compile(loss='sparse_categorical_crossentropy', ...), or pass "
            "loss_fn=... to credit.compute_gradients.")
    return model._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                               training=training)


def _cast_input(x, block):
    dtype = block.layers[0].compute_dtype
    return x if x.dtype == dtype else tf.cast(x, dtype)
