"""Stage workers: one process per stage, each with its own TensorFlow thread pools.

:class:`Workers` starts K workers with the ``spawn`` start method (a fresh interpreter
each, so TensorFlow's thread pools are set before its first op:
``tf.config.threading.set_intra_op_parallelism_threads(threads)`` and the inter-op pool
likewise). Each worker has an inbox queue (``multiprocessing.Queue``: its feeder thread
sends in the background, so a stage never blocks on a busy neighbour) through which the
stages exchange numpy arrays, and a control queue through which the coordinator (the
process that made :class:`Workers`) sends commands: ``setup`` a stage, ``train`` it for
some epochs, return its ``weights``, time message transfers (``pingpong``), time every
stage's pieces (``profile``) or train the unsplit model in-process (``fused``).

``backend="thread"`` runs the same workers as threads of this process (with
``queue.Queue``): the same schedules and messages, without process start-up, for tests.
Its workers share this process's TensorFlow thread pools.

Spawned workers import this checkout: the repository root is put on ``PYTHONPATH``, and
each worker reports the ``credit`` it imported, which must be the coordinator's.

Example:
    >>> with Workers(2, threads=1) as workers:                  # doctest: +SKIP
    ...     workers.info()[0]["threads"]
    (1, 1)
"""

import multiprocessing
import os
import pathlib
import queue
import threading
import time
import traceback

BACKENDS = ("process", "thread")
ROOT = str(pathlib.Path(__file__).resolve().parents[2])
#: Seconds between two looks at the workers while waiting for their replies.
POLL = 1.0


class WorkerError(RuntimeError):
    """A worker failed (its traceback is in the message) or died."""


def _set_threads(threads):
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(int(threads))
    tf.config.threading.set_inter_op_parallelism_threads(int(threads))


def _serve(index, count, threads, inboxes, control, replies, barrier):
    """A worker's main loop: run commands from ``control`` until ``stop``."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if threads is not None:
        _set_threads(threads)
    from experiments.decoupled.server import Server  # after the thread pools are set

    server = Server(index, count, inboxes, barrier)
    while True:
        command, payload = control.get()
        if command == "stop":
            break
        try:
            replies.put((index, "ok", getattr(server, command)(payload)))
        except BaseException:  # noqa: BLE001 - reported to the coordinator
            replies.put((index, "error", traceback.format_exc()))
            for k in range(count):  # the other stages may wait for this one
                if k != index:
                    inboxes[k].put(("abort", 0, 0, None))


class Workers:
    """K stage workers and the queues between them.

    Args:
        count: the number of workers (stages), >= 1.
        threads: TensorFlow intra- and inter-op threads per worker process (ignored by
            the thread backend, whose workers share this process's pools).
        backend: ``"process"`` (spawned processes) or ``"thread"``.

    Raises:
        ValueError: a bad argument (the message names it, its value and the fix).
        WorkerError: a worker imported another ``credit`` than this process.
    """

    def __init__(self, count, threads=1, backend="process"):
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"count={count!r}: the number of workers must be an integer "
                             ">= 1 (one per stage); pass for example count=2.")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                    or threads < 1):
            raise ValueError(f"threads={threads!r}: TensorFlow threads per worker must be "
                             "an integer >= 1; pass for example threads=1.")
        if backend not in BACKENDS:
            raise ValueError(f"backend={backend!r} is not a worker backend; choose "
                             f"{' or '.join(map(repr, BACKENDS))}.")
        self.count, self.threads, self.backend = count, threads, backend
        self._closed = False
        if backend == "process":
            ctx = multiprocessing.get_context("spawn")
            make_queue, barrier = ctx.Queue, ctx.Barrier(count)
            path = os.environ.get("PYTHONPATH", "")
            if ROOT not in path.split(os.pathsep):
                # Spawned interpreters import this checkout's experiments and credit.
                os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, path) if p)
        else:
            make_queue, barrier = queue.Queue, threading.Barrier(count)
        self.inboxes = [make_queue() for _ in range(count)]
        self.controls = [make_queue() for _ in range(count)]
        self.replies = make_queue()
        self.workers = []
        for k in range(count):
            args = (k, count, threads if backend == "process" else None, self.inboxes,
                    self.controls[k], self.replies, barrier)
            if backend == "process":
                worker = ctx.Process(target=_serve, args=args, daemon=True,
                                     name=f"credit-stage-{k}")
            else:
                worker = threading.Thread(target=_serve, args=args, daemon=True,
                                          name=f"credit-stage-{k}")
            worker.start()
            self.workers.append(worker)
        self._check_imports()

    def _check_imports(self):
        import credit

        for k, info in enumerate(self.ask("info", [None] * self.count)):
            if os.path.realpath(info["credit"]) != os.path.realpath(credit.__file__):
                self.close()
                raise WorkerError(
                    f"worker {k} imported credit from {info['credit']}, this process from "
                    f"{credit.__file__}; run from the repository root or put it on "
                    "PYTHONPATH.")

    def ask(self, command, payloads, timeout=None):
        """Send ``command`` to every worker (``payloads[k]`` to worker k) and return their
        replies in worker order.

        Raises:
            WorkerError: a worker failed (with its traceback) or died, or ``timeout``
                seconds passed; all workers are stopped then.
        """
        if self._closed:
            raise WorkerError("these workers are closed; start new ones.")
        if len(payloads) != self.count:
            raise ValueError(f"payloads has {len(payloads)} entries for {self.count} "
                             "workers: give one per worker.")
        for control, payload in zip(self.controls, payloads):
            control.put((command, payload))
        results, pending = [None] * self.count, set(range(self.count))
        begin = time.monotonic()
        while pending:
            try:
                index, status, value = self.replies.get(timeout=POLL)
            except queue.Empty:
                dead = [k for k in pending if not self.workers[k].is_alive()]
                late = timeout is not None and time.monotonic() - begin > timeout
                if dead or late:
                    self.close()
                    what = f"worker(s) {dead} died" if dead else f"no reply in {timeout} s"
                    raise WorkerError(f"{command}: {what}; the workers were stopped.")
                continue
            if status == "error":
                self.close()
                raise WorkerError(f"{command} failed in worker {index}:\n{value}")
            results[index] = value
            pending.discard(index)
        return results

    def info(self):
        """Per worker: its pid, the ``credit`` it imported, its TensorFlow threads."""
        return self.ask("info", [None] * self.count)

    def close(self):
        """Stop the workers (those that do not stop in time are terminated)."""
        if self._closed:
            return
        self._closed = True
        for control in self.controls:
            control.put(("stop", None))
        for worker in self.workers:
            worker.join(timeout=30)
            if self.backend == "process" and worker.is_alive():
                worker.terminate()
                worker.join(timeout=10)
        if self.backend == "process":
            for q in self.inboxes + self.controls + [self.replies]:
                q.cancel_join_thread()
                q.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
