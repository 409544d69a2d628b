"""Tests of synthetic gradients (DNI) and cDNI, each against a reference.

Oracles: a synthesizer that outputs the true gradient reproduces backprop's update;
the paper's theorem (linear regression, linear conditioned synthesizer at the output)
converges to numpy's least-squares solution; a deep linear net reaches backprop's loss.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import credit  # noqa: E402
from credit.methods import SyntheticGradients  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from state_checks import untracked_state  # noqa: E402


def mlp(inputs, hidden, outputs, activation="relu", output_activation="softmax", seed=0):
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((inputs,))]
    layers += [keras.layers.Dense(h, activation=activation) for h in hidden]
    layers += [keras.layers.Dense(outputs, activation=output_activation)]
    return credit.Sequential(layers)


def classification(n=64, d=12, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype("float32")
    y = rng.integers(0, classes, size=n)
    return x, y


def regression(n=64, d=6, o=3, noise=0.3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype("float32")
    w = rng.normal(size=(d, o)) / np.sqrt(d)
    y = (x @ w + noise * rng.normal(size=(n, o))).astype("float32")
    return x, y


def full_batch(x, y):
    return tf.data.Dataset.from_tensors((x, y)).repeat()


def kernels(model):
    return [layer.kernel.numpy() for layer in model.layers if hasattr(layer, "kernel")]


def assert_same_weights(a, b, atol=1e-6):
    for u, v in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-5, atol=atol)


# -- names, configuration, validation ---------------------------------------------------


def test_names_aliases_and_cdni_preset():
    for name in ("synthetic_gradients", "sg", "DNI"):
        method = credit.get(name)
        assert type(method) is SyntheticGradients and not method.conditioned
    assert credit.get("cdni").conditioned and credit.get("conditioned_dni").conditioned
    assert {"synthetic_gradients", "cdni"} <= set(credit.available())
    assert SyntheticGradients.log_names == ("sg_loss",)


def test_get_config_round_trip():
    method = SyntheticGradients(seed=3, synthesizer="mlp", conditioned=True, target="true",
                                at=[0, -1], update_probability=0.25, warmup_steps=7,
                                hidden_units=[32, 16], hidden_filters=(8,), kernel_size=3,
                                activation="tanh", optimizer="sgd", learning_rate=0.05)
    config = method.get_config()
    assert config["name"] == "synthetic_gradients" and config["at"] == [0, -1]
    again = credit.get(config)
    assert type(again) is SyntheticGradients and again.get_config() == config
    assert credit.get(credit.get("cdni").get_config()).conditioned
    assert credit.get({"name": "cdni", "target": "true"}).conditioned


@pytest.mark.parametrize("kwargs, words", [
    ({"synthesizer": "conv"}, ["synthesizer", "'conv'", "'linear'", "'mlp'"]),
    ({"target": "bootstrapped"}, ["target", "'bootstrapped'", "'bootstrap'", "'true'"]),
    ({"at": []}, ["at", "[]"]),
    ({"at": [1.5]}, ["at", "1.5"]),
    ({"update_probability": 1.5}, ["update_probability", "1.5", "[0, 1]"]),
    ({"warmup_steps": -1}, ["warmup_steps", "-1"]),
    ({"hidden_units": []}, ["hidden_units", "[]"]),
    ({"kernel_size": 0}, ["kernel_size", "0"]),
    ({"conditioned": "yes"}, ["conditioned", "'yes'"]),
    ({"optimizer": "adamm"}, ["optimizer", "'adamm'"]),
    ({"optimizer": 3}, ["optimizer", "3"]),
    ({"learning_rate": -0.1}, ["learning_rate", "-0.1"]),
    ({"activation": "relux"}, ["activation", "'relux'"]),
    ({"seed": "a"}, ["seed", "'a'"]),
])
def test_bad_hyperparameters_are_named(kwargs, words):
    with pytest.raises(ValueError) as info:
        SyntheticGradients(**kwargs)
    for word in words:
        assert word in str(info.value)


def test_at_out_of_range_is_reported_at_compile():
    model = mlp(4, [5], 2)
    with pytest.raises(ValueError, match=r"at=\[5\].*2 blocks"):
        model.compile("sgd", "sparse_categorical_crossentropy",
                      method=SyntheticGradients(at=[5]))


# -- oracles: exact agreement with backprop ---------------------------------------------


class OracleSG(SyntheticGradients):
    """A 'synthesizer' that outputs the true gradient dL/dh_k (backprop's chain)."""

    def synthetic_signal(self, name, trace):
        return trace.loss_gradients()[name]


def one_step(model, method, x, y, loss="sparse_categorical_crossentropy"):
    model.compile(keras.optimizers.SGD(0.5), loss, method=method)
    model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    return model


def test_oracle_synthesizer_reproduces_backprop():
    x, y = classification()
    reference = one_step(mlp(12, [10, 9, 8], 4), credit.get("backprop"), x, y)
    model = one_step(mlp(12, [10, 9, 8], 4), OracleSG(), x, y)
    assert_same_weights(model, reference)
    assert list(model.method.synthesizers) == [layer.name for layer in model.layers[:-1]]


def test_exact_linear_synthesizer_reproduces_backprop():
    """A real linear synthesizer given the weights of the true gradient.

    Under a linear output with mean squared error, the per-example gradient at the last
    hidden block is linear in h and y: (2/o) (h W W^T + b W^T - y W^T), o outputs.
    """
    x, y = regression(d=6, o=3)
    reference = one_step(mlp(6, [7, 5], 3, output_activation=None), "backprop", x, y, "mse")
    model = mlp(6, [7, 5], 3, output_activation=None)
    method = SyntheticGradients(at=[1], conditioned=True, synthesizer="linear")
    model.compile(keras.optimizers.SGD(0.5), "mse", method=method)
    w, b = [v.numpy() for v in model.layers[-1].weights]
    o = w.shape[1]
    assert list(method.synthesizers) == [model.layers[1].name]
    synthesizer = method.synthesizers[model.layers[1].name]
    dense = synthesizer.stack[-1]
    dense.kernel.assign(np.vstack([w @ w.T, -w.T]) * 2 / o)
    dense.bias.assign(b @ w.T * 2 / o)
    table = credit.alignment(model, x, y).set_index("layer")
    assert table.loc[model.layers[1].name, "signal_cosine"] == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(table.update_cosine, 1.0, atol=1e-5)
    model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    assert_same_weights(model, reference)


def test_one_boundary_mid_stack_zero_below_backprop_above():
    """A single synthesizer in the middle: its zero-initialised output gives zero signals
    at and below it on the first step, while the blocks above get backprop's update."""
    x, y = classification()
    reference = one_step(mlp(12, [10, 9, 8], 4), "backprop", x, y)
    model = mlp(12, [10, 9, 8], 4)
    before = model.get_weights()
    method = SyntheticGradients(at=[1], synthesizer="mlp", hidden_units=[8], target="true")
    one_step(model, method, x, y)
    assert list(method.synthesizers) == [model.layers[1].name]
    after, expected = model.get_weights(), reference.get_weights()
    for i in range(4):  # kernels and biases of blocks 0 and 1: unchanged
        np.testing.assert_array_equal(after[i], before[i])
    for i in range(4, 8):  # blocks 2 and 3: exactly backprop
        np.testing.assert_allclose(after[i], expected[i], rtol=1e-5, atol=1e-6)


def test_warmup_steps_give_backprop_while_synthesizers_learn():
    x, y = classification()
    reference = one_step(mlp(12, [10, 8], 4), "backprop", x, y)
    model = one_step(mlp(12, [10, 8], 4), SyntheticGradients(warmup_steps=1), x, y)
    assert_same_weights(model, reference)
    assert int(model.method.step.numpy()) == 1
    # The top synthesizer learned from the true gradient (its zero-initialised output
    # layer moved; the one below regresses onto its still-zero signal, bootstrap) ...
    top = model.method.synthesizers[model.layers[1].name]
    assert np.abs(top.stack[-1].kernel.numpy()).max() > 0
    # ... and after the warmup their (imperfect) signals take over.
    model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    reference.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    assert not np.allclose(kernels(model)[0], kernels(reference)[0], atol=1e-6)


# -- the paper's results ----------------------------------------------------------------


def test_theorem_linear_regression_converges_to_least_squares():
    """Czarnecki et al. 2017: a linear conditioned SG at the output of a linear regression,
    trained on the true gradient, converges to the least-squares solution."""
    x, y = regression(n=256, d=5, o=2, noise=0.5, seed=1)
    y = y + 1.0
    design = np.hstack([x, np.ones((len(x), 1))])
    solution = np.linalg.lstsq(design, y, rcond=None)[0]
    keras.utils.set_random_seed(0)
    model = credit.Sequential([keras.Input((5,)), keras.layers.Dense(2)])
    method = credit.get({"name": "cdni", "at": [-1], "target": "true",
                         "optimizer": "sgd", "learning_rate": 0.1})
    model.compile(keras.optimizers.SGD(0.1), "mse", method=method)
    history = model.fit(full_batch(x, y), steps_per_epoch=100, epochs=10, shuffle=False,
                        verbose=0)
    dense = model.layers[0]
    weights = np.vstack([dense.kernel.numpy(), dense.bias.numpy()[None]])
    error = np.linalg.norm(weights - solution) / np.linalg.norm(solution)
    print(f"least-squares relative error: {error:.2e}")
    assert error < 1e-3
    # The output layer carries the synthesizer.
    assert list(method.synthesizers) == [model.layers[0].name]
    assert history.history["sg_loss"][-1] < 1e-3 * history.history["sg_loss"][0]


def test_deep_linear_network_reaches_backprops_loss():
    """Four linear hidden blocks, a linear synthesizer h A + y B + c at each, bootstrap.

    (Unconditioned linear synthesizers, h A + c, stay far from backprop's loss here.)
    """
    x, y = regression(n=512, d=8, o=4, noise=0.3, seed=0)

    def train(method, steps):
        keras.utils.set_random_seed(1)
        model = credit.Sequential([keras.Input((8,))]
                                  + [keras.layers.Dense(16) for _ in range(4)]
                                  + [keras.layers.Dense(4)])
        model.compile(keras.optimizers.SGD(0.05), "mse", method=method)
        history = model.fit(full_batch(x, y), steps_per_epoch=steps // 10, epochs=10,
                            shuffle=False, verbose=0)
        return model.evaluate(x, y, verbose=0), history.history

    backprop_loss, _ = train("backprop", 1500)
    method = credit.get({"name": "cdni", "synthesizer": "linear", "target": "bootstrap"})
    sg_loss, history = train(method, 1500)
    ratio = sg_loss / backprop_loss
    print(f"deep linear: backprop {backprop_loss:.6f}, sg {sg_loss:.6f}, ratio {ratio:.6f}")
    assert len(method.synthesizers) == 4
    assert abs(ratio - 1) < 0.01
    assert history["sg_loss"][-1] < 1e-3 * history["sg_loss"][0]


@pytest.mark.slow  # 34 s: two full trainings on digits
def test_cdni_classifies_digits_nearly_as_well_as_backprop():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16).astype("float32")
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.3, random_state=0)

    def accuracy(method):
        model = mlp(64, [64, 64], 10)
        model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"],
                      method=method)
        history = model.fit(x_train, y_train, epochs=20, batch_size=32, verbose=0)
        return model.evaluate(x_test, y_test, verbose=0)[1], history

    backprop, _ = accuracy("backprop")
    cdni, history = accuracy("cdni")
    print(f"digits test accuracy: backprop {backprop:.4f}, cdni {cdni:.4f}")
    assert cdni > backprop - 0.03
    sg_loss = history.history["sg_loss"]  # regression onto moving targets: not monotone
    assert len(sg_loss) == 20 and np.all(np.isfinite(sg_loss))


