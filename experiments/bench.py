"""Speed benchmark: training-step throughput of every credit method against plain Keras.

Times the training steps of plain ``keras.Model.fit`` and of the same model as a credit
model trained with every method in ``credit.available()`` (plus backprop forced through
the blockwise engine), all in one process, on five models:

    a  MLP 784-256-256-10, batch 128
    b  MLP 784-2048-2048-2048-10, batch 512
    c  CNN on 28x28x1: Conv2D 16 3x3 relu, MaxPool, Conv2D 32 3x3 relu, MaxPool,
       Flatten, Dense 10 softmax, batch 128
    d  residual CNN on 32x32x3 (CIFAR-style ResNet-8: a stem and three stages of one
       residual block of 16, 32, 64 filters, batch norm, global pooling), batch 64
    e  transformer encoder on 64 tokens (embedding 64, 2 blocks of 4-head attention,
       layer norm, residual adds and a 128-unit feed-forward, mean pooling), batch 64

With ``--xla`` the methods also run with ``jit_compile=True`` (rows marked "XLA"),
compared in the same run. The methods that train only chains of Dense layers (PEPITA,
Forward-Forward: ``credit.available(dense_chains=True)``) have rows on the MLPs (a, b)
only.

How it measures. Data are random (seeded) and of the right shape; every model of a table
starts from the same weights and trains with the same optimizer (SGD by default, the
cheapest, so that the table shows the cost of credit assignment). A warm-up ``fit``
traces each model's train function (tracing is excluded from the timings). Then the
methods take turns, one training step each, in a fresh random order every round: each
step is one call of ``model.train_function`` -- the function ``fit`` calls once per step
-- on a batch iterator of the same element type as ``fit``'s, so no retracing, timed
from the call to its logs being read (what ``fit`` does between its
``on_train_batch_begin`` and ``on_train_batch_end`` callbacks). Taking turns step by step
makes load drift on the machine (other processes) hit every method alike: on a loaded
2-core machine, two models with the same graph then agree within about 2% on models a
and c (about 5% on b, whose steps are long), against up to 10% when each method runs a
block of steps in a short ``fit`` of its own.

A repeat is ``steps`` rounds; its throughput per method is ``batch / median step time``.
The table shows the median of that over repeats; the ratios to plain Keras and to
credit's backprop, each the median over repeats of the ratio within a repeat (whose
methods ran interleaved, under the same load, so the ratio cancels load that changes
between repeats); and the spread ``(max - min) / median`` of the throughput over
repeats. ``traces`` counts how often the train step was traced in all (1 = traced once,
no retracing). A method that does not apply to a model (kickback needs a scalar output)
is shown as n/a with the reason; one that fails is shown as an error with its message.

Peak memory (the ``peak MiB`` column; ``--no-memory`` leaves it out). Not storing the
activations for a global backward pass is what local and forward-only methods claim,
so every row also gets the peak memory of a training step, measured in a fresh
process per method (:func:`peak_memory`): the child builds the model, warms up as
above (tracing, one step on the timed iterator), reads its resident set size (RSS,
``VmRSS`` in ``/proc/self/status``: the model, its optimizer and method state, the
traced function), resets the kernel's peak-RSS mark (``/proc/self/clear_refs``), takes
``steps`` more steps and reports the peak RSS over them (``VmHWM``) minus that
baseline: the transient memory of a step (activations kept for the backward pass,
gradients, the method's temporaries). TensorFlow keeps no allocator statistics on CPU
(``tf.config.experimental.get_memory_info("CPU:0")`` raises), hence RSS. The child runs
with ``MALLOC_MMAP_THRESHOLD_=65536`` so that glibc maps every buffer over 64 KiB on
its own and returns it to the system when freed; otherwise freed activations stay in
the process's heap, the baseline after the warm-up already holds them and the
difference reads about 0. Linux only (elsewhere the column is empty). Small
allocations (Python objects, TensorFlow's bookkeeping) are noise of about 1 MiB.

Off-the-shelf models (the last table; ``--offtheshelf``, on by default in a full run):
keras.applications ResNet50 and MobileNetV2 (``weights=None``, 32x32x3, 10 classes,
batch 8, Adam), plain Keras and every method, each in a fresh process under a memory cap,
measured by :mod:`experiments.offtheshelf`: the parameters the method adds, the first
step (tracing included), the median step after it and its ratio to plain Keras's, the
process's peak RSS and its ratio, and which of the weights plain Keras moves have moved
after 4 steps. A first step takes minutes on a 2-core machine, so rows measured by
``python -m experiments.offtheshelf`` can be reused (``--offtheshelf-records``, its
``offtheshelf.jsonl``); the report says which.

Time bound (``--minutes``): the run starts no new work after that many minutes, each
model (and the off-the-shelf table) getting an even share of what is left when it
starts, half of a model's share for its repeats and half for its memory children (the
warm-ups and one repeat always run); repeats, memory children and off-the-shelf rows
that did not fit are reported as not run. The report gives the machine's load average before, during (the
highest seen) and after the run.

Usage:
    python -m experiments.bench                    # full run, writes results/bench.md
    python -m experiments.bench --minutes 40 --offtheshelf-records \
        results/offtheshelf/offtheshelf.jsonl     # bounded, reusing off-the-shelf rows
    python -m experiments.bench --quick --models a # smoke test, results/_scratch/bench.md
    python -m experiments.bench --models a --methods backprop,pepita --no-memory
"""

