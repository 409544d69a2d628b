"""Off-the-shelf models: what each credit method costs on a keras.applications network.

For each model (keras.applications ResNet50, MobileNetV2, DenseNet121, ``weights=None``,
10 classes, 32x32x3 inputs by default) and each method, a fresh process (under a memory
cap, ``prlimit --as``) builds the model, compiles it with Adam and the method (``keras``:
plain Keras, no credit), and trains on one seeded random batch:

- ``added``: the parameters the method adds (synthesizers, heads: the sum of
  ``method.point_parameters()``; other methods: the weights on ``method.state``, e.g.
  DFA's matrices), and ``points``, how many feedback points it uses;
- ``first step``: the first ``train_on_batch`` (tracing, graph building, one step);
- ``step``: the median of the next ``--steps`` steps, and its ratio to plain Keras's;
- ``peak RSS``: the process's peak resident memory (``getrusage``), and its ratio;
- ``unmoved``: of the trainable variables that plain Keras moves in its first 4 steps,
  how many this method leaves where they were after its first 4 steps (0 is what one
  wants: nothing left behind).

Plain Keras runs first, in the same invocation, so the ratios compare processes run under
the same machine load. The machine is shared: step times are indicative (a few percent
to tens of percent of noise on a loaded machine), the ratios more so than the times.

Usage:
    python -m experiments.offtheshelf                       # ResNet50, MobileNetV2
    python -m experiments.offtheshelf --models ResNet50 --methods keras sg cdni \\
        --batch 8 --steps 5 --memory-gb 8 --out results/offtheshelf.md
"""

import argparse
import json
import os
import subprocess
import sys
import time

DEFAULT_MODELS = ("ResNet50", "MobileNetV2")
DEFAULT_METHODS = ("keras", "backprop", "sg", "cdni", "local_losses")
MOVE_STEPS = 4


def child(model_name, method_name, size, batch, steps):
    """Run one model and method in this process; print one JSON line of measurements."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import resource

    import keras
    import numpy as np

    import credit

    keras.utils.set_random_seed(0)
    base = getattr(keras.applications, model_name)(
        weights=None, input_shape=(size, size, 3), classes=10)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, size, size, 3)).astype("float32")
    y = rng.integers(0, 10, size=batch)
    loss = "sparse_categorical_crossentropy"
    record = {"model": model_name, "method": method_name,
              "model_parameters": int(base.count_params())}
    t0 = time.perf_counter()
    if method_name == "keras":
        model = base
        model.compile(optimizer="adam", loss=loss)
        method = None
    else:
        model = credit.wrap(base)
        method = credit.get(method_name)
        model.compile(optimizer="adam", loss=loss, method=method)
    record["compile_s"] = round(time.perf_counter() - t0, 2)
    start = {v.path: np.array(v.numpy()) for v in model.trainable_variables}
    times = []
    for _ in range(MOVE_STEPS):
        t = time.perf_counter()
        model.train_on_batch(x, y)
        times.append(time.perf_counter() - t)
    moved = [v.path for v in model.trainable_variables
             if not np.array_equal(start[v.path], v.numpy())]
    for _ in range(steps):
        t = time.perf_counter()
        model.train_on_batch(x, y)
        times.append(time.perf_counter() - t)
    record.update(
        first_step_s=round(times[0], 2),
        step_s=round(float(np.median(times[MOVE_STEPS:])), 4),
        peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        moved=moved, trainable=len(start))
    if method is not None:
        sizes = getattr(method, "point_parameters", None)
        if sizes is not None:
            record["added"] = int(sum(sizes().values()))
        else:
            state = getattr(method, "state", None)
            record["added"] = int(sum(int(np.prod(v.shape)) for v in state.weights)
                                  if state is not None else 0)
        record["points"] = len(getattr(method, "points", None) or ())
    else:
        record["added"], record["points"] = 0, 0
    print("RESULT " + json.dumps(record), flush=True)


def run_one(model_name, method_name, args):
    """One fresh capped process; its record, or a dict with ``error``."""
    cmd = [sys.executable, "-m", "experiments.offtheshelf", "--child", model_name,
           method_name, "--size", str(args.size), "--batch", str(args.batch),
           "--steps", str(args.steps)]
    if args.memory_gb:
        cmd = ["prlimit", f"--as={int(args.memory_gb * 2**30)}", "--"] + cmd
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    wall = time.perf_counter() - t
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            record = json.loads(line[len("RESULT "):])
            record["wall_s"] = round(wall, 1)
            return record
    tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
    return {"model": model_name, "method": method_name,
            "error": f"exit {proc.returncode}: {tail[:300]}"}


def table(records):
    """The records as a markdown table, with ratios to plain Keras of the same model."""
    lines = ["| model | method | points | added params (x model) | first step s | "
             "step s (x keras) | peak RSS MB (x keras) | unmoved of keras's moved |",
             "|---|---|---|---|---|---|---|---|"]
    base = {r["model"]: r for r in records if r["method"] == "keras" and "error" not in r}
    for r in records:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['method']} | error: {r['error']} "
                         "| | | | | |")
            continue
        k = base.get(r["model"])
        ratio = (lambda a, b: f" ({a / b:.2f}x)") if k else (lambda a, b: "")
        unmoved = (len(set(k["moved"]) - set(r["moved"])) if k else "n/a")
        lines.append(
            f"| {r['model']} | {r['method']} | {r['points']} | {r['added']:,}"
            f" ({r['added'] / r['model_parameters']:.3f}x) | {r['first_step_s']} | "
            f"{r['step_s']}{ratio(r['step_s'], k['step_s']) if k else ''} | "
            f"{r['peak_rss_mb']}{ratio(r['peak_rss_mb'], k['peak_rss_mb']) if k else ''}"
            f" | {unmoved} of {len(k['moved']) if k else '?'} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "METHOD"))
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS))
    parser.add_argument("--size", type=int, default=32, help="input height and width")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5,
                        help="timed steps after the first 4")
    parser.add_argument("--memory-gb", type=float, default=8.0,
                        help="address-space cap of each process (0: none)")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--out", help="also write the table (markdown) to this file")
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child, size=args.size, batch=args.batch, steps=args.steps)
        return 0
    records = []
    for model_name in args.models:
        methods = ["keras"] + [m for m in args.methods if m != "keras"]
        for method_name in methods:
            record = run_one(model_name, method_name, args)
            records.append(record)
            print(json.dumps({k: v for k, v in record.items() if k != "moved"}),
                  flush=True)
    text = (f"Off-the-shelf models at {args.size}x{args.size}x3, batch {args.batch}, "
            f"Adam, {args.steps} timed steps after {MOVE_STEPS}; a fresh process per "
            f"method, capped at {args.memory_gb} GB of address space.\n\n"
            + table(records) + "\n")
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
