"""One credit step per method on the backend Keras runs on, from a shared starting point.

Usage: ``KERAS_BACKEND=B python cross_backend.py OUT [IN]``.

For every case of :data:`CASES` (a method on a model), the script builds the model,
binds the method, and takes one step with :func:`credit.compute_gradients`. Without
``IN`` it draws the model's weights, the batch and the method's state from seeds and
writes them to ``OUT`` with the gradients; with ``IN`` (the file another backend wrote)
it sets the weights, the batch and the method's state from there before the step. So
TensorFlow's run is the reference and JAX's must equal it: the tests in
tests/test_jax_backend.py compare the gradients and the method's state after its update
(Kolen-Pollack's matrices, the synthesizers and heads with their optimizers' slots),
then the weights and the state after three steps of ``fit``, and for synthetic gradients
and local losses the state of the model saved and loaded, and its gradients. The
reference run also draws the synthesizers' and heads' weights (a synthesizer's last
layer starts at zero).

Each case also reports ``{"case": ..., "error": ...}`` instead of its arrays when the
step raises, so one refused method does not hide the others.
"""

import json
import os
import sys
import tempfile

import numpy as np

OUT = sys.argv[1]
IN = sys.argv[2] if len(sys.argv) > 2 else None

if os.environ.get("KERAS_BACKEND") == "jax":
    sys.modules["tensorflow"] = None  # credit on JAX must not need TensorFlow

import keras  # noqa: E402
from keras import layers as L  # noqa: E402

import credit  # noqa: E402


def mlp(units=3, activation="softmax"):
    return credit.Sequential([keras.Input((6,)), L.Dense(8, activation="tanh"),
                              L.Dense(7, activation="relu"),
                              L.Dense(units, activation=activation)])


def residual():
    i = keras.Input((6,))
    h = L.Dense(8, activation="relu", name="d0")(i)
    a = L.Dense(8, activation="tanh", name="d1")(h)
    b = L.Dense(8, name="d2")(a)
    s = L.Add(name="add")([b, h])
    o = L.Dense(3, activation="softmax", name="out")(s)
    return credit.Model(i, o)


def conv():
    i = keras.Input((6, 6, 2))
    h = L.Conv2D(4, 3, padding="same", activation="relu", name="c0")(i)
    h = L.Conv2D(4, 3, strides=2, activation="relu", name="c1")(h)
    h = L.Flatten()(h)
    h = L.Dense(8, activation="relu", name="d0")(h)
    return credit.Model(i, L.Dense(3, activation="softmax", name="out")(h))


def recurrent():
    i = keras.Input((4, 3))
    h = L.LSTM(5, return_sequences=True, name="lstm")(i)
    h = L.SimpleRNN(4, return_sequences=True, name="rnn")(h)
    h = L.GRU(4, name="gru")(h)
    return credit.Model(i, L.Dense(3, activation="softmax", name="out")(h))


def two_outputs():
    """A hidden layer that is also a model output (an auxiliary regression head)."""
    i = keras.Input((6,))
    h = L.Dense(4, activation="tanh", name="aux")(i)
    a = L.Dense(8, activation="relu", name="d1")(h)
    return credit.Model(i, [L.Dense(3, activation="softmax", name="out")(a), h])


