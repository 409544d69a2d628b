"""A discrete-event simulator of the schedules on K devices.

Fed with each stage's measured piece times and the time a message takes between two
devices, it plays the schedules of :mod:`~experiments.decoupled.schedules` on K devices
that each run one piece at a time, and returns the epoch time. Each schedule is a graph
of tasks (a stage's forward, backward, update or synthesizer step for one batch or
micro-batch) with dependencies (a message from another stage arrives ``transfer``
seconds after the task that sent it ends); a free device starts the ready task that its
worker would start: updates before forwards (DFA, DNI), synthesizer steps first (DNI).

Pieces per stage (seconds per call), as :func:`~experiments.decoupled.runner.
piece_times` reads them from a profile:

- ``locked``: ``forward``, ``backward`` (sends the input gradient), ``update``;
- ``gpipe``: ``forward`` and ``backward`` per micro-batch, ``update`` per batch;
- ``dfa``: ``forward`` (the last stage's includes the loss and e), ``update`` (the
  stage's local gradients and the optimizer step);
- ``dni``: ``forward``, ``backward`` (the synthesizer's prediction and backprop through
  the stage; sends the input gradient), ``update``, ``synth`` (the synthesizer's step
  when its target arrives);
- ``dgl``: ``forward``, ``update`` (the head's local loss, backprop through the stage
  and the optimizer steps); a stage waits for nothing but its input.

Transfers (seconds per message): ``activation`` (h, up), ``gradient`` (down),
``error`` (e, from the last stage), ``activation_micro`` and ``gradient_micro``
(GPipe); a number sets all of them; missing ones are 0.

Closed forms it reproduces (tests): locked backprop takes the sum of all stage times per
batch; GPipe with equal stages takes ``(M + K - 1)(f + b)`` per batch, idle a fraction
``(K - 1)/(M + K - 1)`` of the time (Huang et al. 2019, GPipe).

Example:
    >>> times = [{"forward": 1.0, "backward": 2.0, "update": 0.0}] * 2
    >>> simulate("locked", times, steps=3).seconds
    18.0
    >>> round(simulate("gpipe", times, steps=1, micro_batches=4).idle, 3)   # 1/5
    0.2
"""

import dataclasses
import heapq

from experiments.decoupled.schedules import PIECES
from experiments.decoupled.split import check_schedule

TRANSFERS = ("activation", "gradient", "error", "activation_micro", "gradient_micro")


@dataclasses.dataclass
class Simulation:
    """The result of :func:`simulate`.

    Attributes:
        schedule, stages, steps, window, micro_batches: what was simulated.
        seconds: time from the first task's start to the last one's end.
        busy: per device, the seconds it computed.
        idle: the fraction of device time spent idle, ``1 - sum(busy) / (K seconds)``.
    """

    schedule: str
    stages: int
    steps: int
    window: int
    micro_batches: int
    seconds: float
    busy: list
    idle: float

    @property
    def per_step(self):
        """Seconds per batch."""
        return self.seconds / self.steps

    @property
    def parallel_speedup(self):
        """The same tasks one after the other on one device, over :attr:`seconds`:
        ``K (1 - idle)``, the gain from running the stages in parallel alone."""
        return sum(self.busy) / self.seconds if self.seconds else float("nan")


class _Task:
    __slots__ = ("key", "device", "duration", "deps", "priority", "remaining", "ready_at",
                 "end", "dependents")

    def __init__(self, key, device, duration, deps, priority):
        self.key, self.device, self.duration = key, device, float(duration)
        self.deps, self.priority = deps, priority
        self.remaining, self.ready_at, self.end, self.dependents = 0, 0.0, None, []


def _transfers(transfer):
    if transfer is None:
        return dict.fromkeys(TRANSFERS, 0.0)
    if isinstance(transfer, (int, float)):
        return dict.fromkeys(TRANSFERS, float(transfer))
    unknown = set(transfer) - set(TRANSFERS)
    if unknown:
        raise ValueError(f"transfer has unknown message kinds {sorted(unknown)}; the kinds "
                         f"are {', '.join(TRANSFERS)}.")
    return {k: float(transfer.get(k, 0.0)) for k in TRANSFERS}


