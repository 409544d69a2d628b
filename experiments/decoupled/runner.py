"""The coordinator's side: train a split model on stage workers, and the measurements
the simulator needs (every stage's piece times, message transfer times).

Example:
    >>> spec = {"width": 256, "depth": 4, "input_dim": 784, "classes": 10, "seed": 0}
    >>> with Workers(2, threads=1) as workers:                          # doctest: +SKIP
    ...     result = run_decoupled(workers, spec, x, y, schedule="dni", batch_size=128,
    ...                            epochs=2, window=2)
    >>> result.epoch_seconds, result.weights                          # doctest: +SKIP
"""

import dataclasses
import statistics

import numpy as np

from experiments.decoupled.schedules import PIECES
from experiments.decoupled.split import build_mlp, check_schedule, method_config, split_model

DEFAULT_OPTIMIZER = {"class_name": "Adam", "config": {"learning_rate": 1e-3}}


@dataclasses.dataclass
class RunResult:
    """One training run (decoupled on K workers, or the unsplit model in one process).

    Attributes:
        schedule: ``"locked"``, ``"gpipe"``, ``"dfa"``, ``"dni"``, or ``"fused"`` (the
            unsplit model with ``credit.compute_gradients``; ``method`` says which).
        method: the credit method's config.
        stages, window, micro_batches, threads: how it ran.
        epoch_seconds: wall-clock per epoch, from the first stage's start to the last
            stage's end.
        cpu_seconds: per epoch, the CPU time of all stages together.
        waiting: per stage, seconds blocked on messages (summed over epochs).
        train_loss, train_accuracy: per epoch, on the training batches (as they were
            trained: before each batch's update).
        timings: per stage, a dict from piece to its durations (seconds per call).
        weights: the final weights, in ``model.get_weights()`` order.
    """

    schedule: str
    method: dict
    stages: int
    window: int
    micro_batches: int
    threads: int
    epoch_seconds: list
    cpu_seconds: list
    waiting: list
    train_loss: list
    train_accuracy: list
    timings: list
    weights: list


def _check(name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}={value!r}: must be an integer >= {minimum}; pass for "
                         f"example {name}={max(minimum, 2)}.")


def _payload(spec, weights, method, split, schedule, optimizer):
    return {"model": dict(spec), "weights": weights, "method": method, "split": split,
            "schedule": schedule, "optimizer": optimizer}


def initial_weights(spec):
    """The initial weights of ``build_mlp(**spec)`` (seeded by ``spec["seed"]``)."""
    return build_mlp(**spec).get_weights()