import argparse
import datetime
import gc
import itertools
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402

#: The Keras backend this process runs on (``KERAS_BACKEND``; ``--backend`` re-runs the
#: command with it set). TensorFlow is imported only on its own backend: the JAX bench
#: runs where TensorFlow is not installed.
BACKEND = keras.config.backend()
BACKENDS = ("tensorflow", "jax")
if BACKEND == "tensorflow":
    import tensorflow as tf  # noqa: E402
else:
    tf = None

import credit  # noqa: E402
from credit import registry  # noqa: E402
from experiments.runner.files import write_atomic  # noqa: E402

SEED = 0
NUM_CLASSES = 10
KERAS = "keras"
BACKPROP = "backprop"
BLOCKWISE = "backprop (blockwise)"
DEFAULT_REPEATS = 10

# Targets of the benchmark (issue 2, item 8): (text, row, reference row, minimum ratio,
# models it is checked on).
TARGETS = [
    ("backprop through credit >= 0.95x plain Keras", BACKPROP, KERAS, 0.95, "abcde"),
    ("feedback alignment >= 0.9x backprop", "feedback_alignment", BACKPROP, 0.9, "abcde"),
    ("direct feedback alignment >= 1.35x backprop", "direct_feedback_alignment",
     BACKPROP, 1.35, "b"),
]
# Reported, not targets: DFA on the residual CNN and the transformer.
REPORTED = [("direct feedback alignment vs backprop", "direct_feedback_alignment",
             BACKPROP, "de")]


def _mlp(hidden):
    def layers():
        return ([keras.Input((784,))]
                + [keras.layers.Dense(n, activation="relu") for n in hidden]
                + [keras.layers.Dense(NUM_CLASSES, activation="softmax")])
    return layers


