"""Keras's own model and callback tests, run with credit's models in place of Keras's.

Keras ships its tests in the wheel. ``tests/keras_suite/credit_substitution.py`` is a
pytest plugin that imports them with ``credit.Sequential``, ``credit.Model`` and credit's
functional class wherever they name Keras's, and sets the default method of
``compile``; these tests run it in a subprocess (one process for all the files, as a
user's program would have them) and read its report. A Keras upgrade that breaks
credit's models fails here.

- By default, a subset that runs in well under a minute, in one process:
  ``sequential_test.py`` and ``learning_rate_scheduler_test.py`` under backprop, and
  ``reduce_lr_on_plateau_test.py`` under DFA. Both callback files fit
  ``Sequential([Dense(5), Dense(2)])`` without a ``keras.Input``: Keras builds such a
  model inside the first traced step, and credit's own train step must follow.
- Marked slow: every model and callback test, under backprop (all must pass) and under
  DFA (all must pass but those in ``DFA_EXPECTED_FAILURES``, each with the reason it
  depends on backprop's exact numbers).

Measured on 2 CPU cores: the subset takes 17 s (40 s while other TensorFlow jobs share
the cores; about half of it is TensorFlow's start-up and collection); the full run
(203 tests) about 2 min under backprop and 2 min under DFA (3 min each under load, when
plain Keras took 2.5 min).
"""

import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest

import credit

KERAS_SRC = pathlib.Path(keras.__file__).resolve().parent / "src"
ROOT = pathlib.Path(__file__).resolve().parent.parent
PLUGIN_DIR = pathlib.Path(__file__).resolve().parent / "keras_suite"

MODEL_TESTS = ["models/sequential_test.py", "models/model_test.py",
               "models/functional_test.py"]

# Keras test files that do not apply to credit, with the reason.
NOT_APPLICABLE = {
    "callbacks/orbax_checkpoint_test.py":
        "needs the orbax package (Keras's optional Orbax checkpointing), which neither "
        "Keras nor credit installs; under plain Keras it fails with an ImportError too",
}

# Every callback test file of the installed Keras: a new one after an upgrade joins.
CALLBACK_TESTS = sorted(
    p.relative_to(KERAS_SRC).as_posix() for p in (KERAS_SRC / "callbacks").glob("*_test.py")
    if p.relative_to(KERAS_SRC).as_posix() not in NOT_APPLICABLE)

# The fast subset: file -> method. The callback files fit a model without a keras.Input.
SUBSET = {"models/sequential_test.py": "backprop",
          "callbacks/learning_rate_scheduler_test.py": "backprop",
          "callbacks/reduce_lr_on_plateau_test.py": "dfa"}

# Tests that fail under DFA because they check backprop's exact numbers: node id -> why.
# Empty: all 203 pass under DFA (Keras 3.15). Of them, 97 run credit's own train step
# and 22 train a model with a hidden block, where DFA sends e B to a feedback point; the
# others build, save, call or fit models without a hidden block (the output layer trains
# on its true gradient under DFA too) or check what fit does rather than the weights it
# ends with.
DFA_EXPECTED_FAILURES = {}


