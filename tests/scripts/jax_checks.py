"""credit on Keras's JAX backend, run in a process of its own (tests/test_jax_backend.py).

Usage: ``KERAS_BACKEND=jax python jax_checks.py MODE OUT`` with MODE one of:

- ``reference``: the gradients of backprop, FA (feedback matrices set to given values)
  and DFA (likewise) on a small residual functional model, with the model's weights,
  the batch and the matrices, written to ``OUT`` (an .npz) for the numpy reference in
  the test; plus, as JSON lines on stdout, a DFA save/load round trip and the messages
  of the refusals (a subclassed model, an unsupported method).
- ``train``: every method that runs on JAX trains a small MLP on sklearn's digits with
  ``fit``; one JSON line per method with its loss before and after.
- ``data_parallel``: every method that runs on JAX, fit on one device and under
  ``keras.distribution.DataParallel`` over all devices; one JSON line per method.

TensorFlow is made unimportable first (``sys.modules["tensorflow"] = None``): credit on
JAX must neither import nor use it.
"""

import json
import os
import sys
import tempfile

sys.modules["tensorflow"] = None  # any import of tensorflow fails from here on

import numpy as np  # noqa: E402

MODE, OUT = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None

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
                       ("through_time", lambda: seq.compile(
                           "sgd", "mse", method="synthetic_gradients_through_time"))):
        try:
            make()
            print(json.dumps({"refused": what, "message": None}))
        except Exception as err:  # noqa: BLE001 - the message is what is checked
            print(json.dumps({"refused": what, "type": type(err).__name__,
                              "message": str(err)}))
    print(json.dumps({"after_refusal": seq.method.name}))
    weighted_drtp(rng, saved)
    np.savez(out, **saved)
    conv_and_nested(rng)
    batchwise_counter(rng)
    print(json.dumps({"tensorflow_importable": sys.modules.get("tensorflow") is not None}))


def weighted_drtp(rng, saved):
    """DRTP with sample weights on one hidden layer: its kernel's gradient, with the
    weights, the batch and the matrix, for the numpy reference."""
    keras.utils.set_random_seed(0)
    model = credit.Sequential([keras.Input((4,)), L.Dense(5, activation="tanh"),
                               L.Dense(3, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy",
                  method={"name": "drtp", "seed": 2})
    x = rng.normal(size=(6, 4)).astype("float32")
    y = np.arange(6) % 3
    w = rng.uniform(0, 2, size=6).astype("float32")
    grads = credit.compute_gradients(model, x, y, sample_weight=w).gradients
    (b,) = model.method.feedback_matrices.values()
    saved.update({"drtp/x": x, "drtp/y": y, "drtp/w": w, "drtp/B": np.asarray(b.value),
                  "drtp/W0": np.asarray(model.trainable_variables[0].value),
                  "drtp/b0": np.asarray(model.trainable_variables[1].value),
                  "drtp/g0": np.asarray(grads[0])})


def conv_and_nested(rng):
    """FA with B = W equals backprop on convolutions inside a nested model (the
    transports' adjoints are the layers' own input gradients)."""
    from credit import transports

    keras.utils.set_random_seed(0)
    inner = keras.Sequential([L.Conv2D(4, 3, padding="same"), L.BatchNormalization(),
                              L.Activation("relu")], name="inner")
    i = keras.Input((8, 8, 2))
    h = inner(L.Conv2D(4, 3, padding="same", activation="relu")(i))
    h = L.Flatten()(L.SeparableConv2D(4, 3, strides=2)(h))
    o = L.Dense(3, activation="softmax")(L.Dense(8, activation="relu")(h))
    model = credit.Model(i, o)
    model.compile("sgd", "sparse_categorical_crossentropy")
    x = rng.normal(size=(6, 8, 8, 2)).astype("float32")
    y = np.arange(6) % 3
    fa = credit.get({"name": "fa", "seed": 0})
    credit.model.bind(fa, model)
    g_random = credit.compute_gradients(model, x, y, method=fa).gradients
    for name, mats in fa.feedback_matrices.items():
        mats = mats if isinstance(mats, tuple) else (mats,)
        for b, k in zip(mats, transports.kernels(fa.graph.layers[name])):
            b.assign(k.value)
    g_fa = credit.compute_gradients(model, x, y, method=fa).gradients
    g_bp = credit.compute_gradients(model, x, y, method="backprop").gradients
    # fit with B = W: B holds W's own array until credit copies it (Keras's jitted step
    # donates its state's buffers, each once), and the step is SGD on g_fa.
    model.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy", method=fa)
    before = [np.asarray(v.value) for v in model.trainable_variables]
    model.fit(x, y, batch_size=6, epochs=1, shuffle=False, verbose=0)
    fit_step = max(float(np.abs(w - 0.1 * np.asarray(g) - np.asarray(v.value)).max())
                   for w, g, v in zip(before, g_fa, model.trainable_variables))
    print(json.dumps({"conv_fa_equals_backprop": max(
        float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in zip(g_fa, g_bp)),
        "fit_step_with_b_equal_to_w": fit_step,
        "random_b_differs": max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
                                for a, b in zip(g_random, g_bp)),
        "transported": list(fa.transported),
        "kernel_gradients": [float(np.abs(np.asarray(g)).max())
                             for v, g in zip(model.trainable_variables, g_bp)
                             if "kernel" in v.path]}))


def batchwise_counter(rng):
    """brSF's draws follow its step counter through fit (jitted) as eagerly, and the
    counter is saved."""
    keras.utils.set_random_seed(0)
    model = credit.Sequential([keras.Input((10,)), L.Dense(16, activation="relu"),
                               L.Dense(16, activation="tanh"),
                               L.Dense(4, activation="softmax")])
    model.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy",
                  method={"name": "brsf", "seed": 5})
    x = rng.normal(size=(32, 10)).astype("float32")
    y = rng.integers(0, 4, size=32)
    crossed = model.layers[1].name
    first = np.asarray(model.method.draw(crossed)[0])
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)  # 4 steps
    after_fit = int(model.method.step.value)
    second = np.asarray(model.method.draw(crossed)[0])
    w0 = [np.asarray(v.value) for v in model.trainable_variables]
    grads = credit.compute_gradients(model, x, y).gradients  # at step 4, advances it
    for v, w in zip(model.trainable_variables, w0):
        v.assign(w)
    model.method.step.assign(after_fit)
    model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)  # at step 4
    fit_vs_eager = max(float(np.abs(w - 0.1 * np.asarray(g) - np.asarray(v.value)).max())
                       for w, g, v in zip(w0, grads, model.trainable_variables))
    path = os.path.join(tempfile.mkdtemp(), "brsf.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    print(json.dumps({"brsf_step_after_fit": after_fit,
                      "brsf_draws_change": float(np.abs(first - second).max()),
                      "brsf_fit_vs_eager": fit_vs_eager,
                      "brsf_step_saved": int(loaded.method.step.value),
                      "brsf_step": int(model.method.step.value)}))


