"""Data-parallel training: every method under MirroredStrategy equals one device."""

import json
import os
import subprocess
import sys


import credit

SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "mirrored.py")


def run_script(script, *args, timeout=600):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # This checkout's credit, whatever is installed; oneDNN off for repeatable sums.
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow",
               TF_ENABLE_ONEDNN_OPTS="0",
               PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True,
                          timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def test_every_method_under_mirrored_strategy_equals_one_device():
    """Keras's fit under MirroredStrategy equals one device for every method; for three
    methods credit.distributed.fit under the strategy also equals Keras's fit there
    (the two loops are run on two worker processes in test_multiworker.py)."""
    methods = credit.available() + [json.dumps({"name": "sg", "update_probability": 0.5})]
    loop = ["backprop", "direct_feedback_alignment", "synthetic_gradients"]
    results = run_script(SCRIPT, *methods, "--loop", *loop)
    assert [r["method"] for r in results] == methods
    for r in results:
        # Two replicas sum the same per-example terms in another order: float32 noise.
        assert r["weights"] < 1e-6, r
        assert r["state"] < 1e-6, r  # synthesizers, their optimizer, feedback matrices
        assert r["moved"] > 1e-4, r  # (and training did happen)
        # No kernel entry came near zero, where sign(W) jumps (see away_from_zero).
        assert r["nearest_zero"] > 0.01, r
        if r["method"] in loop:
            assert r["loop_weights"] < 1e-6, r
            assert r["loop_state"] < 1e-6, r
            assert r["loop_logs"] < 1e-5, r
            assert r["keys"] == r["loop_keys"], r
        else:
            assert "loop_weights" not in r