def _cnn():
    return [
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(16, 3, activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(NUM_CLASSES, activation="softmax"),
    ]


def _resnet():
    L = keras.layers
    inputs = keras.Input((32, 32, 3))
    h = L.Conv2D(16, 3, padding="same", use_bias=False)(inputs)
    h = L.Activation("relu")(L.BatchNormalization()(h))
    for filters, stride in [(16, 1), (32, 2), (64, 2)]:
        r = L.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(h)
        r = L.Activation("relu")(L.BatchNormalization()(r))
        r = L.Conv2D(filters, 3, padding="same", use_bias=False)(r)
        r = L.BatchNormalization()(r)
        skip = h if stride == 1 else L.Conv2D(filters, 1, strides=stride,
                                              use_bias=False)(h)
        h = L.Activation("relu")(L.Add()([skip, r]))
    h = L.GlobalAveragePooling2D()(h)
    return inputs, L.Dense(NUM_CLASSES, activation="softmax")(h)


def _transformer(vocab=1000, steps=64, width=64, heads=4, blocks=2):
    L = keras.layers
    inputs = keras.Input((steps,), dtype="int32")
    h = L.Embedding(vocab, width)(inputs)
    for _ in range(blocks):
        a = L.MultiHeadAttention(heads, width // heads)(h, h)
        h = L.LayerNormalization()(L.Add()([h, a]))
        f = L.Dense(2 * width, activation="relu")(h)
        f = L.Dense(width)(f)
        h = L.LayerNormalization()(L.Add()([h, f]))
    h = L.GlobalAveragePooling1D()(h)
    return inputs, L.Dense(NUM_CLASSES, activation="softmax")(h)


class Spec:
    """One benchmark model: how to build it, its input, batch size and rounds per repeat.

    ``layers`` is a function returning the layers of a Sequential model; ``graph`` one
    returning ``(inputs, outputs)`` of a functional one (exactly one of them is given).
    """

    def __init__(self, key, title, layers, input_shape, batch, steps, graph=None,
                 vocab=None, dense_chain=False):
        self.key = key
        # A chain of Dense layers: the methods that train only those get rows here.
        self.dense_chain = dense_chain
        self.title = title
        self.layers = layers
        self.graph = graph
        self.input_shape = tuple(input_shape)
        self.batch = batch
        self.steps = steps
        self.vocab = vocab

    def build(self, plain):
        """The model: plain Keras (``plain``) or credit's class of the same kind."""
        if self.graph is None:
            cls = keras.Sequential if plain else credit.Sequential
            return cls(self.layers(), name=f"bench_{self.key}")
        inputs, outputs = self.graph()
        cls = keras.Model if plain else credit.Model
        return cls(inputs, outputs, name=f"bench_{self.key}")


# Rounds per repeat, sized so that the full run (3 models x 7 timed methods x 10
# repeats) takes about four minutes on a 2-core CPU (mostly model b).
MODELS = {
    "a": Spec("a", "MLP 784-256-256-10, batch 128", _mlp([256, 256]), (784,), 128, 30,
              dense_chain=True),
    "b": Spec("b", "MLP 784-2048-2048-2048-10, batch 512", _mlp([2048] * 3), (784,),
              512, 6, dense_chain=True),
    "c": Spec("c", "CNN 28x28x1 (Conv16-Pool-Conv32-Pool-Dense10), batch 128", _cnn,
              (28, 28, 1), 128, 20),
    "d": Spec("d", "residual CNN 32x32x3 (ResNet-8: 3 stages of 16/32/64 filters, BN), "
                   "batch 64", None, (32, 32, 3), 64, 8, graph=_resnet),
    "e": Spec("e", "transformer encoder, 64 tokens (embedding 64, 2 blocks, 4 heads, "
                   "FFN 128), batch 64", None, (64,), 64, 8, graph=_transformer,
              vocab=1000),
}
#: Not in the default run: a tiny MLP for the tests (seconds a model).
TINY = Spec("t", "tiny MLP 784-16-10 (tests only), batch 32", _mlp([16]), (784,), 32, 2,
            dense_chain=True)
SPECS = {**MODELS, "t": TINY}


XLA_METHODS = (KERAS, BACKPROP, "feedback_alignment", "direct_feedback_alignment",
               "synthetic_gradients")


#: Rows for a method with other hyperparameters, or one that ``credit.available()`` leaves
#: out: activity-perturbed forward gradients (Ren et al.), and F³ (``examples=None``:
#: the model's batch size, see :class:`Runner`).
EXTRA_ROWS = [
    ("forward_gradient (activities)", {"name": "forward_gradient", "perturb": "activities"},
     False),
    ("delayed_feedback", {"name": "delayed_feedback", "examples": None}, False),
]


def method_rows(xla=False, dense_chain=False, methods=None):
    """``(label, identifier, jit_compile)`` per row: plain Keras, backprop (Keras's fast
    path and the blockwise engine), every other registered method (with
    ``dense_chain``, those that train only chains of Dense layers too); with ``xla``
    also the main ones compiled with XLA. ``methods``: keep only these canonical names
    (plain Keras and backprop, the references of the ratios, always stay)."""
    rows = [(KERAS, None, False), (BACKPROP, BACKPROP, False),
            (BLOCKWISE, {"name": BACKPROP, "blockwise": True}, False)]
    rows += [(name, name, False) for name in credit.available(dense_chains=dense_chain)
             if name != BACKPROP]
    rows += EXTRA_ROWS
    if methods is not None:
        rows = [row for row in rows if row[0] in (KERAS, BACKPROP)
                or row[0].split(" (")[0] in methods
                or (row[0] == BLOCKWISE and BLOCKWISE in methods)]
    if xla:
        rows += [(f"{label} (XLA)", ident, True) for label, ident, _ in rows
                 if label in XLA_METHODS]
    return rows


class Runner:
    """One model trained with one method (or plain Keras), and its step times."""

    def __init__(self, label, identifier, spec, weights, optimizer, jit_compile=False):
        if isinstance(identifier, dict) and "examples" in identifier \
                and identifier["examples"] is None:
            # F³ stores an error per example: here one batch of them, which the warm-up
            # and the timed steps cycle over.
            identifier = {**identifier, "examples": spec.batch}
        self.label = label
        self.identifier = identifier
        self.jit_compile = jit_compile
        self.spec = spec
        self.status = "ok"
        self.note = ""
        self.peak_mib = None  # peak memory of a step, from peak_memory (None: not measured)
        self.traces = 0
        self.times = []  # one list of step times per repeat
        self._iterator = None
        keras.utils.set_random_seed(SEED)
        self.model = spec.build(plain=identifier is None)
        self.model.set_weights(weights)
        self._count_traces()
        # On JAX, jit_compile=False would run the step eagerly, op by op: every JAX
        # row is jitted (XLA is JAX's only compiler), as Keras's default "auto" does.
        kwargs = {"jit_compile": jit_compile if BACKEND == "tensorflow" else "auto"}
        if identifier is not None:
            kwargs["method"] = identifier
        try:
            self.model.compile(optimizer=_optimizer(optimizer),
                               loss="sparse_categorical_crossentropy", **kwargs)
        except ValueError as err:  # the method does not apply to this model
            self.status = "n/a"
            self.note = " ".join(str(err).split())

    def _count_traces(self):
        # Each Python call of train_step is one trace of the train function.
        step = self.model.train_step

        def train_step(*args):  # (data), or (state, data) on JAX
            self.traces += 1
            return step(*args)

        object.__setattr__(self.model, "train_step", train_step)

    def _fail(self, err):
        self.status = "error"
        self.note = f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"

    def warm_up(self, x, y, steps):
        """``fit`` a few steps (traces the train function), then open the timed iterator."""
        if self.status != "ok":
            return
        try:
            n = steps * self.spec.batch
            if getattr(getattr(self.model, "method", None), "ordered_only", False):
                # F³ (examples=batch): one batch, once per epoch, in one order.
                self.model.fit(x[:self.spec.batch], y[:self.spec.batch],
                               batch_size=self.spec.batch, epochs=steps, shuffle=False,
                               verbose=0)
            else:
                self.model.fit(x[:n], y[:n], batch_size=self.spec.batch, epochs=1,
                               shuffle=False, verbose=0)
            if BACKEND == "tensorflow":
                # Same element type as fit's batches (static batch size), so no retrace.
                dataset = tf.data.Dataset.from_tensor_slices((x, y))
                self._iterator = iter(dataset.batch(self.spec.batch, drop_remainder=True)
                                      .repeat())
            else:
                # Keras's JAX trainer threads the variables through its jitted step:
                # train_on_batch is that step plus the variables' write-back, for
                # plain Keras and every method alike.
                b = self.spec.batch
                batches = [(x[i:i + b], y[i:i + b]) for i in range(0, len(x) - b + 1, b)]
                self._iterator = itertools.cycle(batches)
            self._step()  # the first step on a new iterator starts its pipeline
        except Exception as err:  # noqa: BLE001 - report it in the table, go on
            self._fail(err)

    def _step(self):
        start = time.perf_counter()
        if BACKEND == "tensorflow":
            logs = self.model.train_function(self._iterator)
        else:
            logs = self.model.train_on_batch(*next(self._iterator), return_dict=True)
        for value in logs.values():  # fit reads the logs after every step, too
            np.asarray(value)
        return time.perf_counter() - start

    def step(self, repeat):
        """Time one training step, recorded under ``repeat``."""
        if self.status != "ok":
            return
        try:
            elapsed = self._step()
        except Exception as err:  # noqa: BLE001
            self._fail(err)
            return
        while len(self.times) <= repeat:
            self.times.append([])
        self.times[repeat].append(elapsed)

    def release(self):
        """Drop the model and its iterator (keep the timings)."""
        self.model = None
        self._iterator = None

    @property
    def throughputs(self):
        """Samples per second of each repeat: batch / median step time."""
        if self.status != "ok":
            return []
        return [self.spec.batch / statistics.median(t) for t in self.times if t]

    @property
    def samples_per_second(self):
        values = self.throughputs
        return statistics.median(values) if values else None

    @property
    def spread(self):
        values = self.throughputs
        if len(values) < 2 or not self.samples_per_second:
            return None
        return (max(values) - min(values)) / self.samples_per_second


def _optimizer(name):
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate=0.01)
    return keras.optimizers.get(name)


def data_for(spec, steps, seed=SEED):
    """Random inputs of the model's shape and integer labels, ``steps`` batches."""
    rng = np.random.default_rng(seed)
    n = spec.batch * steps
    if spec.vocab:
        x = rng.integers(0, spec.vocab, size=(n,) + spec.input_shape).astype("int32")
    else:
        x = rng.normal(size=(n,) + spec.input_shape).astype("float32")
    y = rng.integers(0, NUM_CLASSES, size=(n,)).astype("int64")
    if BACKEND == "tensorflow":
        return tf.constant(x), tf.constant(y)
    return x, y


def initial_weights(spec):
    """The weights every model of ``spec`` starts from (seeded)."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(SEED)
    return spec.build(plain=True).get_weights()


def bench_model(spec, repeats, steps, warmup, optimizer="sgd", log=print, xla=False,
                methods=None, deadline=None):
    """Time every method on ``spec``; return the list of :class:`Runner`.

    ``deadline`` (a ``time.perf_counter()`` value, or None): no repeat starts after it,
    except the first."""
    weights = initial_weights(spec)
    x, y = data_for(spec, max(warmup, 4))
    runners = [Runner(label, identifier, spec, weights, optimizer, jit)
               for label, identifier, jit in method_rows(xla, spec.dense_chain, methods)]
    for runner in runners:
        start = time.perf_counter()
        runner.warm_up(x, y, warmup)
        log(f"  [{spec.key}] warm-up {runner.label}: {time.perf_counter() - start:.1f}s"
            + (f" ({runner.status}: {runner.note})" if runner.status != "ok" else ""))
    rng = random.Random(SEED)
    for r in range(repeats):
        if r and deadline is not None and time.perf_counter() > deadline:
            log(f"  [{spec.key}] time bound: {r} of {repeats} repeats")
            for runner in runners:
                if runner.status == "ok":
                    runner.note = (runner.note + "; " if runner.note else "") + \
                        f"{r} of {repeats} repeats (time bound)"
            break
        start = time.perf_counter()
        for _ in range(steps):
            order = list(runners)
            rng.shuffle(order)
            for runner in order:
                runner.step(r)
        log(f"  [{spec.key}] repeat {r + 1}/{repeats}: {time.perf_counter() - start:.1f}s")
    # Free the models now: freeing many traced models at once (at exit) is slow.
    for runner in runners:
        runner.release()
    keras.backend.clear_session()
    gc.collect()
    return runners


# --------------------------------------------------------------------------------------
# Peak memory, one fresh process per method

#: The child's marker line on stdout, followed by its result as JSON.
_MEMORY_MARK = "CREDIT_BENCH_MEMORY "
_MiB = 1024.0 * 1024.0


def _proc_status():
    """``VmRSS`` and ``VmHWM`` (peak RSS since the last reset) in bytes, or None where
    ``/proc/self/status`` does not exist (not Linux)."""
    try:
        with open("/proc/self/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        return {k: int(fields[k].split()[0]) * 1024 for k in ("VmRSS", "VmHWM")}
    except (OSError, KeyError, ValueError):
        return None


def _reset_peak():
    """Reset the kernel's peak-RSS mark (``VmHWM``) to the current RSS (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def measure_memory(key, label, identifier, jit_compile=False, optimizer="sgd", warmup=1,
                   steps=3):
    """In this process: build ``SPECS[key]`` with the row's method, warm up, and return
    the peak RSS increase over the steps (see the module docstring) as a dict:
    ``status`` ("ok", "n/a", "error", "unsupported"), ``note``, ``peak_bytes``,
    ``baseline_bytes``.

    Meant for a fresh process (:func:`peak_memory` starts one): in a process that has
    trained other models the heap holds their leftovers.
    """
    spec = SPECS[key]
    _quiet()
    runner = Runner(label, identifier, spec, initial_weights(spec), optimizer,
                    jit_compile)
    x, y = data_for(spec, max(warmup, 4))
    runner.warm_up(x, y, warmup)
    result = {"status": runner.status, "note": runner.note, "peak_bytes": None,
              "baseline_bytes": None}
    if runner.status != "ok":
        return result
    if _proc_status() is None:
        return {**result, "status": "unsupported", "note": "no /proc/self/status"}
    gc.collect()  # the warm-up's garbage is not the step's
    before = _proc_status()
    _reset_peak()
    for r in range(steps):
        runner.step(0)
    after = _proc_status()
    if runner.status != "ok":
        return {**result, "status": runner.status, "note": runner.note}
    return {**result, "peak_bytes": after["VmHWM"] - before["VmRSS"],
            "baseline_bytes": before["VmRSS"]}


