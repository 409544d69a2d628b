"""The sweep: configs -> one folder per run, resumable, in one or many processes.

:func:`run_sweep` validates every config first (nothing is trained if one is bad),
then trains each config into ``<out>/<run_id>/`` (see
:mod:`experiments.runner.training` for the files). A folder with ``done`` is skipped;
a folder without it (an interrupted or failed run) is deleted and the run trained again
from scratch, so re-running a sweep resumes it. A run whose loss becomes NaN is recorded
as diverged and the sweep goes on. A config whose model cannot read its data set, or
whose method's build rejects the model (a ``ValueError`` such as credit's ``CutError``,
or kickback on a ten-class task), is **not applicable**: it gets no folder and a note in
the tables, with the reason.

**A finished run is checked against the current code.** Each run records in
``config.json`` the fingerprint of the plan it trained with (every layer's rule as
``credit.summary`` states it and the method's whole config:
:func:`experiments.runner.training.plan_fingerprint`). A config's hash cannot see a
default of credit that changed since (feedback points, a method's options), so a
finished run whose recorded plan differs from the one credit makes for its config now
is **stale**: the sweep warns, naming such runs, and keeps them (``RunResult.stale``);
``rerun_stale=True`` (``--rerun-stale``) trains them again, after setting the old
folder aside as ``<run_id>.stale-N`` (its ``config.json`` renamed ``config.stale.json``,
so that tables no longer read it; nothing is deleted).

**A run that fails does not end the sweep.** Runs are trained in worker processes
(:mod:`experiments.runner.isolation`; ``spawn``), so that a crash inside TensorFlow (a
segmentation fault, or glibc aborting on a corrupted heap) ends one worker, not the
sweep: the run is recorded as **failed** with how its process died and its last line
of output (``failed`` and ``config.json`` in its folder, ``output.log`` with its output),
a new worker takes the runs that are left, and the tables list the failed run with its
reason. A Python exception in a run is recorded the same way, with its traceback. A
failed run has no ``done``: the next sweep on the folder trains it again.
``isolate=False`` (``--in-process``) trains in the sweep's own process instead (a
debugger sees the run; exceptions are still recorded, a crash still ends everything).

Runs are independent, so they can run in parallel: ``workers=N`` keeps N worker
processes (each with ``cores // N`` TensorFlow threads), ``ray=True`` (or an address)
runs them as Ray tasks (a task whose Ray worker dies is recorded as failed, not
retried). Every run is **claimed** first (:mod:`experiments.runner.folders`),
so two workers -- or two sweeps started on the same folder -- never train the same
config; a run whose owner died (a killed worker) is redone by the next worker or sweep
that reaches it. Hooks (``callbacks``, ``after_fit``) must then be picklable (module-level
functions).

Speed, measured on ``python -m experiments.compare --quick`` (wall clock of the whole
command on a 2-core machine):

- 11 methods, 31 runs, quiet machine (load below 1), 2026-12-04: one process 81 s
  (80 CPU seconds: one process keeps one core busy), ``--workers 2`` 58 s (94 CPU
  seconds): **1.40x**.

Earlier, on the same machine shared with other engineers' jobs:

- 6 methods, 16 runs: one process 104 s, ``--workers 2`` 135 s, while other jobs
  started (load 1.3 rising to 4.1); then with two or three other jobs throughout (load
  about 4): 152 and 143 s against 152 and 162 s. No gain.
- 11 methods, 31 runs, four other jobs throughout (load 6 to 7): one process 438 s
  (159 CPU seconds), ``--workers 2`` 348 s (171 CPU seconds): 1.26 x, largely because
  two processes get a larger share of a contended machine.

A worker pays TensorFlow's import and its own tracing of every model (about 10-15%
more CPU in all); a run of these small models keeps about one core busy, so on a
quiet machine a second worker puts the idle core to work, and on a loaded one the gain
is whatever share of the machine the extra process wins. Workers pay off more with
longer runs and more free cores.

Isolation costs one worker's start-up per sweep (TensorFlow's import; the worker then
keeps its data cache and trains run after run), and one more per crash. Measured on 2
cores shared with other jobs (load 8 to 10), 2026-12-07, ``--quick --datasets digits``
with 6 methods (6 runs): 82 s wall, 31.7 CPU seconds in a worker against 84 s, 28.2 CPU
seconds ``--in-process`` (the worker's import overlaps the sweep's checks): about 0.6 CPU
seconds a run. One ResNet run on MNIST (``--quick --models resnet --methods backprop
--datasets mnist``): 121 s wall, 40 CPU seconds against 87 s, 26 CPU seconds.

Example:
    >>> configs = grid(methods=["backprop", "dfa"], datasets=["digits"], seeds=[0, 1],
    ...                epochs=5)                                        # doctest: +SKIP
    >>> results = run_sweep(configs, "results/demo/runs", workers=2)    # doctest: +SKIP
    >>> df = credit.results.load_runs("results/demo/runs")              # doctest: +SKIP
"""