# -- mechanics ----------------------------------------------------------------------------


def test_no_gradient_flows_from_synthesizer_targets_into_the_blocks():
    x, y = classification()
    x, y = tf.constant(x), tf.constant(y)
    model = mlp(12, [10, 9, 8], 4)
    method = SyntheticGradients(conditioned=True)
    model.compile("sgd", "sparse_categorical_crossentropy", method=method)
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)  # non-zero synthesizers
    # The signals the next step will use (the synthesizers change only after it).
    trace = credit.model.record(model, x, y, method=method)
    signals = method.signals(trace)
    expected = [trace.tape.gradient(trace.outputs[name],
                                    model.get_layer(name).trainable_variables,
                                    output_gradients=signals[name])
                for name in trace.points]
    assert list(trace.points) == [layer.name for layer in model.layers[:-1]]
    with tf.GradientTape(persistent=True) as outer:
        out = credit.compute_gradients(model, x, y)
    sg_loss = out.logs["sg_loss"]
    assert float(sg_loss) > 0
    # The regression loss reaches only the synthesizers, never the blocks ...
    assert all(g is None for g in outer.gradient(sg_loss, model.trainable_variables))
    first = method.synthesizers[model.layers[0].name]
    synthesizer_grads = outer.gradient(sg_loss, first.trainable_variables)
    assert all(g is not None for g in synthesizer_grads)
    # ... and the blocks' gradients are exactly the VJPs of their synthetic signals.
    for k, grads in enumerate(expected):
        for g, e in zip(out.gradients[2 * k: 2 * k + 2], grads, strict=True):
            np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-7)