def run_decoupled(workers, spec, x, y, *, schedule, batch_size, epochs=1, seed=0,
                  window=1, micro_batches=1, optimizer=None, method=None, weights=None,
                  epoch_offset=0):
    """Train ``build_mlp(**spec)`` split into ``workers.count`` stages under ``schedule``.

    Args:
        workers: a :class:`~experiments.decoupled.workers.Workers`, one per stage.
        spec: ``build_mlp`` arguments (``width``, ``depth``, ``input_dim``, ``classes``,
            ``seed``).
        x, y: training data (numpy arrays; ``y`` integer classes).
        schedule: ``"locked"``, ``"gpipe"``, ``"dfa"`` or ``"dni"``.
        batch_size, epochs, seed: the batches (``seed`` orders them).
        window: DFA and DNI: how many batches a stage may run ahead (1: lock-step).
        micro_batches: GPipe's M; must divide ``batch_size``.
        optimizer: a Keras optimizer config (default Adam, learning rate 1e-3).
        method: the credit method's config (default :func:`~experiments.decoupled.
            split.method_config` of the schedule, seeded by ``seed``).
        weights: initial weights (default :func:`initial_weights` of ``spec``).
        epoch_offset: number of the first epoch (for the batch order).

    Returns:
        A :class:`RunResult`.

    Raises:
        ValueError: a bad argument; the message names it, its value and the fix.

    References: DNI, Jaderberg et al. 2016, "Decoupled Neural Interfaces using
    Synthetic Gradients" (ICML 2017); DFA, Nøkland 2016, "Direct Feedback Alignment
    Provides Learning in Deep Neural Networks" (NeurIPS); GPipe, Huang et al. 2019,
    "GPipe: Efficient Training of Giant Neural Networks using Pipeline Parallelism"
    (NeurIPS).

    Example:
        >>> spec = {"width": 1024, "depth": 8, "input_dim": 784, "classes": 10, "seed": 0}
        >>> with Workers(2, threads=1) as workers:                  # doctest: +SKIP
        ...     result = run_decoupled(workers, spec, x, y, schedule="dfa",
        ...                            batch_size=128, epochs=2, window=2)
        >>> result.epoch_seconds, result.train_accuracy              # doctest: +SKIP
    """
    check_schedule(schedule)
    for name, value in (("batch_size", batch_size), ("epochs", epochs), ("window", window),
                        ("micro_batches", micro_batches)):
        _check(name, value)
    if schedule == "gpipe" and batch_size % micro_batches:
        divisors = [d for d in range(2, 9) if batch_size % d == 0]
        raise ValueError(f"micro_batches={micro_batches} does not divide batch_size="
                         f"{batch_size}; GPipe cuts every batch into equal micro-batches. "
                         f"Pass a divisor, e.g. micro_batches={divisors[-1] if divisors else 1}.")
    if batch_size > len(x):
        raise ValueError(f"batch_size={batch_size} is larger than the {len(x)} training "
                         f"examples; pass batch_size <= {len(x)}.")
    model = build_mlp(**spec)
    split = split_model(model, workers.count)
    method = method_config(schedule, split, seed) if method is None else method
    weights = model.get_weights() if weights is None else weights
    optimizer = DEFAULT_OPTIMIZER if optimizer is None else optimizer
    base = _payload(spec, weights, method, split, schedule, optimizer)
    payloads = [dict(base, x=x if k == 0 else None, y=y) for k in range(workers.count)]
    workers.ask("setup", payloads)
    train = {"epochs": int(epochs), "batch_size": int(batch_size), "seed": int(seed),
             "window": int(window), "micro_batches": int(micro_batches),
             "epoch_offset": int(epoch_offset)}
    replies = workers.ask("train", [train] * workers.count)
    stage_weights = workers.ask("weights", [None] * workers.count)
    for reply in stage_weights:
        for name, values in reply["weights"].items():
            model.get_layer(name).set_weights(values)
    epoch_seconds, cpu, losses, accuracy = [], [], [], []
    for e in range(epochs):
        per_stage = [r["epochs"][e] for r in replies]
        epoch_seconds.append(max(s["end"] for s in per_stage)
                             - min(s["start"] for s in per_stage))
        cpu.append(sum(s["cpu"] for s in per_stage))
        last = per_stage[-1]
        losses.append(float(np.mean(last["losses"])))
        accuracy.append(last["correct"] / last["examples"])
    waiting = [sum(s["waiting"] for s in r["epochs"]) for r in replies]
    return RunResult(schedule, method, workers.count, int(window), int(micro_batches),
                     workers.threads, epoch_seconds, cpu, waiting, losses, accuracy,
                     [r["timings"] for r in replies], model.get_weights())


def run_fused(worker, spec, x, y, *, method, batch_size, epochs=1, seed=0, optimizer=None,
              weights=None, epoch_offset=0):
    """Train the unsplit model with ``credit.compute_gradients`` in one worker process.

    Same arguments as :func:`run_decoupled` (``method`` is required: a credit method
    config); returns a :class:`RunResult` with ``schedule="fused"`` and ``stages=1``.

    Example:
        >>> with Workers(1, threads=2) as one:                      # doctest: +SKIP
        ...     result = run_fused(one, spec, x, y, method={"name": "backprop"},
        ...                        batch_size=128, epochs=2)
    """
    if worker.count != 1:
        raise ValueError(f"run_fused trains in one process; got Workers({worker.count}). "
                         "Pass Workers(1, threads=...).")
    optimizer = DEFAULT_OPTIMIZER if optimizer is None else optimizer
    weights = initial_weights(spec) if weights is None else weights
    payload = {"model": dict(spec), "weights": weights, "method": method, "x": x, "y": y,
               "batch_size": int(batch_size), "epochs": int(epochs), "seed": int(seed),
               "optimizer": optimizer, "epoch_offset": int(epoch_offset)}
    (reply,) = worker.ask("fused", [payload])
    logs = reply["epochs"]
    return RunResult("fused", method, 1, 1, 1, worker.threads,
                     [log["end"] - log["start"] for log in logs], [log["cpu"] for log in logs],
                     [0.0], [log["loss"] for log in logs], [log["accuracy"] for log in logs],
                     [{}], reply["weights"])