def _memory_child():
    """Entry point of :func:`peak_memory`'s child: arguments as JSON in ``argv[1]``."""
    kwargs = json.loads(sys.argv[1])
    try:
        result = measure_memory(**kwargs)
    except Exception as err:  # noqa: BLE001 - reported in the table
        result = {"status": "error", "note": f"{type(err).__name__}: {err}"[:300],
                  "peak_bytes": None, "baseline_bytes": None}
    print(_MEMORY_MARK + json.dumps(result), flush=True)


def peak_memory(key, runner, optimizer="sgd", warmup=1, steps=3, timeout=600):
    """Peak memory of a training step of ``runner``'s row on model ``key``, measured in a
    fresh Python process (see the module docstring). Returns the child's result dict
    (``peak_bytes`` None when it could not measure, with the reason in ``note``)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", MALLOC_MMAP_THRESHOLD_="65536",
               PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH"))
                                          if p))
    kwargs = {"key": key, "label": runner.label, "identifier": runner.identifier,
              "jit_compile": runner.jit_compile, "optimizer": optimizer,
              "warmup": warmup, "steps": steps}
    command = [sys.executable, "-c",
               "from experiments.bench import _memory_child; _memory_child()",
               json.dumps(kwargs)]
    try:
        done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "error", "note": f"memory child timed out after {timeout} s",
                "peak_bytes": None, "baseline_bytes": None}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(_MEMORY_MARK):
            return json.loads(line[len(_MEMORY_MARK):])
    tail = " ".join((done.stderr or done.stdout).split()[-40:])
    return {"status": "error", "note": f"memory child exited {done.returncode}: {tail}",
            "peak_bytes": None, "baseline_bytes": None}


def measure_peaks(key, runners, optimizer="sgd", warmup=1, steps=3, log=print,
                  deadline=None):
    """Fill ``peak_mib`` of every runner that trained, one fresh process each (none
    starts after ``deadline``, a ``time.perf_counter()`` value)."""
    for runner in runners:
        if runner.status != "ok":
            continue
        if deadline is not None and time.perf_counter() > deadline:
            runner.note = (runner.note + "; " if runner.note else "") + \
                "peak memory not measured (time bound)"
            continue
        start = time.perf_counter()
        result = peak_memory(key, runner, optimizer, warmup, steps)
        if result["peak_bytes"] is not None:
            runner.peak_mib = result["peak_bytes"] / _MiB
        elif result["note"]:
            runner.note = (runner.note + "; " if runner.note else "") + \
                f"peak memory not measured: {result['note']}"
        log(f"  [{key}] memory {runner.label}: "
            f"{_fmt(runner.peak_mib, '.1f') or result['status']} MiB "
            f"({time.perf_counter() - start:.1f}s)")


def _ratio(runners, label, reference):
    """Median over repeats of ``label``'s throughput over ``reference``'s in that repeat."""
    by = {r.label: r for r in runners}
    if label not in by or reference not in by:
        return None
    pairs = list(zip(by[label].throughputs, by[reference].throughputs))
    return statistics.median(a / b for a, b in pairs) if pairs else None


def _fmt(value, pattern):
    return "" if value is None else format(value, pattern)


def table(spec, runners):
    lines = [f"## ({spec.key}) {spec.title}", "",
             "| method | samples/s | x plain Keras | peak MiB | x backprop | spread | traces "
             "| note |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for runner in runners:
        sps = runner.samples_per_second
        if sps is None:
            cells = [runner.status, "", "", "", "", ""]
        else:
            spread = runner.spread
            cells = [f"{sps:,.0f}",
                     _fmt(_ratio(runners, runner.label, KERAS), ".2f"),
                     _fmt(runner.peak_mib, ".1f"),
                     _fmt(_ratio(runners, runner.label, BACKPROP), ".2f"),
                     "" if spread is None else f"{100 * spread:.0f}%",
                     str(runner.traces)]
        label = "plain keras.Model.fit" if runner.label == KERAS else runner.label
        note = runner.note.replace("|", "/")
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {note} |")
    return lines


def targets(results):
    """Rows ``(text, model key, ratio, minimum, met)`` for the targets measured (and the
    reported ratios, with minimum None)."""
    rows = []
    for text, label, reference, minimum, keys in TARGETS:
        for key, (spec, runners) in results.items():
            if key in keys:
                ratio = _ratio(runners, label, reference)
                rows.append((text, key, ratio, minimum,
                             ratio is not None and ratio >= minimum))
    for text, label, reference, keys in REPORTED:
        for key, (spec, runners) in results.items():
            if key in keys:
                rows.append((text, key, _ratio(runners, label, reference), None, None))
    return rows


# --------------------------------------------------------------------------------------
# Off-the-shelf models: experiments.offtheshelf, one fresh process per model and method

OFFTHESHELF_MODELS = ("ResNet50", "MobileNetV2")


def offtheshelf_methods():
    """Plain Keras, backprop and every registered method that trains any model (the
    ones for chains of Dense layers only are left out)."""
    return [KERAS, BACKPROP] + [m for m in credit.available() if m != BACKPROP]


def offtheshelf_rows(models, methods, reused=(), steps=10, deadline=None,
                     memory_gb=8.0, log=print):
    """One :mod:`experiments.offtheshelf` record per model and method: from ``reused``
    (records of an earlier run, matched on model and method) or measured now in a fresh
    process; after ``deadline`` a ``{"status": "not run"}`` record."""
    from experiments import offtheshelf

    names = registry.aliases()

    def canonical(method):  # "sg" in a record is the row "synthetic_gradients"
        return names.get(method.lower(), method)

    known = {(r["model"], canonical(r["method"])): r for r in reused}
    child_args = argparse.Namespace(size=32, batch=8, steps=steps, memory_gb=memory_gb,
                                    timeout=1800)
    records = []
    for model in models:
        for method in methods:
            if (model, canonical(method)) in known:
                records.append(dict(known[(model, canonical(method))], method=method,
                                    reused=True))
                continue
            if deadline is not None and time.perf_counter() > deadline:
                records.append({"model": model, "method": method, "status": "not run",
                                "note": "time bound (--minutes)"})
                continue
            start = time.perf_counter()
            if deadline is not None:
                child_args.timeout = max(60.0, deadline - start + 600)
            try:
                record = offtheshelf.run_one(model, method, child_args)
            except subprocess.TimeoutExpired:
                record = {"model": model, "method": method,
                          "error": f"timed out after {child_args.timeout:.0f} s"}
            records.append(record)
            log(f"  [{model}] {method}: {time.perf_counter() - start:.0f}s "
                f"{record.get('status') or ('error' if 'error' in record else 'ok')}")
    return records


def offtheshelf_report(records, args):
    """The off-the-shelf section of the report (empty without records)."""
    if not records:
        return []
    from experiments import offtheshelf

    reused = sorted({r["method"] for r in records if r.get("reused")})
    lines = [
        "## Off-the-shelf models: keras.applications at 32x32x3",
        "",
        "keras.applications models (`weights=None`, 10 classes), batch 8, Adam, one seeded "
        f"random batch, {args.offtheshelf_steps} steps (20 in reused rows); plain Keras "
        "and each method in a fresh process capped at 8 GB of address space "
        "(`experiments.offtheshelf`). added params: the synthesizers', heads' or "
        "feedback matrices' weights; first step: tracing and one step; step: median "
        "of the later steps (x plain Keras of the same run); peak RSS: the whole "
        "process's (model, tracing and steps; x plain Keras); unmoved: of the weights "
        "plain Keras moves, those the method has not moved after 4 steps. Not the "
        "transient memory of the tables above.",
        ""]
    if reused:
        lines += [f"Rows reused from `python -m experiments.offtheshelf` "
                  f"({', '.join(args.offtheshelf_records)}), not measured in this run: "
                  f"{', '.join(reused)}. Every ratio is to its model's plain Keras row "
                  "(reused too, if listed).", ""]
    lines += [offtheshelf.table(records), ""]
    return lines


def report(results, args, elapsed, offtheshelf_records=()):
    command = "python -m experiments.bench" + "".join(f" {a}" for a in args.argv)
    lines = [
        "# Benchmark: training-step throughput and peak memory",
        "",
        f"`{command}`, {datetime.date.today().isoformat()}; Keras backend {BACKEND}: "
        f"{libraries()[0]}, Keras {keras.__version__}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPU core(s), {libraries()[1]}; optimizer {args.optimizer}; "
        f"{elapsed:.0f} s in all; load average {args.load:.1f} before, "
        f"{max(getattr(args, 'loads', ()), default=args.load):.1f} at most during the "
        f"run, {_load():.1f} after (a load over the core count means other processes "
        "shared the cores: absolute times are then slow, the ratios less affected)"
        + (f"; time bound {args.minutes:g} min" if getattr(args, "minutes", None)
           else "") + ".",
        "",
        "Every model starts from the same weights. After a warm-up `fit` that traces each "
        "train function, the methods take turns, one training step each (one call of "
        "the train function `fit` calls per step), in a fresh random order every round. "
        f"samples/s: batch / median step time of a repeat, median over {args.repeats} "
        "repeats (rounds per repeat under each table). x plain Keras, x backprop: median "
        "over the repeats of the throughput ratio within a repeat (backprop = credit's "
        "backprop, which takes Keras's fast path, one `tape.gradient`; backprop "
        "(blockwise) = the same numbers through the block engine). spread: (max - min) / "
        "median of the throughput over the repeats. traces: how often the "
        "train step was traced in all (1 = no retracing). Other processes on the machine "
        "slow every method alike; compare the ratios rather than absolute numbers.",
        "",
        ("peak MiB: peak resident set size (RSS, Linux `VmHWM`) during "
         f"{args.memory_steps} training steps minus the RSS before them, in a fresh "
         "process per method after the same warm-up (model, optimizer and method state "
         "and the traced function are in the baseline: this is the transient memory of "
         "a step, activations kept for the backward pass included); glibc returns "
         "buffers over 64 KiB to the system when freed (`MALLOC_MMAP_THRESHOLD_=65536`); "
         "noise about 1 MiB. TensorFlow keeps no allocator statistics on CPU."
         if args.memory else "peak MiB: not measured (`--no-memory`)."),
        "",
    ]
    for key, (spec, runners) in results.items():
        lines += table(spec, runners)
        lines += ["", f"{args.steps or spec.steps} rounds per repeat, "
                      f"{args.warmup} warm-up steps.", ""]
    lines += offtheshelf_report(offtheshelf_records, args)
    lines += ["## Targets", "", "| target | model | ratio | met |", "|---|---|---:|---|"]
    for text, key, ratio, minimum, met in targets(results):
        verdict = "reported" if minimum is None else ("yes" if met else "NO")
        lines.append(f"| {text} | ({key}) | {_fmt(ratio, '.3f') or 'n/a'} | {verdict} |")
    return "\n".join(lines) + "\n"


def _load():
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return float("nan")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m experiments.bench",
        description="Time training steps of every credit method against plain Keras.")
    parser.add_argument("--quick", action="store_true",
                        help="2 repeats of 2 rounds: a smoke test, not a measurement "
                             "(default output results/_scratch/bench.md)")
    parser.add_argument("--models", default="a,b,c,d,e",
                        help="comma-separated subset of a (MLP 256), b (MLP 2048), c (CNN), "
                             "d (residual CNN), e (transformer); t: a tiny MLP (tests)")
    parser.add_argument("--methods", default=None,
                        help="comma-separated method names or aliases to time (default: "
                             "all; plain Keras and backprop always run, the ratios' "
                             "references)")
    parser.add_argument("--no-memory", dest="memory", action="store_false",
                        help="skip the peak-memory column (one fresh process per method "
                             "and model)")
    parser.add_argument("--memory-steps", type=int, default=3,
                        help="training steps over which the peak memory is read (default 3)")
    parser.add_argument("--xla", action="store_true",
                        help="also time plain Keras, backprop, FA, DFA and SG compiled "
                             "with XLA (jit_compile=True)")
    parser.add_argument("--repeats", type=int, default=None,
                        help=f"repeats (default {DEFAULT_REPEATS}; 2 with --quick)")
    parser.add_argument("--steps", type=int, default=None,
                        help="rounds per repeat, one step per method each (default: per "
                             "model, a 30, b 6, c 20, d 8, e 8; 2 with --quick)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="warm-up fit steps per method (default 3; 1 with --quick)")
    parser.add_argument("--optimizer", default="sgd",
                        help="optimizer of every model: sgd (lr 0.01, default) or a Keras "
                             "optimizer name")
    parser.add_argument("--offtheshelf", default=None,
                        help="comma-separated keras.applications models for the "
                             "off-the-shelf table, or 'none' (default: "
                             f"{','.join(OFFTHESHELF_MODELS)} in a full run; none with "
                             "--quick or --models)")
    parser.add_argument("--offtheshelf-methods", default=None,
                        help="comma-separated methods of the off-the-shelf table "
                             "(default: plain Keras and every method)")
    parser.add_argument("--offtheshelf-records", default=None,
                        help="comma-separated offtheshelf.jsonl files of "
                             "`python -m experiments.offtheshelf`: their rows are reused, "
                             "not measured again")
    parser.add_argument("--offtheshelf-steps", type=int, default=10,
                        help="steps of each off-the-shelf run (default 10)")
    parser.add_argument("--minutes", type=float, default=None,
                        help="time bound: start no new work after this many minutes "
                             "(see the module docstring)")
    parser.add_argument("--out", default=None,
                        help="markdown output (default results/bench.md, on JAX "
                             "results/bench_jax.md; results/_scratch/bench.md with --quick)")
    parser.add_argument("--backend", choices=BACKENDS, default=None,
                        help="Keras backend to time on (default: KERAS_BACKEND, else "
                             "tensorflow); the command re-runs itself with KERAS_BACKEND "
                             "set, since Keras picks its backend at import")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.xla and (args.backend or BACKEND) != "tensorflow":
        parser.error("--xla adds XLA rows on the tensorflow backend; on JAX every row is "
                     "compiled with XLA already: drop --xla.")
    explicit_models = any(a == "--models" or a.startswith("--models=") for a in args.argv)
    if args.offtheshelf is None:
        args.offtheshelf = "none" if args.quick or explicit_models else \
            ",".join(OFFTHESHELF_MODELS)
    args.offtheshelf = [] if args.offtheshelf.strip().lower() == "none" else \
        [m.strip() for m in args.offtheshelf.split(",") if m.strip()]
    bad = [m for m in args.offtheshelf if not hasattr(keras.applications, m)]
    if bad:
        parser.error(f"--offtheshelf takes keras.applications model names (e.g. "
                     f"{','.join(OFFTHESHELF_MODELS)}) or 'none'; got {bad[0]!r}")
    args.offtheshelf_methods = (
        offtheshelf_methods() if args.offtheshelf_methods is None else
        [m.strip() for m in args.offtheshelf_methods.split(",") if m.strip()])
    args.offtheshelf_records = ([] if not args.offtheshelf_records else
                                [p.strip() for p in args.offtheshelf_records.split(",")])
    if args.minutes is not None and not args.minutes > 0:
        parser.error(f"--minutes must be a positive number; got {args.minutes}")
    keys = [k.strip() for k in args.models.split(",") if k.strip()]
    if not keys or any(k not in SPECS for k in keys):
        parser.error(f"--models takes a comma-separated subset of "
                     f"{','.join(sorted(SPECS))}; got {args.models!r}")
    args.models = keys
    if args.methods is not None:
        names = registry.aliases()

        def canonical(name):
            return names.get(name.strip().lower().replace("-", "_").replace(" ", "_"))

        wanted = [m.strip() for m in args.methods.split(",") if m.strip()]
        labels = {KERAS, BLOCKWISE}
        bad = [m for m in wanted if m not in labels and canonical(m) is None]
        if not wanted or bad:
            parser.error(f"--methods takes comma-separated method names from "
                         f"{', '.join(credit.available(dense_chains=True))} (or "
                         f"'{BLOCKWISE}'); got {args.methods!r}")
        args.methods = {m if m in labels else canonical(m) for m in wanted}
    if args.repeats is None:
        args.repeats = 2 if args.quick else DEFAULT_REPEATS
    if args.steps is None and args.quick:
        args.steps = 2
    if args.warmup is None:
        args.warmup = 1 if args.quick else 3
    for name in ("repeats", "steps", "warmup", "memory_steps", "offtheshelf_steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1; got {value}")
    if args.out is None:
        args.out = os.path.join("results", "_scratch", "bench.md") if args.quick else \
            os.path.join("results", "bench.md" if BACKEND == "tensorflow" else
                         f"bench_{BACKEND}.md")
    return args


def _quiet():
    # Each model has its own train function; TF's "excessive retracing" heuristic counts
    # them together and warns wrongly. The traces column checks retracing per model.
    if BACKEND == "tensorflow":
        tf.get_logger().setLevel("ERROR")


def libraries():
    """The backend's library versions and devices, for the report's header."""
    if BACKEND == "tensorflow":
        gpus = tf.config.list_physical_devices("GPU")
        devices = (", ".join(d.name for d in gpus) if gpus else "CPU only")
        return f"TensorFlow {tf.__version__}", devices
    import jax
    import jaxlib

    kinds = sorted({d.device_kind for d in jax.devices()})
    platform_ = jax.default_backend()
    devices = ("CPU only" if platform_ == "cpu" else
               f"{len(jax.devices())} x {', '.join(kinds)} ({platform_})")
    return f"JAX {jax.__version__} (jaxlib {jaxlib.__version__})", devices


def main(argv=None):
    """Run the benchmark; print the tables and targets, write ``--out``; return results."""
    args = parse_args(argv)
    if args.backend is not None and args.backend != BACKEND:
        # Keras chose its backend at import: run again in a process that chooses this one.
        env = dict(os.environ, KERAS_BACKEND=args.backend)
        code = subprocess.run([sys.executable, "-m", "experiments.bench", *args.argv],
                              env=env).returncode
        raise SystemExit(code)
    args.load = _load()
    args.loads = []
    _quiet()
    start = time.perf_counter()
    end = None if args.minutes is None else start + 60 * args.minutes
    results = {}

    def log(text):
        args.loads.append(_load())
        print(text, flush=True)

    parts = len(args.models) + bool(args.offtheshelf)
    for i, key in enumerate(args.models):
        spec = SPECS[key]
        steps = args.steps or spec.steps
        # Each part (a model, the off-the-shelf table) gets an even share of what is
        # left; within a model, the repeats stop at half of it (the rest for memory).
        now = time.perf_counter()
        share = None if end is None else (end - now) / (parts - i)
        deadline = None if end is None else now + share
        print(f"({key}) {spec.title}: {args.repeats} repeats of {steps} rounds", flush=True)
        runners = bench_model(spec, args.repeats, steps, args.warmup, args.optimizer,
                              log=log, xla=args.xla, methods=args.methods,
                              deadline=None if end is None else
                              now + (share / 2 if args.memory else share))
        if args.memory:
            measure_peaks(key, runners, args.optimizer, args.warmup, args.memory_steps,
                          log=log, deadline=deadline)
        results[key] = (spec, runners)
    records = []
    if args.offtheshelf:
        from experiments import offtheshelf

        reused = [r for path in args.offtheshelf_records
                  for r in offtheshelf.read_records(path)]
        print(f"off-the-shelf: {', '.join(args.offtheshelf)} x "
              f"{len(args.offtheshelf_methods)} methods", flush=True)
        records = offtheshelf_rows(args.offtheshelf, args.offtheshelf_methods, reused,
                                   args.offtheshelf_steps, end, log=log)
    text = report(results, args, time.perf_counter() - start, records)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write_atomic(args.out, text)
    print()
    print(text)
    for text_, key, ratio, minimum, met in targets(results):
        shown = "not measured" if ratio is None else f"{ratio:.3f}"
        verdict = "reported" if minimum is None else ("target met" if met else
                                                       "target MISSED")
        print(f"{verdict}: {text_} on ({key}): {shown}")
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
