"""Off-the-shelf models: what each credit method costs on a keras.applications network.

For each model (keras.applications ResNet50, MobileNetV2, DenseNet121, ``weights=None``,
10 classes, 32x32x3 inputs by default) and each method, a fresh process (under a memory
cap, ``prlimit --as``) builds the model, compiles it with Adam and the method (``keras``:
plain Keras, no credit), and trains on one seeded random batch:

- ``added``: the parameters the method adds (synthesizers, heads: the sum of
  ``method.point_parameters()``; other methods: the weights on ``method.state``, e.g.
  DFA's matrices), and ``points``, how many feedback points it uses;
- ``first step``: the first ``train_on_batch`` (tracing, graph building, one step);
- ``step``: the median of the steps after the first (``--steps`` in all), and its ratio
  to plain Keras's;
- ``peak RSS``: the process's peak resident memory (``VmHWM``, :func:`peak_rss_kib`),
  and its ratio;
- ``unmoved after 4 steps``: of the trainable variables that plain Keras moves, how many
  this method has not moved after its first 4 steps; ``all moved by step``: the step
  after which every one of them has moved (``never``: some had not after ``--steps``).
  Synthetic gradients bootstrapped from zero-initialised synthesizers reach at most one
  more point down per step, so with many points the lowest layers move late.

A method that does not apply to the model (it raises at compile) gets an ``n/a`` row
with the reason. Besides the table (``offtheshelf.md``), the records go to
``offtheshelf.jsonl`` (one JSON object a line), which ``python -m experiments.bench
--offtheshelf-records`` can put in the benchmark's report.

Plain Keras runs first, in the same invocation, so the ratios compare processes run under
the same machine load. The machine is shared: step times are indicative (a few percent
to tens of percent of noise on a loaded machine), the ratios more so than the times.

Usage:
    python -m experiments.offtheshelf                       # ResNet50, MobileNetV2
    python -m experiments.offtheshelf --models ResNet50 --methods keras,sg,cdni \\
        '{"name": "sg", "stage_points": 2}' --batch 8 --steps 20 --memory-gb 8
    python -m experiments.offtheshelf --quick        # results/_scratch/offtheshelf/
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
        method = credit.get(json.loads(method_name) if method_name.startswith("{")
                            else method_name)
        try:
            model.compile(optimizer="adam", loss=loss, method=method)
        except ValueError as err:  # the method does not apply to this model
            record.update(status="n/a", note=" ".join(str(err).split())[:300])
            print("RESULT " + json.dumps(record), flush=True)
            return
    record["compile_s"] = round(time.perf_counter() - t0, 2)
    start = {v.path: np.array(v.numpy()) for v in model.trainable_variables}
    first_moved = {}  # variable -> the step (1-based) after which it had first moved
    times = []
    for step in range(1, max(MOVE_STEPS, steps) + 1):
        t = time.perf_counter()
        model.train_on_batch(x, y)
        times.append(time.perf_counter() - t)
        for v in model.trainable_variables:
            if v.path not in first_moved and not np.array_equal(start[v.path], v.numpy()):
                first_moved[v.path] = step
    record.update(
        first_step_s=round(times[0], 2),
        step_s=round(float(np.median(times[1:])), 4),
        peak_rss_mb=round(peak_rss_kib(resource) / 1024, 1),
        first_moved=first_moved, trainable=len(start))
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


def peak_rss_kib(resource):
    """This process's peak resident set size in KiB: ``VmHWM`` of ``/proc/self/status``
    (the peak of this program's own memory map), else ``ru_maxrss``. (Linux's
    ``ru_maxrss`` keeps the peak from before ``exec``: a child started by a large parent
    -- ``experiments.bench`` with its models loaded -- reads at least the parent's RSS
    at the fork.)"""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


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


def read_records(path):
    """The records a run wrote to ``offtheshelf.jsonl`` (one JSON object a line)."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def table(records):
    """The records as a markdown table, with ratios to plain Keras of the same model."""
    lines = ["| model | method | points | added params (x model) | first step s | "
             "step s (x keras) | peak RSS MB (x keras) | unmoved after 4 steps | "
             "all moved by step |",
             "|---|---|---|---|---|---|---|---|---|"]
    base = {r["model"]: r for r in records if r["method"] == "keras" and "error" not in r}
    for r in records:
        if "error" in r or r.get("status") in ("n/a", "not run"):
            what = (f"error: {r['error']}" if "error" in r
                    else f"{r['status']}: {r.get('note', '')}")
            lines.append(f"| {r['model']} | {r['method']} | {what.replace('|', '/')} "
                         "| | | | | | |")
            continue
        k = base.get(r["model"])

        def ratio(key):
            return f"{r[key]} ({r[key] / k[key]:.2f}x)" if k else f"{r[key]}"

        if k and "first_moved" in k and "first_moved" in r:
            wanted = sorted(k["first_moved"])
            late = [p for p in wanted if r["first_moved"].get(p, 10**9) > MOVE_STEPS]
            steps = [r["first_moved"].get(p) for p in wanted]
            unmoved = f"{len(late)} of {len(wanted)}"
            by = "never" if None in steps else max(steps, default=0)
        else:
            unmoved = by = "n/a"
        lines.append(
            f"| {r['model']} | {r['method']} | {r['points']} | {r['added']:,}"
            f" ({r['added'] / r['model_parameters']:.3f}x) | {r['first_step_s']} | "
            f"{ratio('step_s')} | {ratio('peak_rss_mb')} | {unmoved} | {by} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "METHOD"))
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS))
    parser.add_argument("--size", type=int, default=32, help="input height and width")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20,
                        help="steps in all; the step time is the median after the first")
    parser.add_argument("--memory-gb", type=float, default=8.0,
                        help="address-space cap of each process (0: none)")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: MobileNetV2, plain Keras and sg, 5 steps")
    parser.add_argument("--out", default="results",
                        help="the table goes to OUT/offtheshelf/offtheshelf.md "
                             "(--quick: results/_scratch/offtheshelf/)")
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child, size=args.size, batch=args.batch, steps=args.steps)
        return 0
    # List flags take names space- or comma-separated (a JSON method config is one).
    args.models = [m for a in args.models for m in a.split(",") if m]
    args.methods = [m for a in args.methods
                    for m in ([a] if a.startswith("{") else a.split(",")) if m]
    if args.quick:
        args.models, args.methods, args.steps = ["MobileNetV2"], ["keras", "sg"], 5
        if args.out == "results":
            args.out = os.path.join("results", "_scratch")
    records = []
    for model_name in args.models:
        methods = ["keras"] + [m for m in args.methods if m != "keras"]
        for method_name in methods:
            record = run_one(model_name, method_name, args)
            records.append(record)
            print(json.dumps({k: v for k, v in record.items() if k != "first_moved"}),
                  flush=True)
    text = (f"Off-the-shelf models at {args.size}x{args.size}x3, batch {args.batch}, "
            f"Adam, {args.steps} steps; a fresh process per "
            f"method, capped at {args.memory_gb} GB of address space.\n\n"
            + table(records) + "\n")
    print(text)
    folder = os.path.join(args.out, "offtheshelf")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "offtheshelf.md"), "w") as f:
        f.write(text)
    # The records, for experiments.bench --offtheshelf-records (one JSON a line).
    with open(os.path.join(folder, "offtheshelf.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    return 0


if __name__ == "__main__":
    sys.exit(main())