#: (case name, model builder, loss, method config, optimizer)
CASES = [
    ("feedback_alignment/conv", conv, "sparse_categorical_crossentropy",
     {"name": "feedback_alignment"}, "sgd"),
    ("direct_feedback_alignment/conv", conv, "sparse_categorical_crossentropy",
     {"name": "direct_feedback_alignment"}, "adam"),
    ("direct_random_target_projection/residual", residual,
     "sparse_categorical_crossentropy", {"name": "direct_random_target_projection"}, "sgd"),
    ("fixed_random_sign_feedback/conv", conv, "sparse_categorical_crossentropy",
     {"name": "fixed_random_sign_feedback"}, "sgd"),
    ("kickback/mlp", lambda: mlp(1, None), "mse", {"name": "kickback"}, "sgd"),
    ("kolen_pollack/residual", residual, "sparse_categorical_crossentropy",
     {"name": "kolen_pollack", "weight_decay": 0.1}, "sgd"),
    ("kolen_pollack/conv", conv, "sparse_categorical_crossentropy",
     {"name": "kolen_pollack", "weight_decay": 0.1}, "adam"),
    ("delayed_feedback/mlp", mlp, "sparse_categorical_crossentropy",
     {"name": "delayed_feedback", "examples": 5}, "sgd"),
    ("delayed_feedback/conv", conv, "sparse_categorical_crossentropy",
     {"name": "delayed_feedback", "examples": 5}, "adam"),
    ("backprop_blockwise/residual", residual, "sparse_categorical_crossentropy",
     {"name": "backprop", "blockwise": True}, "sgd"),
    ("feedback_alignment/recurrent", recurrent, "sparse_categorical_crossentropy",
     {"name": "feedback_alignment"}, "sgd"),
    ("kolen_pollack/recurrent", recurrent, "sparse_categorical_crossentropy",
     {"name": "kolen_pollack", "weight_decay": 0.1}, "adam"),
    ("sign_symmetry/recurrent", recurrent, "sparse_categorical_crossentropy",
     {"name": "sign_symmetry"}, "sgd"),
    # Points on a model output (the auxiliary output is a hidden block's).
    ("dfa_output_point/two_outputs", two_outputs, ["sparse_categorical_crossentropy", "mse"],
     {"name": "dfa", "at": ["aux", "d1"]}, "sgd"),
    ("backprop_blockwise/two_outputs", two_outputs,
     ["sparse_categorical_crossentropy", "mse"], {"name": "backprop", "blockwise": True},
     "sgd"),
    # Synthetic gradients and local losses: the synthesizers' and heads' weights are
    # drawn too (see run_case), so that the first step's signals are not zero.
    ("sg/mlp", mlp, "sparse_categorical_crossentropy", {"name": "sg"}, "sgd"),
    ("sg/residual", residual, "sparse_categorical_crossentropy",
     {"name": "sg", "synthesizer": "mlp", "hidden_units": [5]}, "adam"),
    ("sg/conv", conv, "sparse_categorical_crossentropy",
     {"name": "sg", "kernel_size": 3, "optimizer": "sgd", "learning_rate": 0.1}, "sgd"),
    ("cdni/mlp", mlp, "sparse_categorical_crossentropy",
     {"name": "cdni", "target": "true"}, "adam"),
    ("cdni/residual", residual, "sparse_categorical_crossentropy",
     {"name": "cdni", "warmup_steps": 2}, "sgd"),
    ("cdni/conv", conv, "sparse_categorical_crossentropy",
     {"name": "cdni", "synthesizer": "mlp", "hidden_units": [5], "hidden_filters": [3],
      "width": 2}, "adam"),
    ("local_losses/mlp", mlp, "sparse_categorical_crossentropy",
     {"name": "local_losses", "loss": "predsim", "beta": 0.5}, "sgd"),
    ("local_losses/conv", conv, "sparse_categorical_crossentropy",
     {"name": "local_losses", "loss": "predsim", "beta": 0.5, "head": "dgl"}, "adam"),
    ("pepita/mlp", mlp, "sparse_categorical_crossentropy", {"name": "pepita"}, "sgd"),
    ("forward_forward/mlp", mlp, "sparse_categorical_crossentropy",
     {"name": "forward_forward"}, "adam"),
    ("forward_forward/hardest/mlp", mlp, "sparse_categorical_crossentropy",
     {"name": "forward_forward", "negatives": "hardest", "head": "neutral"}, "sgd"),
    # Forward gradients draw their tangents by a counter-based hash in keras.ops: the
    # same tangents on both backends, so the steps compare directly.
    ("forward_gradient/mlp", lambda: mlp(1, None), "mse",
     {"name": "forward_gradient", "tangents": 2}, "sgd"),
    ("forward_gradient/activities/conv", conv, "sparse_categorical_crossentropy",
     {"name": "forward_gradient", "perturb": "activities", "tangents": 2}, "adam"),
    ("forward_gradient/local/mlp", mlp, "sparse_categorical_crossentropy",
     {"name": "forward_gradient", "perturb": "activities", "local": True, "tangents": 2},
     "sgd"),
]


def batch(name, model):
    rng = np.random.default_rng(len(name))
    shape = (5,) + tuple(model.inputs[0].shape[1:])
    x = rng.normal(size=shape).astype("float32")
    units = model.outputs[0].shape[-1]
    y = (rng.normal(size=(5, 1)).astype("float32") if units == 1
         else (np.arange(5) % units).astype("int32"))
    if len(model.outputs) > 1:  # regression targets for the other outputs
        y = [y] + [rng.normal(size=(5,) + tuple(t.shape[1:])).astype("float32")
                   for t in model.outputs[1:]]
    return x, y