def _check_times(schedule, times):
    if not times:
        raise ValueError("times is empty: give one dict of piece times per stage.")
    needed = set(PIECES[schedule])
    for k, stage in enumerate(times):
        missing = needed - set(stage)
        if missing:
            raise ValueError(f"times[{k}] lacks {sorted(missing)} for schedule "
                             f"{schedule!r}; it needs {sorted(needed)} (seconds per call).")
        if any(stage[p] < 0 for p in needed):
            raise ValueError(f"times[{k}] has a negative duration: {stage}.")


def simulate(schedule, times, transfer=None, steps=1, window=None, micro_batches=1):
    """Play ``steps`` batches of ``schedule`` on ``len(times)`` devices.

    Args:
        schedule: ``"locked"``, ``"gpipe"``, ``"dfa"``, ``"dni"`` or ``"dgl"``.
        times: per stage, a dict of piece durations in seconds (see the module doc).
        transfer: seconds per message, a number or a dict by kind (default 0).
        steps: batches (an epoch's worth, for an epoch time).
        window: DFA and DNI: how far a stage may run ahead (default K, enough to keep
            every device busy; 1 is lock-step).
        micro_batches: GPipe's M.

    Returns:
        A :class:`Simulation`.

    Raises:
        ValueError: an unknown schedule, a missing piece, a bad count.
    """
    check_schedule(schedule)
    _check_times(schedule, times)
    for name, value in (("steps", steps), ("micro_batches", micro_batches)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r}: must be an integer >= 1.")
    K = len(times)
    window = K if window is None else window
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window={window!r}: must be an integer >= 1 (1: lock-step).")
    tr = _transfers(transfer)
    make = {"locked": _locked, "gpipe": _gpipe, "dfa": _dfa, "dni": _dni,
            "dgl": _dgl}[schedule]
    tasks = make(times, tr, steps, window, micro_batches)
    seconds, busy = _run(tasks, K)
    idle = 1.0 - sum(busy) / (K * seconds) if seconds > 0 else 0.0
    return Simulation(schedule, K, steps, window, micro_batches, seconds, busy, idle)


# --------------------------------------------------------------------------------------
# The task graphs


def _input(k, t, tr):
    """Stage k's forward pass at step t waits for stage k - 1's activations."""
    return [(("F", k - 1, t), tr["activation"])] if k else []


def _locked(times, tr, steps, window, micro_batches):
    K, tasks = len(times), []
    for t in range(steps):
        for k in range(K):
            deps = _input(k, t, tr)
            if t:
                deps.append((("U", k, t - 1), 0.0))
            tasks.append(_Task(("F", k, t), k, times[k]["forward"], deps, (t, 0, k)))
        for k in range(K):
            deps = [(("F", k, t), 0.0)]
            if k < K - 1:
                deps.append((("B", k + 1, t), tr["gradient"]))
            tasks.append(_Task(("B", k, t), k, times[k]["backward"], deps, (t, 1, -k)))
            tasks.append(_Task(("U", k, t), k, times[k]["update"], [(("B", k, t), 0.0)],
                               (t, 2, k)))
    return tasks


def _gpipe(times, tr, steps, window, M):
    K, tasks = len(times), []
    for t in range(steps):
        for k in range(K):
            for m in range(M):
                deps = [(("f", k - 1, t, m), tr["activation_micro"])] if k else []
                if m:
                    deps.append((("f", k, t, m - 1), 0.0))
                elif t:
                    deps.append((("U", k, t - 1), 0.0))
                tasks.append(_Task(("f", k, t, m), k, times[k]["forward"], deps, (t, 0, m)))
            for m in reversed(range(M)):
                deps = [(("f", k, t, m), 0.0)]
                if k < K - 1:
                    deps.append((("b", k + 1, t, m), tr["gradient_micro"]))
                else:  # GPipe: the last stage starts the backward passes after all forwards
                    deps.append((("f", k, t, M - 1), 0.0))
                if m < M - 1:
                    deps.append((("b", k, t, m + 1), 0.0))
                tasks.append(_Task(("b", k, t, m), k, times[k]["backward"], deps,
                                   (t, 1, M - 1 - m)))
            tasks.append(_Task(("U", k, t), k, times[k]["update"], [(("b", k, t, 0), 0.0)],
                               (t, 2, 0)))
    return tasks


