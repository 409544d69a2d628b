"""Smoke test of the speed benchmark (experiments.bench): it runs and writes its table;
the peak-memory column, measured in a fresh process per method.

Speed itself is measured by the benchmark, never asserted here.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # noqa: E402

import credit  # noqa: E402
from experiments import bench  # noqa: E402

COLUMNS = 8  # method, samples/s, x plain Keras, peak MiB, x backprop, spread, traces, note


def _rows(text):
    """The table rows of the markdown: {method: cells after the method name}."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == COLUMNS and cells[0] not in ("method",):
            rows[cells[0]] = cells[1:]
    return rows


def test_quick_benchmark_has_a_row_per_method(tmp_path):
    out = tmp_path / "bench.md"
    results = bench.main(["--quick", "--models", "a", "--no-memory", "--out", str(out)])

    text = out.read_text()
    assert text.startswith("# Benchmark")
    assert "## (a) MLP 784-256-256-10, batch 128" in text
    assert "## (b)" not in text and "## (c)" not in text
    assert not [p for p in os.listdir(tmp_path) if p != "bench.md"]  # no temp file left

    rows = _rows(text)
    # Model (a) is a Dense chain: PEPITA and Forward-Forward have rows too.
    every = credit.available(dense_chains=True)
    assert {"pepita", "forward_forward", "local_losses", "forward_gradient"} <= set(every)
    extra = [label for label, _, _ in bench.EXTRA_ROWS]
    assert {"forward_gradient (activities)", "delayed_feedback"} <= set(extra)
    expected = {"plain keras.Model.fit", "backprop", "backprop (blockwise)", *every, *extra}
    assert set(rows) == expected
    assert "peak MiB: not measured (`--no-memory`)." in text
    for method, (samples, vs_keras, peak, vs_backprop, _, traces, note) in rows.items():
        assert peak == ""  # --no-memory
        if method == "kickback":  # a 10-class model: kickback needs a scalar output
            assert samples == "n/a"
            assert "scalar output" in note
            continue
        assert float(samples.replace(",", "")) > 0, (method, note)
        assert float(vs_keras) > 0 and float(vs_backprop) > 0
        assert traces == "1", f"{method}: train function traced {traces} times"

    # The returned runners agree with the table, and every target of model (a) is shown.
    _, runners = results["a"]
    assert {r.label for r in runners} == {"keras", "backprop", "backprop (blockwise)",
                                          *every, *extra}
    assert "| backprop through credit >= 0.95x plain Keras | (a) |" in text
    assert "| feedback alignment >= 0.9x backprop | (a) |" in text


def test_dense_chain_methods_have_rows_on_the_mlps_only():
    assert bench.MODELS["a"].dense_chain and bench.MODELS["b"].dense_chain
    assert not any(bench.MODELS[k].dense_chain for k in "cde")
    cnn = [label for label, _, _ in bench.method_rows(dense_chain=False)]
    mlp = [label for label, _, _ in bench.method_rows(dense_chain=True)]
    assert "pepita" not in cnn and "forward_forward" not in cnn
    assert set(mlp) - set(cnn) == {"pepita", "forward_forward"}
    # --methods keeps the references (plain Keras, backprop) and the named rows.
    kept = bench.method_rows(dense_chain=True, methods={"pepita"})
    assert [label for label, _, _ in kept] == ["keras", "backprop", "pepita"]
    with pytest.raises(SystemExit):
        bench.parse_args(["--methods", "nonsense"])
    assert bench.parse_args(["--methods", "ff,dgl"]).methods == {"forward_forward",
                                                                 "local_losses"}


@pytest.mark.slow  # RSS of the test process itself: varies with what else it ran (xdist)
def test_peak_memory_counts_a_steps_activations():
    # In this process, with glibc mapping buffers over 64 KiB on their own (as the
    # child's MALLOC_MMAP_THRESHOLD_ does): a step of a 784-2048-10 MLP at batch 512
    # keeps its hidden activations, 512 x 2048 float32 = 4 MiB, and their gradient for
    # backprop, so its peak is above 4 MiB; plain Keras and credit's backprop agree.
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    assert libc.mallopt(-3, 65536) == 1  # M_MMAP_THRESHOLD
    bench.SPECS["w"] = bench.Spec("w", "wide", bench._mlp([2048]), (784,), 512, 2,
                                  dense_chain=True)
    try:
        peaks = {}
        for label, identifier in (("keras", None), ("backprop", "backprop")):
            result = bench.measure_memory("w", label, identifier, steps=2)
            assert result["status"] == "ok", result
            assert result["baseline_bytes"] > 0
            peaks[label] = result["peak_bytes"] / 2 ** 20
        assert all(4.0 < p < 64.0 for p in peaks.values()), peaks
        assert abs(peaks["keras"] - peaks["backprop"]) < 0.5 * peaks["keras"], peaks
    finally:
        del bench.SPECS["w"]