def test_sg_loss_decreases_onto_fixed_targets():
    """With the blocks frozen (learning rate 0) the targets stop moving (the top one is
    the true gradient; bootstrap targets below follow it) and, in a linear net where a
    linear conditioned synthesizer can represent them, the regression converges."""
    x, y = regression()
    model = mlp(6, [7, 5], 3, activation=None, output_activation=None)
    before = model.get_weights()
    model.compile(keras.optimizers.SGD(0.0), "mse", method="cdni")
    history = model.fit(full_batch(x, y), steps_per_epoch=40, epochs=5, shuffle=False,
                        verbose=0)
    sg_loss = history.history["sg_loss"]
    assert all(b < a for a, b in zip(sg_loss, sg_loss[1:])), sg_loss
    assert sg_loss[-1] < 0.05 * sg_loss[0], sg_loss
    for u, v in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(u, v)


def test_update_probability_zero_freezes_and_one_updates_every_block():
    x, y = classification()
    model = mlp(12, [10, 8], 4)
    before = [w.copy() for w in model.get_weights()]
    model.compile("adam", "sparse_categorical_crossentropy",
                  method=SyntheticGradients(update_probability=0.0))
    history = model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    for u, v in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(u, v)
    assert history.history["sg_loss"][-1] > 0  # the synthesizers still learned

    model = mlp(12, [10, 8], 4)
    before = kernels(model)
    model.compile("sgd", "sparse_categorical_crossentropy",
                  method=SyntheticGradients(update_probability=1.0))
    model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    for u, v in zip(before, kernels(model), strict=True):
        assert np.abs(u - v).max() > 0