def state_variables(method):
    """The method's variables, its optimizers' included (in the same order on every
    backend)."""
    state = getattr(method, "state", None)
    if state is None:
        return []
    variables = list(state.variables)
    for value in vars(state).values():
        if isinstance(value, keras.optimizers.Optimizer):
            seen = {id(v) for v in variables}
            variables += [v for v in value.variables if id(v) not in seen]
    return variables


def run_case(name, build, loss, config, optimizer, given):
    keras.utils.set_random_seed(len(name))
    model = build()
    model.compile(optimizer, loss, method=dict(config, seed=1))
    x, y = batch(name, model)
    method = model.method
    credit.model.bind(method, model, inputs=x)
    rng = np.random.default_rng(len(name) + 1)
    out = {}
    if given is None:
        for v in model.trainable_variables:
            v.assign(rng.normal(0, 0.4, size=v.shape).astype("float32"))
        # Synthesizers (their last layer starts at zero) and local heads: drawn, so
        # that their signals and updates are not zero from the first step.
        for layer in getattr(method.state, "synthesizer_layers", None) or []:
            for v in layer.trainable_variables:
                v.assign(rng.normal(0, 0.3, size=v.shape).astype("float32"))
    else:
        # x and y come from the same numpy draws on every backend (batch); checked.
        assert np.array_equal(x, given[f"{name}/x"]), name
        for k, v in enumerate(model.trainable_variables):
            v.assign(given[f"{name}/w{k}"])
        for k, v in enumerate(state_variables(method)):
            v.assign(given[f"{name}/s{k}"])
    out[f"{name}/x"] = x
    for k, v in enumerate(model.trainable_variables):
        out[f"{name}/w{k}"] = np.asarray(v.value)
    for k, v in enumerate(state_variables(method)):
        out[f"{name}/s{k}"] = np.asarray(v.value)
    # credit.alignment before the step (it updates nothing): the update's and the
    # signals' cosines with backprop's and the norm ratios.
    table = credit.alignment(model, x, y)
    out[f"{name}/galign"] = np.nan_to_num(
        table[["update_cosine", "norm_ratio", "signal_cosine"]].to_numpy(float), nan=-9.0)
    grads = credit.compute_gradients(model, x, y).gradients
    for k, g in enumerate(grads):
        out[f"{name}/g{k}"] = np.zeros(model.trainable_variables[k].shape) if g is None \
            else np.asarray(g)
    for k, v in enumerate(state_variables(method)):
        out[f"{name}/after{k}"] = np.asarray(v.value)
    # Three steps of fit (jitted on JAX, a tf.function on TensorFlow) from there.
    history = model.fit(x, y, batch_size=len(x), epochs=3, shuffle=False, verbose=0)
    if method.log_names:  # the method's own logs (sg_loss, ...), per epoch
        out[f"{name}/fit_logs"] = np.array([history.history[n] for n in method.log_names])
    for k, v in enumerate(model.trainable_variables):
        out[f"{name}/fit_w{k}"] = np.asarray(v.value)
    for k, v in enumerate(state_variables(method)):
        out[f"{name}/fit_s{k}"] = np.asarray(v.value)
    if getattr(method.state, "synthesizer_layers", None):
        # Saved and loaded: the synthesizers (heads) and counters come back, and the
        # loaded model's gradients are the trained one's.
        path = os.path.join(tempfile.mkdtemp(), "model.keras")
        model.save(path)
        loaded = keras.models.load_model(path)
        for k, v in enumerate(loaded.method.state.variables):
            out[f"{name}/fit_loaded_s{k}"] = np.asarray(v.value)
        grads = credit.compute_gradients(loaded, x, y).gradients
        for k, g in enumerate(grads):
            out[f"{name}/fit_loaded_g{k}"] = np.asarray(g)
    return out


def main():
    given = None if IN is None else dict(np.load(IN))
    saved = {}
    for name, build, loss, config, optimizer in CASES:
        try:
            saved.update(run_case(name, build, loss, config, optimizer, given))
            print(json.dumps({"case": name, "ok": True}))
        except Exception as err:  # noqa: BLE001 - reported per case
            print(json.dumps({"case": name, "error": f"{type(err).__name__}: {err}"}))
    np.savez(OUT, **saved)


if __name__ == "__main__":
    main()
