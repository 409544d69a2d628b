"""How close a method's signals and updates are to backprop's."""

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from credit import blocks as blocks_lib
from credit import registry
from credit.model import bind


def _cosine(a, b):
    a = np.ravel(np.asarray(a, dtype="float64"))
    b = np.ravel(np.asarray(b, dtype="float64"))
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return float("nan")
    return float(a @ b / (na * nb))


def _flat(tensors):
    return np.concatenate([np.ravel(t) for t in tensors if t is not None])


def alignment(model, x, y, method=None, sample_weight=None, training=False):
    """Per block, the cosine between the method's update and backprop's, on one batch.

    Nothing is trained: the method's state is not updated. For blocks whose signal is
    the true gradient (the output block under most methods) both cosines are 1.

    Args:
        model: a credit model (its method is used) or any chain-shaped Keras model.
        x, y: a batch.
        method: a method or name; default ``model.method``.
        sample_weight: optional weights of the batch.
        training: run the layers in training mode (dropout on) when computing both.

    Returns:
        A DataFrame with one row per block: ``block``, ``layer``, ``update_cosine``
        (weight gradient vs backprop's) and ``signal_cosine`` (``delta_k`` vs the true
        ``dL/dh_k``).

    Example:
        >>> credit.alignment(model, x[:256], y[:256])        # doctest: +SKIP
           block   layer  update_cosine  signal_cosine
        0      0  dense         0.41           0.37
    """
    method = registry.get(method) if method is not None else model.method
    if method.exact and method.blocks is None:
        method = registry.get({**method.get_config(), "blockwise": True})
    bind(method, model, input_shape=tuple(np.shape(x)[1:]))
    x = tf.convert_to_tensor(x)
    y = tf.convert_to_tensor(y)
    trace = blocks_lib.record(model, method.blocks, x, y, sample_weight, training)
    signals = method.signals(trace)
    truth = registry.get({"name": "backprop", "blockwise": True}).signals(trace)
    rows = []
    n = len(trace.blocks)
    for k, block in enumerate(trace.blocks):
        variables = block.trainable_variables
        if k == n - 1:
            true_grads = trace.tape.gradient(trace.loss, variables)
            true_delta = trace.loss_gradient() if signals[k] is not None else None
        else:
            true_delta = truth[k]
            true_grads = trace.tape.gradient(trace.outputs[k], variables,
                                             output_gradients=true_delta)
        if signals[k] is None:  # the method uses the true gradient here
            grads, signal_cosine = true_grads, 1.0
        else:
            grads = trace.tape.gradient(trace.outputs[k], variables,
                                        output_gradients=signals[k])
            signal_cosine = _cosine(signals[k], true_delta)
        rows.append({"block": k, "layer": block.layer.name,
                     "update_cosine": _cosine(_flat(grads), _flat(true_grads)),
                     "signal_cosine": signal_cosine})
    del trace.tape
    return pd.DataFrame(rows)


class AlignmentCallback(keras.callbacks.Callback):
    """Adds ``alignment_k`` (update cosine of block k with backprop) to fit's epoch logs.

    Args:
        x, y: a fixed batch to measure on (a few hundred examples are enough).
        every: measure every ``every`` epochs (NaN in between).

    Example:
        >>> model.fit(x, y, callbacks=[credit.AlignmentCallback(x[:256], y[:256])])  # doctest: +SKIP
    """

    def __init__(self, x, y, every=1):
        super().__init__()
        self.x, self.y, self.every = x, y, int(every)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or (epoch + 1) % self.every:
            return
        table = alignment(self.model, self.x, self.y)
        for row in table.itertuples():
            logs[f"alignment_{row.block}"] = row.update_cosine