def profile(worker, spec, x, y, *, configs, batch_size, steps=6, warmup=2, seed=0,
            optimizer=None, conditioned=False, statistic="min"):
    """Time every stage's pieces for ``build_mlp(**spec)`` under several configurations,
    in one worker (one piece at a time, the configurations interleaved step by step).

    Args:
        worker: ``Workers(1, threads=...)``: the device to time.
        spec, x, y, batch_size, seed, optimizer: as in :func:`run_decoupled`.
        configs: ``(stages, schedule, micro_batches)`` triples.
        steps, warmup: timed steps and untimed (tracing) steps per configuration.
        conditioned: DNI's synthesizers also see the label (cDNI).
        statistic: ``"min"`` (default) or ``"median"`` over the timed steps; see
            :func:`piece_times`.

    Returns:
        A dict from each config to its per-stage seconds of the simulator's pieces
        (:data:`~experiments.decoupled.schedules.PIECES`; GPipe's forward and backward
        per micro-batch, its update per batch).

    Example:
        >>> with Workers(1, threads=1) as one:                      # doctest: +SKIP
        ...     times = profile(one, spec, x, y, configs=[(4, "dni", 1)], batch_size=128)
        >>> simulate("dni", times[(4, "dni", 1)], steps=31).seconds   # doctest: +SKIP
    """
    if worker.count != 1:
        raise ValueError(f"profile times stages on one device; got Workers({worker.count}). "
                         "Pass Workers(1, threads=1).")
    model = build_mlp(**spec)
    payload = {"model": dict(spec), "weights": model.get_weights(), "x": x, "y": y,
               "batch_size": int(batch_size), "steps": int(steps), "warmup": int(warmup),
               "seed": int(seed), "configs": [],
               "optimizer": DEFAULT_OPTIMIZER if optimizer is None else optimizer}
    for stages, schedule, m in configs:
        check_schedule(schedule)
        split = split_model(model, stages)
        payload["configs"].append({
            "split": split, "schedule": schedule, "micro_batches": int(m),
            "method": method_config(schedule, split, seed, conditioned=conditioned)})
    (timings,) = worker.ask("profile", [payload])
    return {tuple(config): piece_times(t, config[1], micro_batches=config[2],
                                       statistic=statistic)
            for config, t in zip(configs, timings)}


STATISTICS = {"median": statistics.median, "min": min}


def piece_times(timings, schedule, micro_batches=1, statistic="median"):
    """Per stage, the seconds of the simulator's pieces of ``schedule``, from the
    stages' timed pieces (per call; GPipe's accumulate happens M-1 times per batch, and
    is spread over its M backward passes).

    Args:
        timings: per stage, a dict from piece to its durations.
        schedule, micro_batches: the schedule and GPipe's M.
        statistic: ``"median"``, the typical duration under the conditions of the
            measurement; or ``"min"``, the duration without interference. A piece
            is a fixed computation: other processes on the machine only ever add to
            its time, and the more so the longer it is (a 60 ms piece is preempted
            more often than a 10 ms one), so on a loaded machine medians favour
            splits into short pieces; minima do not.
    """
    if statistic not in STATISTICS:
        raise ValueError(f"statistic={statistic!r}: choose 'median' or 'min'.")
    reduce = STATISTICS[statistic]
    out = []
    for stage in timings:
        pieces = {}
        for piece, parts in PIECES[schedule].items():
            total = 0.0
            for part in parts:
                values = stage.get(part, [])
                if not values:
                    continue
                value = reduce(values)
                if schedule == "gpipe" and part == "accumulate":
                    value *= (micro_batches - 1) / micro_batches
                total += value
            pieces[piece] = total
        out.append(pieces)
    return out


def transfer_times(workers, shapes, repeats=30):
    """Median one-way time of a float32 message of each shape between two workers
    (half a round trip through their inbox queues), as ``{shape: seconds}``.

    Example:
        >>> with Workers(2, threads=1) as pair:                     # doctest: +SKIP
        ...     transfer_times(pair, [(128, 1024)])
        {(128, 1024): 0.0004}
    """
    if workers.count < 2:
        raise ValueError("transfer_times needs two workers (a sender and an echo); got "
                         f"Workers({workers.count}).")
    replies = workers.ask("pingpong", [{"shapes": [tuple(s) for s in shapes],
                                        "repeats": int(repeats)}] * workers.count)
    return replies[0]