def _dfa(times, tr, steps, window, micro_batches):
    K, tasks = len(times), []
    last = K - 1
    for t in range(steps):
        for k in range(K):
            deps = _input(k, t, tr)
            if t:
                deps.append((("F", k, t - 1), 0.0))
            if k == last and t:
                deps.append((("D", k, t - 1), 0.0))  # the last stage updates at once
            elif t >= window:
                deps.append((("D", k, t - window), 0.0))
            tasks.append(_Task(("F", k, t), k, times[k]["forward"], deps, (1, t)))
            deps = [(("F", k, t), 0.0)]
            if k < last:
                deps.append((("F", last, t), tr["error"]))
            if t:
                deps.append((("D", k, t - 1), 0.0))
            tasks.append(_Task(("D", k, t), k, times[k]["update"], deps, (0, t)))
    return tasks


def _dni(times, tr, steps, window, micro_batches):
    K, tasks = len(times), []
    last = K - 1
    for t in range(steps):
        for k in range(K):
            deps = _input(k, t, tr)
            if t:
                deps.append((("A", k, t - 1), 0.0))
            tasks.append(_Task(("F", k, t), k, times[k]["forward"], deps, (3, t)))
            deps = [(("F", k, t), 0.0)]
            if k < last and t >= window:
                deps.append((("T", k, t - window), 0.0))
            tasks.append(_Task(("G", k, t), k, times[k]["backward"], deps, (2, t)))
            tasks.append(_Task(("A", k, t), k, times[k]["update"], [(("G", k, t), 0.0)],
                               (0, t)))
            if k < last:
                deps = [(("G", k + 1, t), tr["gradient"]), (("A", k, t), 0.0)]
                if t:
                    deps.append((("T", k, t - 1), 0.0))
                tasks.append(_Task(("T", k, t), k, times[k]["synth"], deps, (1, t)))
    return tasks


def _dgl(times, tr, steps, window, micro_batches):
    K, tasks = len(times), []
    for t in range(steps):
        for k in range(K):
            deps = _input(k, t, tr)
            if t:
                deps.append((("U", k, t - 1), 0.0))
            tasks.append(_Task(("F", k, t), k, times[k]["forward"], deps, (1, t)))
            tasks.append(_Task(("U", k, t), k, times[k]["update"], [(("F", k, t), 0.0)],
                               (0, t)))
    return tasks


# --------------------------------------------------------------------------------------
# The engine


def _run(tasks, devices):
    """List scheduling: each device runs one task at a time; a free device starts, among
    its tasks whose inputs have arrived, the one of smallest priority. Returns the
    makespan and each device's busy seconds."""
    by_key = {task.key: task for task in tasks}
    for task in tasks:
        task.remaining = len(task.deps)
        for key, delay in task.deps:
            if key not in by_key:
                raise AssertionError(f"{task.key} depends on unknown task {key}")
            by_key[key].dependents.append((task, delay))
    ready = [[] for _ in range(devices)]  # tasks whose dependencies are all done
    for task in tasks:
        if not task.remaining:
            ready[task.device].append(task)
    free = [True] * devices
    busy = [0.0] * devices
    events, seq, now, done = [], 0, 0.0, 0
    while done < len(tasks):
        for d in range(devices):
            if not free[d]:
                continue
            candidates = [task for task in ready[d] if task.ready_at <= now + 1e-15]
            if not candidates:
                continue
            task = min(candidates, key=lambda item: (item.priority, item.key))
            ready[d].remove(task)
            task.end = now + task.duration
            busy[d] += task.duration
            free[d] = False
            heapq.heappush(events, (task.end, seq, task))
            seq += 1
        later = [task.ready_at for d in range(devices) if free[d] for task in ready[d]
                 if task.ready_at > now + 1e-15]
        upcoming = [events[0][0]] if events else []
        if not upcoming and not later:
            stuck = [task.key for task in tasks if task.end is None][:5]
            raise AssertionError(f"the schedule deadlocks; waiting tasks: {stuck}")
        now = min(upcoming + later)
        while events and events[0][0] <= now + 1e-15:
            _, _, task = heapq.heappop(events)
            free[task.device] = True
            done += 1
            for other, delay in task.dependents:
                other.remaining -= 1
                other.ready_at = max(other.ready_at, task.end + delay)
                if not other.remaining:
                    ready[other.device].append(other)
    start = 0.0
    end = max(task.end for task in tasks)
    return end - start, busy