import contextlib
import dataclasses
import os
import pathlib
import shutil
import time
import traceback
import warnings

import keras
from experiments.runner import configs as configs_lib
from experiments.runner import folders
from experiments.runner import isolation
from experiments.runner import training
from experiments.runner.configs import ConfigError, canonical_json, run_id, where
from experiments.runner.files import read_json

__all__ = ["RunResult", "run_one", "run_sweep", "validate"]

#: Seconds between two looks at a run that another live process is training.
POLL_SECONDS = 2.0


@dataclasses.dataclass
class RunResult:
    """What :func:`run_sweep` did with one config.

    Attributes:
        config: the completed, canonical config.
        run: its hash (the folder name), or None when not applicable.
        folder: the run folder (a :class:`pathlib.Path`), or None when not applicable.
        status: "done", "diverged", "not_applicable", "failed" (its training raised or
            its process died; not finished, trained again by the next sweep), or "busy"
            (another live process holds the run; only from :func:`run_one`, never in a
            sweep's results).
        cached: True if the run was finished earlier (by an earlier sweep or another
            worker) and not retrained here.
        reason: why the config does not apply (status "not_applicable": refused at
            the check, with no folder, or at the first training step, with a folder
            that records it), or why the run failed (status "failed": the exception,
            or the signal or exit status of its process and its last output), else None.
        redone: True if the run replaced a dead owner's claim (a killed worker).
        seconds: training seconds of this process (0 when cached).
        stale: True if the run is cached but was trained under another plan than credit
            makes for its config now (see the module docstring).
    """

    config: dict
    run: str | None
    folder: pathlib.Path | None
    status: str
    cached: bool = False
    reason: str | None = None
    redone: bool = False
    seconds: float = 0.0
    stale: bool = False


def validate(configs, flags=None):
    """Check a whole sweep before any training.

    Checks every key of every config, then loads each data set once and builds each
    (method, model, data set) once to find the configs that do not apply.

    Args:
        configs: a list of run configs.
        flags: optional ``{config key: name shown in messages}``, e.g.
            ``{"epochs": "--epochs"}`` for a command line.

    Returns:
        ``(completed configs without duplicates, {run_id: reason})`` for the configs
        that do not apply.

    Raises:
        ConfigError: listing every problem, one per line, each naming the flag or key,
            the value received and the fix.
    """
    completed = _checked(configs, flags)
    return completed, _not_applicable(completed, flags)[0]


def _checked(configs, flags):
    """The completed configs, or ConfigError; the cheap half of :func:`validate`."""
    if isinstance(configs, dict) or not isinstance(configs, (list, tuple)):
        raise ConfigError(f"configs must be a list of dicts, got {type(configs).__name__}; "
                          "wrap a single config in a list.")
    if not configs:
        raise ConfigError("the sweep has no runs: pass at least one config (method, "
                          "dataset, seed, epochs).")
    messages, completed, seen = [], [], set()
    for config in configs:
        try:
            config = configs_lib.complete(config)
        except TypeError as err:
            messages.append(f"a run config must be JSON-serialisable: {err}.")
            continue
        for _, message in configs_lib.config_problems(config, flags):
            if message not in messages:
                messages.append(message)
        if not messages:
            key = run_id(config)
            if key not in seen:
                seen.add(key)
                completed.append(config)
    if messages:
        raise ConfigError("\n".join(messages))
    return completed


