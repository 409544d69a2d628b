"""credit on Keras's JAX backend, run in a process of its own (tests/test_jax_backend.py).

Usage: ``KERAS_BACKEND=jax python jax_checks.py MODE OUT`` with MODE one of:

- ``reference``: the gradients of backprop, FA (feedback matrices set to given values)
  and DFA (likewise) on a small residual functional model, with the model's weights,
  the batch and the matrices, written to ``OUT`` (an .npz) for the numpy reference in
  the test; plus, as JSON lines on stdout, a DFA save/load round trip and the messages
  of the refusals (a subclassed model, an unsupported method).
- ``train``: every method that runs on JAX trains a small MLP on sklearn's digits with
  ``fit``; one JSON line per method with its loss before and after.
- ``import``: ``import credit`` with TensorFlow made unimportable.
"""

import json
import os
import sys
import tempfile

import numpy as np

MODE, OUT = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None

if MODE == "import":
    sys.modules["tensorflow"] = None  # any import of tensorflow fails
    import credit  # noqa: E402

    print(json.dumps({"imported": credit.__file__,
                      "tensorflow": "tensorflow" in sys.modules
                      and sys.modules["tensorflow"] is not None}))
    sys.exit(0)

import keras  # noqa: E402
from keras import layers as L  # noqa: E402

import credit  # noqa: E402

assert keras.config.backend() == "jax", keras.config.backend()


def residual_model():
    """Dense -> [Dense, Dense] + skip (Add) -> Dense softmax, weights from a seed."""
    i = keras.Input((8,))
    h = L.Dense(6, activation="relu", name="d0")(i)
    a = L.Dense(6, activation="tanh", name="d1")(h)
    b = L.Dense(6, name="d2")(a)
    s = L.Add(name="add")([b, h])
    o = L.Dense(3, activation="softmax", name="out")(s)
    model = credit.Model(i, o)
    rng = np.random.default_rng(1)
    for layer in model.layers:
        if layer.weights:
            layer.set_weights([rng.normal(0, 0.5, size=w.shape).astype("float32")
                               for w in layer.weights])
    return model


def reference(out):
    model = residual_model()
    model.compile("sgd", "sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 8)).astype("float32")
    y = rng.integers(0, 3, size=(5,))
    saved = {"x": x, "y": y}
    for layer in model.layers:
        for k, w in enumerate(layer.get_weights()):
            saved[f"w/{layer.name}/{k}"] = w
    for name in ("backprop", "feedback_alignment", "direct_feedback_alignment"):
        method = credit.get({"name": name, "seed": 3})
        credit.model.bind(method, model)
        for k, v in method.feedback_matrices.items():
            value = np.random.default_rng(len(k)).normal(0, 0.5, size=v.shape)
            v.assign(value.astype("float32"))
            saved[f"b/{name}/{k}"] = np.asarray(v.value)
        grads = credit.compute_gradients(model, x, y, method=method).gradients
        for v, g in zip(model.trainable_variables, grads):
            saved[f"g/{name}/{v.path}"] = np.asarray(g)
        print(json.dumps({"method": name, "points": list(method.points),
                          "transported": list(method.transported)}))
    np.savez(out, **saved)

    # Save and load restore DFA's matrices (and so its gradients).
    keras.utils.set_random_seed(0)
    m = credit.Sequential([keras.Input((8,)), L.Dense(16, activation="relu"),
                           L.Dense(16, activation="relu"), L.Dense(3, activation="softmax")])
    m.compile("adam", "sparse_categorical_crossentropy", method={"name": "dfa", "seed": 7})
    xs = rng.normal(size=(32, 8)).astype("float32")
    ys = np.arange(32) % 3
    m.fit(xs, ys, epochs=1, verbose=0)
    for v in m.method.feedback_matrices.values():  # not what a fresh bind would draw
        v.assign(np.asarray(v.value) * 2 + 1)
    path = os.path.join(tempfile.mkdtemp(), "dfa.keras")
    m.save(path)
    r = keras.models.load_model(path)
    g1 = credit.compute_gradients(m, xs, ys).gradients
    g2 = credit.compute_gradients(r, xs, ys).gradients
    print(json.dumps({
        "load": r.method.name,
        "matrices": max(float(np.abs(np.asarray(v.value)
                                     - np.asarray(m.method.feedback_matrices[k].value)).max())
                        for k, v in r.method.feedback_matrices.items()),
        "names": sorted(r.method.feedback_matrices) == sorted(m.method.feedback_matrices),
        "gradients": max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
                         for a, b in zip(g1, g2))}))

    # Refusals.
    class Sub(credit.Model):
        def __init__(self):
            super().__init__()
            self.a = L.Dense(4, activation="relu")
            self.b = L.Dense(2)

        def call(self, x):
            return self.b(self.a(x))

    sub = Sub()
    sub(np.zeros((1, 3), "float32"))
    seq = credit.Sequential([keras.Input((3,)), L.Dense(4), L.Dense(2)])
    for what, make in (("subclassed", lambda: sub.compile("sgd", "mse", method="fa")),
                       ("kolen_pollack", lambda: seq.compile("sgd", "mse",
                                                              method="kolen_pollack"))):
        try:
            make()
            print(json.dumps({"refused": what, "message": None}))
        except Exception as err:  # noqa: BLE001 - the message is what is checked
            print(json.dumps({"refused": what, "type": type(err).__name__,
                              "message": str(err)}))
    print(json.dumps({"after_refusal": seq.method.name}))


def train():
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data[:1024] / 16.0).astype("float32")
    y = digits.target[:1024]
    from credit.backends import jax as jax_step

    for name in jax_step.METHODS:
        keras.utils.set_random_seed(0)
        model = credit.Sequential([keras.Input((64,)), L.Dense(64, activation="relu"),
                                   L.Dense(64, activation="relu"),
                                   L.Dense(10, activation="softmax")])
        model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy",
                      method=name)
        before = float(model.evaluate(x, y, verbose=0))
        model.fit(x, y, epochs=3, batch_size=32, verbose=0)
        after = float(model.evaluate(x, y, verbose=0))
        print(json.dumps({"method": model.method.name, "before": before, "after": after}))


if MODE == "reference":
    reference(OUT)
elif MODE == "train":
    train()
else:
    raise SystemExit(f"unknown mode {MODE!r}")
