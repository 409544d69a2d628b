"""The two oracle identities on a generated model (see ``tests/test_oracle.py``).

- Transports: a transport method whose feedback is set to the true kernels is backprop:
  feedback alignment and Kolen-Pollack with ``B = W``; frSF with magnitudes ``|W|``
  (``|W| sign(W) = W``); sign symmetry and brSF on a model whose transported kernels
  were first set to ``s sign(W)`` and ``|M_t| sign(W)`` (then their feedback is the
  kernel itself).
- Points: backprop with ``blockwise=True`` (the true gradient injected at every hidden
  block's output, carried across the cut) is backprop; so are synthetic gradients whose
  "synthesizer" returns the true gradient at its point.

Both compare ``credit.compute_gradients(...).gradients`` with Keras's own
``tape.gradient(model.compute_loss(...), model.trainable_variables)`` on the same batch
in training mode (Dropout's masks fixed by restoring its seed state before each pass).
"""

import keras
import numpy as np
import tensorflow as tf

import credit
from credit import transports
from credit.methods import SyntheticGradients
from credit.model import bind

import model_generator

#: Relative tolerance: max |credit - keras| over every entry of every gradient, divided
#: by the largest |keras gradient| entry of the model.
TOLERANCE = 1e-5

TRANSPORT_METHODS = ["feedback_alignment", "kolen_pollack", "sign_symmetry",
                     "fixed_random_sign_feedback", "batchwise_random_sign_feedback"]
POINT_METHODS = ["blockwise_backprop", "oracle_synthetic_gradients"]
METHODS = TRANSPORT_METHODS + POINT_METHODS


class OracleSyntheticGradients(SyntheticGradients):
    """Synthetic gradients whose synthesizer returns the true gradient at its point."""

    def synthetic_signal(self, name, trace):
        return trace.loss_gradients()[name]


def _tensors(a):
    if isinstance(a, list):
        return [tf.constant(v) for v in a]
    return tf.constant(a)


def _dense(g):
    return None if g is None else np.asarray(tf.convert_to_tensor(g), dtype="float64")


def keras_gradients(problem, x, y, saved):
    model = problem.model
    model_generator.reset_seeds(saved)
    with tf.GradientTape() as tape:
        y_pred = model(x, training=True)
        loss = model.compute_loss(x=x, y=y, y_pred=y_pred, training=True)
    return [_dense(g) for g in tape.gradient(loss, model.trainable_variables)]


def _as_tuple(v):
    return v if isinstance(v, tuple) else (v,)


def make_method(name, problem, x, true_feedback=True):
    """The method, bound to the problem's model, with its feedback set to the kernels
    (``true_feedback=False``: left as the method made it)."""
    if name == "blockwise_backprop":
        method = credit.get({"name": "backprop", "blockwise": True})
        bind(method, problem.model, inputs=x)
        return method
    if name == "oracle_synthetic_gradients":
        method = OracleSyntheticGradients(seed=problem.seed)
        bind(method, problem.model, inputs=x)
        return method
    method = credit.get({"name": name, "seed": problem.seed})
    bind(method, problem.model, inputs=x)
    if not true_feedback:
        return method
    if name in ("sign_symmetry", "batchwise_random_sign_feedback"):
        # These two are fed W by setting W to their feedback, which needs a kernel
        # variable: a LoRA layer's effective kernel is a tensor. Cross it by backprop
        # (leave it out of ``layers``).
        layers = [n for n in method.transported
                  if all(isinstance(k, keras.Variable)
                         for k in transports.kernels(method.graph.layers[n]))]
        if len(layers) < len(method.transported):
            method = credit.get({"name": name, "seed": problem.seed, "layers": layers})
            bind(method, problem.model, inputs=x)
    layers = method.graph.layers
    for lname in method.transported:
        layer = layers[lname]
        kernels = transports.kernels(layer)
        if name in ("feedback_alignment", "kolen_pollack"):
            for b, w in zip(_as_tuple(method.feedback_matrices[lname]), kernels):
                b.assign(w)
        elif name == "fixed_random_sign_feedback":
            for m, w in zip(_as_tuple(method.magnitudes[lname]), kernels):
                m.assign(tf.abs(w))
        elif name == "sign_symmetry":
            for s, w in zip(method._scales[lname], kernels):
                w.assign(s * tf.sign(w))
        elif name == "batchwise_random_sign_feedback":
            for m, w in zip(method.draw(lname), kernels):
                w.assign(m * tf.sign(w))
        else:
            raise ValueError(name)
    return method


def check(problem, name, true_feedback=True):
    """``(deviation, where, method)``: the largest gap between credit's and Keras's
    gradients, relative to the largest Keras gradient entry; the variable where it is;
    the bound method."""
    x, y = _tensors(problem.x), _tensors(problem.y)
    saved = model_generator.seed_generators(problem.model)
    method = make_method(name, problem, x, true_feedback)
    expected = keras_gradients(problem, x, y, saved)
    model_generator.reset_seeds(saved)
    got = [_dense(g) for g in
           credit.compute_gradients(problem.model, x, y, method=method).gradients]
    variables = problem.model.trainable_variables
    assert len(got) == len(expected) == len(variables)
    scale = max([np.abs(e).max() for e in expected if e is not None and e.size] + [1e-30])
    worst, where = 0.0, ""
    for v, g, e in zip(variables, got, expected):
        if g is None and e is None:
            continue
        g = np.zeros(v.shape) if g is None else g
        e = np.zeros(v.shape) if e is None else e
        gap = float(np.abs(g - e).max()) / scale if e.size else 0.0
        if not np.isfinite(gap):
            gap = np.inf
        if gap > worst:
            worst, where = gap, f"{v.path} (|keras| max {np.abs(e).max():.3g})"
    return worst, where, method