def _not_applicable(completed, flags):
    """``({run_id: reason}, {run_id: plan fingerprint})``: the configs that do not apply,
    and what the others would train with now (loads data, builds models)."""
    not_applicable, plans, checked = {}, {}, {}
    # In reverse, so that the data sets of the first runs are the last loaded (cached).
    for config in reversed(completed):
        key = canonical_json({k: config[k] for k in (
            "method", "method_config", "dataset", "data_options", "model", "loss",
            "val_fraction", "n_train")})
        if key not in checked:
            try:
                checked[key] = training.check(config)
            except (ConfigError, KeyboardInterrupt):
                raise
            except (ValueError, TypeError) as err:
                raise ConfigError(f"{where('dataset', flags)}: could not load "
                                  f"{config['dataset']!r} with data_options "
                                  f"{config['data_options']!r}: {err}") from err
            keras.backend.clear_session(free_memory=False)
        reason, plan = checked[key]
        if reason is not None:
            not_applicable[run_id(config)] = reason
        elif plan is not None:
            plans[run_id(config)] = plan
    return not_applicable, plans


def _stale(folder, plan):
    """Whether the finished run in ``folder`` recorded another plan than ``plan``."""
    if plan is None:
        return False
    try:
        recorded = read_json(folder / "config.json").get("plan")
    except (OSError, ValueError):
        return False
    return recorded is not None and recorded != plan


def _set_aside(folder):
    """Rename a stale run's folder to ``<run_id>.stale-N`` (first free N) and its
    ``config.json`` to ``config.stale.json``, so that tables no longer read it."""
    n = 1
    while folder.with_name(f"{folder.name}.stale-{n}").exists():
        n += 1
    target = folder.with_name(f"{folder.name}.stale-{n}")
    folder.rename(target)
    config = target / "config.json"
    if config.exists():
        config.rename(target / "config.stale.json")
    return target


def _stale_message(stale, out):
    shown = "; ".join(f"{run_id(c)} ({c['method']}, {c['model']['type']}, {c['dataset']}, "
                      f"seed {c['seed']})" for c in stale[:3])
    more = f" and {len(stale) - 3} more" if len(stale) > 3 else ""
    return (f"{len(stale)} finished run(s) in {os.fspath(out)} were trained under another "
            f"plan than credit makes for their config now (a default changed since: "
            f"feedback points, a method's options): {shown}{more}. Their results are kept "
            "and read as they are; pass --rerun-stale (run_sweep(rerun_stale=True)) to "
            "train them again (the old folders are kept as <run_id>.stale-N).")


def _cached(config, key, folder):
    status, reason = folders.finished(folder)
    return RunResult(config, key, folder, status, cached=True, reason=reason)


def run_one(config, out, callbacks=None, after_fit=None, log=None):
    """Claim and train one completed config into ``out/<run_id>/``.

    Args:
        config: a completed config.
        out: the folder of the run folders.
        callbacks, after_fit: the hooks of :func:`run_sweep`.
        log: optional file name: the run's output (stdout and stderr, file descriptors
            included) goes to that file of the run folder while it trains.

    Returns a :class:`RunResult`: cached if the run is done, "busy" if another live
    process holds its claim, "failed" if training raised (recorded in the run folder
    with the traceback), else the status of the training. The claim is released
    afterwards.
    """
    out = pathlib.Path(out)
    key = run_id(config)
    folder = out / key
    if folders.is_done(folder):
        return _cached(config, key, folder)
    claim = folders.try_claim(out, key)
    if claim is None:
        return RunResult(config, key, folder, "busy")
    try:
        if folders.is_done(folder):  # finished between the first look and the claim
            return _cached(config, key, folder)
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir()
        begin = time.perf_counter()
        output = isolation.output_to(folder / log) if log else contextlib.nullcontext()
        try:
            with output:
                status = training.train(config, folder,
                                        callbacks(config) if callbacks else (), after_fit)
        except Exception as err:  # recorded; the sweep goes on (Ctrl-C still stops it)
            reason = _one_line(f"{type(err).__name__}: {err}")
            training.record_failure(folder, config, reason, traceback.format_exc())
            return RunResult(config, key, folder, folders.STATUS_FAILED, reason=reason,
                             redone=claim.stolen is not None,
                             seconds=time.perf_counter() - begin)
        reason = folders.finished(folder)[1] if status == folders.STATUS_NA else None
        return RunResult(config, key, folder, status, redone=claim.stolen is not None,
                         seconds=time.perf_counter() - begin, reason=reason)
    finally:
        claim.release()


