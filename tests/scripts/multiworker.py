"""credit.distributed.fit on two worker processes (MultiWorkerMirroredStrategy over
localhost) against one process on the same global batches.

Usage:
    python multiworker.py compare METHOD...    # the test: prints one JSON line per method
    python multiworker.py run OUTDIR METHOD... # one process of it (TF_CONFIG: a worker)

``compare`` picks two free localhost ports, starts two ``run`` processes as workers 0
and 1 of a cluster (TF_CONFIG) and one ``run`` process without TF_CONFIG (the default
strategy: one device), and prints for each method the largest differences between the
workers' final weights, method state and epoch logs and the single process's, between
the two workers, and whether the chief's checkpoint and CSV log hold the final model.
A METHOD is a registry name or a JSON config.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
GLOBAL_BATCH, EXAMPLES, EPOCHS = 16, 32, 2


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow",
               PYTHONPATH=os.pathsep.join([ROOT] + [p for p in [env.get("PYTHONPATH")] if p]),
               # oneDNN's kernels may sum in another order when the CPU is busy (and
               # three processes share it here); Adam can enlarge that float noise on
               # gradients near its epsilon far above the differences under test.
               TF_ENABLE_ONEDNN_OPTS="0")
    env.update(extra)
    return env


def _free_ports(n):
    sockets = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("localhost", 0))
        sockets.append(s)
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _wait(procs, timeout):
    """Wait for all; if one fails, stop the others (they would wait for it forever)."""
    deadline = time.monotonic() + timeout
    while any(p.poll() is None for p in procs):
        failed = any(p.returncode not in (None, 0) for p in procs)
        if failed or time.monotonic() > deadline:
            for p in procs:
                if p.poll() is None:
                    p.kill()
            break
        time.sleep(0.2)
    outputs = [p.communicate() for p in procs]
    for p, (_, err) in zip(procs, outputs):
        if p.returncode != 0:
            sys.stderr.write(err[-4000:])
            raise SystemExit(f"a process failed (exit code {p.returncode})")
    return outputs


def compare(methods, timeout=900):
    import numpy as np

    outdir = tempfile.mkdtemp(prefix="credit_multiworker_")
    try:
        cmd = [sys.executable, os.path.abspath(__file__), "run", outdir, *methods]
        ports = _free_ports(2)
        cluster = {"worker": [f"localhost:{p}" for p in ports]}
        # The two workers and the single process run at once (the workers often wait
        # for each other).
        envs = [_env(TF_CONFIG=json.dumps({"cluster": cluster,
                                           "task": {"type": "worker", "index": index}}))
                for index in range(2)] + [_env()]
        _wait([subprocess.Popen(cmd, env=env, text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE) for env in envs], timeout)
        for spec in methods:
            key = _key(spec)
            runs = {role: dict(np.load(os.path.join(outdir, f"{role}_{key}.npz")))
                    for role in ("single", "worker0", "worker1")}
            with open(os.path.join(outdir, f"worker0_{key}.json")) as f:
                chief = json.load(f)

            def diff(a, b, prefix):
                names = [n for n in runs[a] if n.startswith(prefix)]
                return max([float(np.abs(runs[a][n] - runs[b][n]).max()) for n in names]
                           or [0.0])

            print(json.dumps({
                "method": spec,
                "weights": diff("worker0", "single", "w"),
                "state": diff("worker0", "single", "s"),
                "logs": diff("worker0", "single", "log"),
                "workers": max(diff("worker0", "worker1", p) for p in ("w", "s", "log")),
                "moved": float(max(np.abs(runs["single"][n] - runs["single"]["init" + n]).max()
                                   for n in runs["single"] if n.startswith("w"))),
                "seconds": chief["seconds"],
                "checkpoint": chief["checkpoint"],
                "csv_rows": chief["csv_rows"],
                "files": sorted(f for f in os.listdir(outdir) if f.startswith(f"workers_{key}")),
            }), flush=True)
    finally:
        shutil.rmtree(outdir, ignore_errors=True)


def _key(spec):
    return "".join(c if c.isalnum() else "_" for c in spec)


def run(outdir, methods):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    multi = "TF_CONFIG" in os.environ
    # The strategy must come first: it starts this process's gRPC server.
    strategy = (tf.distribute.MultiWorkerMirroredStrategy() if multi
                else tf.distribute.get_strategy())

    import keras
    import numpy as np

    import credit
    from common import away_from_zero

    L = keras.layers
    if multi:
        resolver = strategy.cluster_resolver
        role = f"worker{resolver.task_id}"
    else:
        role = "single"

    def build(outputs):
        inputs = keras.Input((6,))
        h1 = L.Dense(8, activation="tanh")(inputs)
        h2 = L.Dense(8, activation="tanh")(h1)
        if outputs == 1:  # kickback needs a chain with one scalar output
            return credit.Model(inputs, L.Dense(1)(h2))
        return credit.Model(inputs, L.Dense(outputs, activation="softmax")(L.Add()([h1, h2])))

    rng = np.random.default_rng(0)
    x = rng.normal(size=(EXAMPLES, 6)).astype("float32")
    labels = rng.integers(0, 3, size=EXAMPLES)
    targets = rng.normal(size=(EXAMPLES, 1)).astype("float32")
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA

    for spec in methods:
        start = time.monotonic()
        key = _key(spec)
        config = json.loads(spec) if spec.startswith("{") else {"name": spec}
        config = {**config, "seed": 1}
        scalar = credit.get(config).name == "kickback"
        y, loss = (targets, "mse") if scalar else (labels, "sparse_categorical_crossentropy")
        dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)
        dataset = dataset.with_options(options)
        with strategy.scope():
            model = build(1 if scalar else 3)
            init = away_from_zero(
                [np.random.default_rng(i).uniform(-0.6, 0.6, w.shape).astype(w.dtype)
                 for i, w in enumerate(model.get_weights())])
            model.set_weights(init)
            model.compile("adam", loss, metrics=[] if scalar else ["accuracy"], method=config)
        name = "single" if not multi else "workers"
        checkpoint = credit.distributed.worker_path(
            os.path.join(outdir, f"{name}_{key}.keras"), strategy)
        csv = credit.distributed.worker_path(os.path.join(outdir, f"{name}_{key}.csv"),
                                             strategy)
        history = credit.distributed.fit(
            model, dataset, strategy, epochs=EPOCHS, verbose=0, validation_data=dataset,
            callbacks=[keras.callbacks.ModelCheckpoint(checkpoint),
                       keras.callbacks.CSVLogger(csv)])
        arrays = {f"w{i}": w for i, w in enumerate(model.get_weights())}
        arrays.update({f"initw{i}": w for i, w in enumerate(init)})
        state = model.method.state
        if state is not None and state.weights:
            arrays.update({f"s{i}": w for i, w in enumerate(state.get_weights())})
        for k, values in sorted(history.history.items()):
            arrays[f"log_{k}"] = np.asarray(values, "float64")
        np.savez(os.path.join(outdir, f"{role}_{key}.npz"), **arrays)
        report = {"seconds": time.monotonic() - start, "checkpoint": None, "csv_rows": None}
        if credit.distributed.is_chief(strategy):
            # The chief's checkpoint holds the final model, method state included.
            loaded = keras.models.load_model(checkpoint)
            report["checkpoint"] = max(
                float(np.abs(a - b).max()) for a, b in
                zip(loaded.get_weights() + (loaded.method.state.get_weights()
                                            if loaded.method.state is not None else []),
                    model.get_weights() + (state.get_weights() if state is not None else [])))
            with open(csv) as f:
                report["csv_rows"] = len(f.read().strip().splitlines()) - 1
        with open(os.path.join(outdir, f"{role}_{key}.json"), "w") as f:
            json.dump(report, f)


if __name__ == "__main__":
    if sys.argv[1] == "compare":
        compare(sys.argv[2:])
    elif sys.argv[1] == "run":
        run(sys.argv[2], sys.argv[3:])
    else:
        raise SystemExit(__doc__)