def run_keras_tests(files, method, tmp_path):
    """Run Keras's test ``files`` (relative to ``keras/src``) with credit's models.

    Args:
        files: test files, relative to ``keras/src``.
        method: the default method of ``compile``: a name, or a dict from file to name.
        tmp_path: where the tests run and the report is written.

    Returns:
        The plugin's report: a dict from node id to ``{"outcome", "message",
        "credit_models", "credit_train_steps", "credit_points"}``.
    """
    if isinstance(method, dict):
        method = ";".join(["backprop"] + [f"{f}={m}" for f, m in method.items()])
    report = tmp_path / "keras_tests.json"
    env = dict(os.environ)
    env.update(
        KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3",
        CREDIT_KERAS_SUITE_METHOD=method, CREDIT_KERAS_SUITE_REPORT=str(report),
        # This checkout's credit and the plugin, whatever credit is installed.
        PYTHONPATH=os.pathsep.join(
            [str(ROOT), str(PLUGIN_DIR)] + [p for p in [env.get("PYTHONPATH")] if p]))
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               # Keras's tests, not this project's configuration (setup.cfg, conftest).
               "-c", os.devnull, "--rootdir", str(KERAS_SRC),
               "-p", "credit_substitution", *[str(KERAS_SRC / f) for f in files]]
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=1800)
    if not report.exists():
        pytest.fail(f"Keras's tests did not run (exit code {proc.returncode}):\n"
                    f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    outcomes = json.loads(report.read_text())
    ran = {node.split("::")[0] for node in outcomes}
    missing = sorted(set(files) - ran)
    assert not missing, f"no test ran from {missing}:\n{proc.stdout[-4000:]}"
    outcomes["__output__"] = proc.stdout[-6000:]
    return outcomes


def failures(outcomes):
    return {n: o.get("message", "") for n, o in outcomes.items()
            if n != "__output__" and o["outcome"] == "failed"}


def assert_failures(outcomes, expected):
    """No failures but ``expected`` (node ids), which all fail; every file's tests built
    credit models."""
    got = failures(outcomes)
    new = {n: m for n, m in got.items() if n not in expected}
    fixed = sorted(n for n in expected if n in outcomes and n not in got)
    assert not new, ("Keras tests failing with credit's models:\n"
                     + "\n".join(f"  {n}: {m}" for n, m in sorted(new.items()))
                     + f"\n\nend of the output:\n{outcomes['__output__']}")
    assert not fixed, f"listed as expected failures, but now pass (remove them): {fixed}"
    files = {n.split("::")[0] for n in outcomes if n != "__output__"}
    for name in sorted(files):
        built = sum(o.get("credit_models", 0) for n, o in outcomes.items()
                    if n.split("::")[0] == name and n != "__output__")
        assert built, (f"{name}: no test built a credit model; the substitution did not "
                       "take place (did Keras move its model classes?)")


def test_keras_sequential_and_no_input_callback_tests_pass(tmp_path):
    outcomes = run_keras_tests(list(SUBSET), SUBSET, tmp_path)
    assert_failures(outcomes, {n: r for n, r in DFA_EXPECTED_FAILURES.items()
                               if n in outcomes and SUBSET[n.split("::")[0]] == "dfa"})
    dfa = [o for n, o in outcomes.items()
           if n != "__output__" and SUBSET[n.split("::")[0]] == "dfa"]
    assert all(o["method"] == "dfa" for o in dfa)
    # Credit's own train step ran, and DFA had a point to send its signal to.
    assert sum(o.get("credit_train_steps", 0) for o in dfa) > 0
    assert any(o.get("credit_points", 0) > 0 for o in dfa)


@pytest.mark.slow
def test_every_keras_model_and_callback_test_passes_under_backprop(tmp_path):
    outcomes = run_keras_tests(MODEL_TESTS + CALLBACK_TESTS, "backprop", tmp_path)
    assert_failures(outcomes, {})


@pytest.mark.slow
def test_keras_model_and_callback_tests_under_dfa_fail_only_where_listed(tmp_path):
    outcomes = run_keras_tests(MODEL_TESTS + CALLBACK_TESTS, "dfa", tmp_path)
    assert_failures(outcomes, DFA_EXPECTED_FAILURES)
    trained = [n for n, o in outcomes.items()
               if n != "__output__" and o.get("credit_points", 0) > 0]
    assert len(trained) >= 10, f"only {len(trained)} tests trained with DFA points"


# -- the cases behind earlier failures, checked directly ---------------------------------

METHODS = ["backprop", "fa", "dfa", "sg"]


def seeded_dense(units, seed, **kwargs):
    # Seeded initializers: the same weights whenever the layer is built.
    return keras.layers.Dense(units, kernel_initializer=keras.initializers.GlorotUniform(seed),
                              bias_initializer="zeros", **kwargs)


def regression(n=32):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 3)).astype("float32")
    return x, np.stack([x[:, 0] * x[:, 1], np.tanh(x[:, 2])], axis=1).astype("float32")


@pytest.mark.parametrize("method", METHODS)
def test_a_sequential_without_input_trains_like_one_with_input(method):
    """``Sequential([Dense(5), Dense(2)])`` is built inside the first traced step; it
    must end where the same model given a ``keras.Input`` ends (and, under backprop,
    where Keras's own Sequential ends)."""
    x, y = regression()
    config = {"name": method, "seed": 0} if method != "backprop" else method

    def fit(model, **compile_kwargs):
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", **compile_kwargs)
        history = model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
        assert np.isfinite(history.history["loss"]).all()
        return model.get_weights()

    def layers():
        return [seeded_dense(5, 1, activation="relu"), seeded_dense(2, 2)]

    without_input = credit.Sequential(layers())
    got = fit(without_input, method=config)
    expected = fit(credit.Sequential([keras.Input((3,))] + layers()), method=config)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)
    if method == "backprop":
        for g, e in zip(got, fit(keras.Sequential(layers())), strict=True):
            np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)
    elif method != "fa":
        assert without_input.method.points  # DFA and SG put a point on the hidden block


class OptionalInputNet(credit.Model):
    """Takes ``{"a": x, "b": x or None}``; ``b`` is added when it is given."""

    def __init__(self):
        super().__init__()
        self.hidden = seeded_dense(4, 1, activation="relu")
        self.out = seeded_dense(2, 2)

    def call(self, inputs):
        a, b = inputs["a"], inputs.get("b")
        return self.out(self.hidden(a if b is None else a + b))


@pytest.mark.parametrize("method", METHODS)
def test_fit_with_an_optional_input_left_out(method):
    """An optional input given as None: the model trains as if it were zeros."""
    x, y = regression()
    config = {"name": method, "seed": 0} if method != "backprop" else method
    weights = []
    for b in (None, np.zeros_like(x)):
        model = OptionalInputNet()
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", method=config)
        model.fit({"a": x, "b": b}, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
        weights.append(model.get_weights())
    for left_out, zeros in zip(*weights, strict=True):
        np.testing.assert_allclose(left_out, zeros, rtol=1e-5, atol=1e-6)