def _one_line(text, limit=300):
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[:limit - 3] + "..."


def _crashed(task, how):
    """The result of a run whose process died (``how``: the signal or exit status):
    recorded as failed in its folder, with the last line of its output."""
    config, out = task[0], pathlib.Path(task[1])
    key = run_id(config)
    folder = out / key
    lines = isolation.tail(folder / isolation.OUTPUT)
    last = next((line.strip() for line in reversed(lines) if line.strip()), None)
    reason = _one_line(f"{how}; its last output: {last}" if last else how)
    claim = folders.try_claim(out, key)  # the dead process's claim is stale
    if claim is None:  # another live process holds the run: it is not ours to record
        return RunResult(config, key, folder, "busy")
    try:
        if folders.is_done(folder):  # it died after finishing
            status, done_reason = folders.finished(folder)
            return RunResult(config, key, folder, status, reason=done_reason)
        details = "\n".join([f"The last lines of {isolation.OUTPUT}:", *lines]) if lines else ""
        training.record_failure(folder, config, reason, details)
    finally:
        claim.release()
    return RunResult(config, key, folder, folders.STATUS_FAILED, reason=reason)


# ---------------------------------------------------------------------------
# Executors: one process, a local process pool, Ray


def _worker_init(threads):
    """Limit TensorFlow's thread pools of a worker process (before any TF op; a worker
    that already ran TensorFlow, such as a reused Ray worker, keeps its pools)."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(min(threads, 2))
    except RuntimeError:  # "cannot be modified after initialization"
        pass


def _threads(workers):
    return max(1, (os.cpu_count() or 1) // workers)


class _Serial:
    """In this process (``isolate=False``): a crash of a run ends the sweep."""

    def __init__(self):
        self.pending = []

    def submit(self, config, out, callbacks, after_fit):
        self.pending.append((config, out, callbacks, after_fit))

    def results(self):
        while self.pending:
            yield run_one(*self.pending.pop(0))

    def close(self):
        pass


def _ray_task(threads, *args):
    _worker_init(threads)
    return run_one(*args, log=isolation.OUTPUT)


class _Ray:
    def __init__(self, address, workers):
        try:
            import ray
        except ImportError as err:
            raise ImportError("ray=... needs Ray: pip install -e \".[ray]\" (or pip install "
                              "ray), or run without --ray.") from err
        self.ray = ray
        if not ray.is_initialized():
            root = str(pathlib.Path(__file__).resolve().parents[2])  # imports experiments
            path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
            options = {"runtime_env": {"env_vars": {"PYTHONPATH": path,
                                                    "TF_CPP_MIN_LOG_LEVEL": "3",
                                                    "LIBC_FATAL_STDERR_": "1"}},
                       "include_dashboard": False, "log_to_driver": True}
            if address in (None, True, "", "local"):
                options["num_cpus"] = os.cpu_count()
            else:
                options["address"] = address
            ray.init(**options)
        self.threads = _threads(workers) if workers > 1 else 1
        # A task whose worker dies (a crash in TensorFlow) is recorded, not retried.
        self.task = ray.remote(num_cpus=1, max_retries=0)(_ray_task)
        self.tasks = {}

    def submit(self, *args):
        self.tasks[self.task.remote(self.threads, *args)] = args

    def results(self):
        while self.tasks:
            done, _ = self.ray.wait(list(self.tasks), num_returns=1)
            args = self.tasks.pop(done[0])
            try:
                result = self.ray.get(done[0])
            except self.ray.exceptions.RayError as err:  # its Ray worker died
                result = _crashed(args, f"the run's Ray task failed: {type(err).__name__}: "
                                        f"{_one_line(err, 200)}")
            yield result

    def close(self):
        for ref in self.tasks:
            self.ray.cancel(ref)


def _executor(workers, ray, isolate):
    if ray not in (None, False):
        return _Ray(ray, workers)
    if workers > 1 or isolate:
        return isolation.Workers(workers, _crashed,
                                 threads=_threads(workers) if workers > 1 else None)
    return _Serial()


# ---------------------------------------------------------------------------
# The sweep


def run_sweep(configs, out, *, flags=None, verbose=1, callbacks=None, after_fit=None,
              workers=1, ray=None, isolate=True, poll=POLL_SECONDS, rerun_stale=False):
    """Run every config into ``out/<run_id>/``, skipping finished runs.

    Args:
        configs: a list of run configs (see :mod:`experiments.runner.configs`).
        out: the folder of the run folders; created if missing.
        flags: names of the config keys in error messages (see :func:`validate`).
        verbose: 1 shows a progress bar over the runs to train, with the time left
            (``keras.utils.Progbar``); 0 nothing.
        callbacks: optional ``fn(config) -> list of keras callbacks`` added to each fit.
        after_fit: optional ``fn(model, data, config, folder)`` called after training,
            before ``done`` is written: extra files of a run go here (written with
            :func:`experiments.runner.files.write_atomic`).
        workers: worker processes training runs at the same time.
        ray: None, or True / "local" (a local Ray instance) / an address
            ("ray://host:10001", "auto"): run the runs as Ray tasks.
        isolate: True (default): train in worker processes, so that a crash of one run
            is recorded as a failed run and the others go on. False, with
            ``workers=1``: train in this process (hooks need not be picklable; a crash
            ends the sweep).
        poll: seconds between looks at a run that another live process is training.
        rerun_stale: train again the finished runs whose recorded plan differs from
            the one credit makes for their config now (the old folder is set aside as
            ``<run_id>.stale-N``); False (default) keeps them, with a warning.

    Returns:
        One :class:`RunResult` per distinct config, in order; failed runs have status
        "failed" and their reason.

    Raises:
        ConfigError: if a config is invalid (before any training).
        ValueError: if ``workers`` is not an integer >= 1.
    """
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}; pass e.g. 2.")
    completed = _checked(configs, flags)
    out = pathlib.Path(out)
    pending = [c for c in completed if not folders.is_done(out / run_id(c))]
    # Workers start while the sweep's applicability is checked (data loads, model builds).
    executor = _executor(workers, ray, isolate) if pending else None
    try:
        not_applicable, plans = _not_applicable(completed, flags)
    except BaseException:
        if executor is not None:
            executor.close()
        raise
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    todo, stale = [], []
    for config in completed:
        key = run_id(config)
        if key in not_applicable:
            results[key] = RunResult(config, None, None, folders.STATUS_NA,
                                     reason=not_applicable[key])
        elif folders.is_done(out / key):
            is_stale = _stale(out / key, plans.get(key))
            if is_stale and rerun_stale:
                _set_aside(out / key)
                todo.append(config)
                continue
            if is_stale:
                stale.append(config)
            results[key] = _cached(config, key, out / key)
            results[key].stale = is_stale
        else:
            todo.append(config)
    if stale:
        warnings.warn(_stale_message(stale, out), stacklevel=2)
    if todo and executor is None:
        executor = _executor(workers, ray, isolate)
    bar = keras.utils.Progbar(len(todo), unit_name="run", verbose=verbose) if todo else None
    try:
        finished = 0
        while todo:
            for config in todo:
                executor.submit(config, out, callbacks, after_fit)
            busy = []
            for result in executor.results():
                if result.status == "busy":
                    busy.append(result.config)
                    continue
                results[result.run] = result
                finished += 1
                bar.update(finished)
            todo = busy
            if todo:  # held by another live process: wait, then look again
                time.sleep(poll)
    finally:
        if executor is not None:
            executor.close()
    return [results[run_id(config)] for config in completed]


