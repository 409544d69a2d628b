"""credit on Keras's JAX backend, checked against numpy.

The suite's own process runs TensorFlow, so each test runs ``tests/scripts/jax_checks.py``
in a process with ``KERAS_BACKEND=jax`` (and TensorFlow made unimportable) and checks
what it reports. Skipped where JAX is not installed.
"""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("jax") is None,
                                reason="jax is not installed")

SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "jax_checks.py")
JAX_METHODS = ["backprop", "feedback_alignment", "direct_feedback_alignment", "kickback",
               "kolen_pollack", "delayed_feedback", "synthetic_gradients", "local_losses",
               "direct_random_target_projection", "sign_symmetry",
               "fixed_random_sign_feedback", "batchwise_random_sign_feedback",
               "forward_gradient", "pepita", "forward_forward"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(mode, *args, backend="jax", timeout=600, **extra_env):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3",
               JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
               **extra_env)
    proc = subprocess.run([sys.executable, SCRIPT, mode, *args], capture_output=True,
                          text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def _softmax(z):
    p = np.exp(z - z.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def _numpy_gradients(data, method):
    """The weight gradients of ``method`` on the residual model, in numpy.

    d0 = relu(x W0 + b0); d1 = tanh(d0 W1 + b1); d2 = d1 W2 + b2; s = d2 + d0;
    p = softmax(s W3 + b3); loss = mean cross-entropy, so e = (p - onehot(y)) / batch.
    """
    x, y = data["x"].astype("float64"), data["y"]
    w = {n: (data[f"w/{n}/0"].astype("float64"), data[f"w/{n}/1"].astype("float64"))
         for n in ("d0", "d1", "d2", "out")}
    h0 = np.maximum(x @ w["d0"][0] + w["d0"][1], 0)
    h1 = np.tanh(h0 @ w["d1"][0] + w["d1"][1])
    s = h1 @ w["d2"][0] + w["d2"][1] + h0
    e = (_softmax(s @ w["out"][0] + w["out"][1]) - np.eye(3)[y]) / len(x)
    # What each layer's input gradient is crossed with: W (backprop) or B (FA).
    if method == "feedback_alignment":
        cross = {n: data[f"b/{method}/{n}"].astype("float64") for n in ("d1", "d2", "out")}
    else:
        cross = {n: w[n][0] for n in ("d1", "d2", "out")}
    if method == "direct_feedback_alignment":
        # Points on d0 and on the stream (the Add): e B_p there; the branch below the
        # Add learns from its point through the true gradient, and d0's point cuts the
        # skip path.
        g_s = e @ data[f"b/{method}/add"].astype("float64")
        g_d1 = (g_s @ w["d2"][0].T) * (1 - h1 ** 2)
        g_d0 = (e @ data[f"b/{method}/d0"].astype("float64")) * (h0 > 0)
    else:
        g_s = e @ cross["out"].T
        g_d1 = (g_s @ cross["d2"].T) * (1 - h1 ** 2)
        g_d0 = (g_s + g_d1 @ cross["d1"].T) * (h0 > 0)
    grads = {}
    for name, inp, g in (("d0", x, g_d0), ("d1", h0, g_d1), ("d2", h1, g_s), ("out", s, e)):
        grads[f"{name}/kernel"] = inp.T @ g
        grads[f"{name}/bias"] = g.sum(axis=0)
    return grads


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("jax") / "reference.npz")
    lines = _run("reference", out)
    return np.load(out), lines


@pytest.mark.parametrize("method", ["backprop", "feedback_alignment",
                                    "direct_feedback_alignment"])
def test_gradients_on_a_residual_model_equal_numpy(reference_run, method):
    data, lines = reference_run
    expected = _numpy_gradients(data, method)
    got = {k.split("/", 2)[2]: data[k] for k in data.files if k.startswith(f"g/{method}/")}
    assert sorted(got) == sorted(expected)
    for key, value in expected.items():
        assert np.max(np.abs(value)) > 1e-3, key  # every layer gets a signal
        np.testing.assert_allclose(got[key], value, atol=1e-5, rtol=1e-4, err_msg=key)
    info = next(line for line in lines if line.get("method") == method)
    if method == "direct_feedback_alignment":
        assert info["points"] == ["d0", "add"]
    if method == "feedback_alignment":
        assert info["transported"] == ["d1", "d2", "out"]


def test_drtp_with_sample_weights_equals_numpy(reference_run):
    """delta = (w * onehot(y)) B at the hidden layer (the loss's default reduction
    divides by the batch size, not by the weights), pushed through tanh'."""
    data, _ = reference_run
    x, y, w = (data[f"drtp/{k}"].astype("float64") for k in ("x", "y", "w"))
    h = np.tanh(x @ data["drtp/W0"] + data["drtp/b0"])
    delta = (w[:, None] * np.eye(3)[y.astype(int)]) @ data["drtp/B"].astype("float64")
    expected = x.T @ (delta * (1 - h ** 2))
    assert np.max(np.abs(expected)) > 1e-2
    np.testing.assert_allclose(data["drtp/g0"], expected, atol=1e-5, rtol=1e-4)


def test_save_and_load_restore_dfa_matrices(reference_run):
    _, lines = reference_run
    (load,) = [line for line in lines if "load" in line]
    assert load["load"] == "direct_feedback_alignment"
    assert load["names"]
    assert load["matrices"] == 0.0
    assert load["gradients"] == 0.0


def test_subclassed_model_and_unsupported_method_are_refused(reference_run):
    _, lines = reference_run
    refused = {line["refused"]: line for line in lines if "refused" in line}
    sub = refused["subclassed"]
    assert sub["type"] == "GraphError"
    assert "functional model" in sub["message"] and "tensorflow backend" in sub["message"]
    sgtt = refused["through_time"]
    assert sgtt["type"] == "ValueError"
    assert ("'synthetic_gradients_through_time' does not run on Keras's JAX backend"
            in sgtt["message"])
    assert "direct_feedback_alignment" in sgtt["message"]
    # The refused method leaves the model as it was.
    assert [line["after_refusal"] for line in lines if "after_refusal" in line] == ["backprop"]


def test_fa_with_b_equal_to_w_is_backprop_on_a_nested_conv_model(reference_run):
    _, lines = reference_run
    (line,) = [line for line in lines if "conv_fa_equals_backprop" in line]
    assert min(line["kernel_gradients"]) > 1e-4  # every kernel gets a signal
    assert line["conv_fa_equals_backprop"] < 1e-6
    assert line["random_b_differs"] > 1e-3  # the transports are in the backward pass
    assert line["fit_step_with_b_equal_to_w"] < 1e-5
    # The inner model's Conv2D, the separable conv and the Dense layers are crossed.
    assert len(line["transported"]) == 4


def test_batchwise_random_sign_feedback_counter_through_fit_and_saving(reference_run):
    _, lines = reference_run
    (line,) = [line for line in lines if "brsf_step" in line]
    assert line["brsf_step_after_fit"] == 4  # one draw per batch, inside the jitted step
    assert line["brsf_draws_change"] > 1e-3
    assert line["brsf_fit_vs_eager"] < 1e-6
    assert line["brsf_step"] == 5 and line["brsf_step_saved"] == 5


def test_credit_runs_on_jax_without_tensorflow(reference_run):
    """The JAX checks ran with ``sys.modules["tensorflow"] = None``: credit imported,
    bound, stepped, trained, saved and loaded without TensorFlow."""
    _, lines = reference_run
    assert [line["tensorflow_importable"] for line in lines
            if "tensorflow_importable" in line] == [False]


def test_torch_backend_is_refused_at_import():
    env = dict(os.environ, KERAS_BACKEND="torch", PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-c", "import credit"], capture_output=True,
                          text=True, timeout=120, env=env)
    assert proc.returncode != 0
    assert "ImportError" in proc.stderr
    assert "'tensorflow' and 'jax'" in proc.stderr and "'torch'" in proc.stderr


@pytest.mark.slow
def test_every_jax_method_trains_an_mlp_on_digits():
    lines = _run("train")
    assert sorted(line["method"] for line in lines) == sorted(JAX_METHODS)
    for line in lines:
        assert line["after"] < 0.8 * line["before"], line


def test_data_parallel_over_two_devices_equals_one_device():
    """keras.distribution.DataParallel on JAX (two CPU devices): every JAX method's fit
    splits each batch over the devices and ends at the one-device weights."""
    lines = _run("data_parallel",
                 XLA_FLAGS="--xla_force_host_platform_device_count=2")
    assert sorted(line["method"] for line in lines) == sorted(JAX_METHODS)
    for line in lines:
        assert (line["devices"], line["mesh"]) == (2, 2), line
        assert line["max_diff"] < 1e-5, line


CROSS = os.path.join(os.path.dirname(__file__), "scripts", "cross_backend.py")


def _cross(backend, *args):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3",
               JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, CROSS, *args], capture_output=True, text=True,
                          timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {line["case"]: line for line in map(json.loads, proc.stdout.splitlines())
            if line.get("case")}