def test_stochastic_updates_mask_blocks_and_keep_the_true_output_gradient():
    x, y = classification(n=32)
    x, y = tf.constant(x), tf.constant(y)
    model = mlp(12, [10, 8], 4)
    method = SyntheticGradients(update_probability=0.5, seed=4)
    model.compile("sgd", "sparse_categorical_crossentropy", method=method)
    reference = credit.get({"name": "backprop", "blockwise": True})
    truth = credit.compute_gradients(model, x, y, method=reference).gradients
    step = tf.function(lambda: credit.compute_gradients(model, x, y).gradients)
    updated = np.zeros((40, 3), dtype=bool)
    for i in range(40):
        grads = step()
        for k in range(3):
            kernel = grads[2 * k].numpy()
            updated[i, k] = np.abs(kernel).max() > 0
        if updated[i, 2]:  # the softmax output block: exactly the true gradient
            np.testing.assert_allclose(grads[4], truth[4], rtol=1e-4, atol=1e-7)
    assert int(method.step.numpy()) == 40
    fraction = updated.mean(axis=0)
    assert np.all((fraction > 0.25) & (fraction < 0.75)), fraction


def test_save_load_restores_synthesizers_and_resumes_exactly(tmp_path):
    x, y = classification(n=96)

    def fresh():
        model = mlp(12, [10, 8], 4, seed=0)
        method = credit.get({"name": "cdni", "synthesizer": "mlp", "hidden_units": [16],
                             "update_probability": 0.7, "warmup_steps": 4, "seed": 5})
        model.compile("adam", "sparse_categorical_crossentropy", method=method)
        return model

    def fit(model, epochs):
        return model.fit(x, y, epochs=epochs, batch_size=32, shuffle=False, verbose=0)

    straight = fresh()
    fit(straight, 4)

    first = fresh()
    fit(first, 2)
    path = tmp_path / "sg.keras"
    first.save(path)
    loaded = keras.models.load_model(path)
    method = loaded.method
    assert type(method) is SyntheticGradients and method.get_config() == first.method.get_config()
    assert int(method.step.numpy()) == 6
    # The synthesizers, their optimizer and the counters live on the saved state.
    state = method.state
    assert list(method.synthesizers.values()) == list(state.synthesizer_layers)
    assert method.optimizer_instance is state.synthesizer_optimizer
    assert method.step is state.step and untracked_state(method) == []
    for a, b in zip(first.method.synthesizers.values(), method.synthesizers.values(),
                    strict=True):
        for u, v in zip(a.get_weights(), b.get_weights(), strict=True):
            np.testing.assert_array_equal(u, v)
    for a, b in zip(first.method.state.weights, method.state.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    old, new = first.method.optimizer_instance, method.optimizer_instance
    assert int(new.iterations.numpy()) == 6
    for a, b in zip(old.variables, new.variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())

    fit(loaded, 2)
    assert_same_weights(loaded, straight, atol=1e-6)
    for a, b in zip(straight.method.state.weights, method.state.weights, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


def test_conv_blocks_get_convolutional_synthesizers():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 3, size=48)
    keras.utils.set_random_seed(0)
    model = credit.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(4, 3, padding="same", activation="relu"),
        keras.layers.Conv2D(5, 3, activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(3, activation="softmax"),
    ])
    method = credit.get({"name": "cdni", "synthesizer": "mlp", "hidden_filters": [6],
                         "hidden_units": [8], "kernel_size": 3})
    model.compile("adam", "sparse_categorical_crossentropy", method=method)
    first, second = method.synthesizers.values()
    assert list(method.synthesizers) == [model.layers[0].name, "flatten"] or \
        len(method.synthesizers) == 2
    assert [type(layer) for layer in first.stack] == [keras.layers.Conv2D] * 2
    assert first.stack[0].kernel.shape == (3, 3, 4 + 3, 6)  # h channels + one-hot label
    assert first.stack[-1].filters == 4
    assert [type(layer) for layer in second.stack] == [keras.layers.Dense] * 2
    before = kernels(model)
    history = model.fit(x, y, epochs=3, batch_size=16, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert history.history["sg_loss"][-1] > 0
    assert all(np.abs(u - v).max() > 0 for u, v in zip(before, kernels(model)))