@pytest.mark.slow  # two fresh TensorFlow processes: 15 s idle, a minute on loaded cores
def test_quick_benchmark_writes_a_peak_memory_column(tmp_path):
    out = tmp_path / "bench.md"
    bench.main(["--quick", "--models", "t", "--methods", "backprop", "--memory-steps", "2",
                "--out", str(out)])
    text = out.read_text()
    assert "| method | samples/s | x plain Keras | peak MiB | x backprop |" in text
    assert "peak MiB: peak resident set size" in text
    rows = _rows(text)
    assert set(rows) == {"plain keras.Model.fit", "backprop"}
    for method, cells in rows.items():
        assert float(cells[2]) >= 0.0, (method, cells)


JAX_METHODS = ["backprop", "backprop (blockwise)", "feedback_alignment",
               "direct_feedback_alignment", "direct_random_target_projection",
               "sign_symmetry", "fixed_random_sign_feedback",
               "batchwise_random_sign_feedback", "kolen_pollack", "synthetic_gradients",
               "cdni", "local_losses", "pepita", "forward_gradient", "forward_forward"]


def test_quick_benchmark_on_the_jax_backend(tmp_path):
    """``--backend jax`` re-runs the bench on Keras's JAX backend: the methods have
    numbers (each step jitted once: traces 2, the warm-up fit's function and
    train_on_batch's), and none is refused as not running on JAX; the header names
    JAX."""
    pytest.importorskip("jax")
    import subprocess
    import sys

    out = tmp_path / "bench_jax.md"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root)
    env.pop("KERAS_BACKEND", None)
    done = subprocess.run(
        [sys.executable, "-m", "experiments.bench", "--backend", "jax", "--quick",
         "--models", "t", "--no-memory", "--out", str(out)],
        cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    text = out.read_text()
    assert "Keras backend jax: JAX " in text and "TensorFlow" not in text.split("\n")[2]
    rows = _rows(text)
    for method in ["plain keras.Model.fit", *JAX_METHODS]:
        samples, vs_keras, _, vs_backprop, _, traces, note = rows[method]
        assert float(samples.replace(",", "")) > 0 and float(vs_backprop) > 0, (method, note)
        assert traces == "2", f"{method}: traced {traces} times (an eager JAX step?)"
    for method, row in rows.items():
        assert "does not run on Keras's JAX backend" not in row[6], (method, row[6])


def test_xla_rows_are_refused_on_jax():
    with pytest.raises(SystemExit):
        bench.parse_args(["--backend", "jax", "--xla"])


@pytest.mark.slow  # 30-60 s: the bench on JAX through the shell script
def test_gpu_bench_script_runs_on_cpu(tmp_path):
    """experiments/gpu_bench.sh, run here on JAX's CPU devices (no wheel needed: Keras is
    installed), writes bench_gpu.md under OUT with the JAX header."""
    pytest.importorskip("jax")
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, OUT=str(tmp_path),
               BENCH_ARGS="--quick --models t --no-memory")
    done = subprocess.run([os.path.join(root, "experiments", "gpu_bench.sh")], cwd=root,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "gpu_bench: JAX" in done.stdout
    text = (tmp_path / "bench_gpu.md").read_text()
    assert "Keras backend jax: JAX " in text and "CPU only" in text
    assert float(_rows(text)["direct_feedback_alignment"][0].replace(",", "")) > 0


def test_gpu_bench_script_names_what_is_missing(tmp_path):
    """Without Keras and without a wheel, the script stops with a message saying what
    to carry (checked with a Python that cannot import keras)."""
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    fake = tmp_path / "bin"
    fake.mkdir()
    python = fake / "python"
    python.write_text("#!/bin/sh\n"
                      "if [ \"$1\" = \"-c\" ] && [ \"$2\" = \"import keras\" ]; then exit 1; fi\n"
                      f"exec {sys.executable} \"$@\"\n")
    python.chmod(0o755)
    env = dict(os.environ, PATH=f"{fake}{os.pathsep}{os.environ['PATH']}",
               KERAS_WHEEL="", OUT=str(tmp_path))
    done = subprocess.run(["bash", "-c", f"cd {tmp_path} && {root}/experiments/gpu_bench.sh"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "no wheel was carried" in done.stderr and "dist/" in done.stderr