def head(name, classes):
    """``(units, activation, loss, targets)`` of a method's test task: kickback needs one
    scalar output (regression on the class index, scaled), the others classify."""
    if name == "kickback":
        return 1, None, "mse", lambda y: (y / (classes - 1)).astype("float32")[:, None]
    return classes, "softmax", "sparse_categorical_crossentropy", lambda y: y


def method_config(name, examples):
    """The method as the test compiles it: F³ needs the number of training examples
    (and fit with shuffle=False); forward gradients perturb the activities
    (Ren et al.'s lower-variance estimate: weight perturbation's one tangent per step on
    these 9k weights barely moves the loss in three epochs)."""
    if name == "delayed_feedback":
        return {"name": name, "examples": examples}
    if name == "forward_gradient":
        return {"name": name, "perturb": "activities"}
    return name


def train():
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data[:1024] / 16.0).astype("float32")
    from credit.backends import jax as jax_step

    for name in jax_step.METHODS:
        keras.utils.set_random_seed(0)
        units, activation, loss, targets = head(name, 10)
        y = targets(digits.target[:1024])
        model = credit.Sequential([keras.Input((64,)), L.Dense(64, activation="relu"),
                                   L.Dense(64, activation="relu"),
                                   L.Dense(units, activation=activation)])
        model.compile(keras.optimizers.Adam(3e-3), loss,
                      method=method_config(name, len(x)))
        before = float(model.evaluate(x, y, verbose=0))
        model.fit(x, y, epochs=3, batch_size=32, shuffle=False, verbose=0)
        after = float(model.evaluate(x, y, verbose=0))
        print(json.dumps({"method": model.method.name, "before": before, "after": after}))


def data_parallel():
    """Each JAX method trained by fit on one device, then under
    ``keras.distribution.DataParallel`` over every device (the test makes two CPU
    devices with XLA_FLAGS): one JSON line per method with the largest weight
    difference; the batch is split across the devices, the weights replicated."""
    import jax

    from credit.backends import jax as jax_step

    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 8)).astype("float32")
    labels = rng.integers(0, 3, 128)

    def trained(name):
        keras.utils.set_random_seed(0)
        units, activation, loss, targets = head(name, 3)
        model = credit.Sequential([keras.Input((8,)), L.Dense(16, activation="tanh"),
                                   L.Dense(16, activation="relu"),
                                   L.Dense(units, activation=activation)])
        model.compile(keras.optimizers.SGD(0.1), loss, method=method_config(name, len(x)))
        model.fit(x, targets(labels), batch_size=32, epochs=2, shuffle=False, verbose=0)
        return model

    single = {name: trained(name).get_weights() for name in jax_step.METHODS}
    keras.distribution.set_distribution(
        keras.distribution.DataParallel(devices=jax.devices()))
    for name in jax_step.METHODS:
        model = trained(name)
        diff = max(float(np.abs(a - b).max()) for a, b in zip(single[name],
                                                              model.get_weights()))
        sharding = model.trainable_variables[0].value.sharding
        print(json.dumps({"method": name, "devices": len(jax.devices()),
                          "mesh": int(sharding.mesh.size), "max_diff": diff}))


if MODE == "reference":
    reference(OUT)
elif MODE == "train":
    train()
elif MODE == "data_parallel":
    data_parallel()
else:
    raise SystemExit(f"unknown mode {MODE!r}")