@pytest.fixture(scope="module")
def cross_run(tmp_path_factory):
    """TensorFlow's step (the reference) and JAX's from the same weights, batch and
    method state, for every case of tests/scripts/cross_backend.py."""
    folder = tmp_path_factory.mktemp("cross")
    tf_out, jax_out = str(folder / "tf.npz"), str(folder / "jax.npz")
    tf_cases = _cross("tensorflow", tf_out)
    jax_cases = _cross("jax", jax_out, tf_out)
    return tf_cases, jax_cases, dict(np.load(tf_out)), dict(np.load(jax_out))


def _cases():
    import ast

    tree = ast.parse(open(CROSS).read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and node.targets[0].id == "CASES":
            return [elt.elts[0].value for elt in node.value.elts]
    raise AssertionError("CASES not found in cross_backend.py")


@pytest.mark.parametrize("case", _cases())
def test_jax_step_equals_tensorflow_step(cross_run, case):
    """The JAX step equals TensorFlow's, to float32 rounding: the gradients of one
    ``compute_gradients``, the method's state after its update (Kolen-Pollack's
    matrices and their optimizer's slots, synthesizers, heads), and the weights and
    state after three steps of ``fit`` (jitted on JAX)."""
    tf_cases, jax_cases, ref, got = cross_run
    assert tf_cases[case].get("ok"), tf_cases[case]
    assert jax_cases[case].get("ok"), jax_cases[case]
    keys = [k for k in ref if k.startswith(case + "/")
            and k.rsplit("/", 1)[1].startswith(("g", "after", "fit_"))]
    assert any("/g" in k for k in keys) and any("/fit_w" in k for k in keys)
    for k in keys:
        scale = max(float(np.abs(ref[k]).max()), 1e-3)
        assert ref[k].shape == got[k].shape, k
        diff = float(np.abs(ref[k] - got[k]).max())
        assert diff <= 1e-4 * scale, (k, diff, scale)
