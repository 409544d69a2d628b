"""Runs in worker processes, so that a run that crashes does not take the sweep down.

A fault inside TensorFlow's C++ (a segmentation fault, or glibc aborting on a corrupted
heap: ``munmap_chunk(): invalid pointer``) ends the whole process; no ``try`` catches
it. So :func:`experiments.runner.sweep.run_sweep` trains its runs in **worker
processes** (``spawn``), and the sweep's own process only hands out runs and collects
their results:

- a worker is started once and reused for run after run (TensorFlow's import, about
  5-10 s, is paid once per worker, not once per run; its data cache is kept too);
- a worker sends each run's output (its stdout and stderr, at the file-descriptor level,
  so TensorFlow's C++ messages and glibc's abort message too) to ``output.log`` in the
  run folder;
- when a worker dies in the middle of a run, the sweep records that run as failed, with
  the signal or exit status and the last line of its output, and starts a new worker
  for the runs that are left (see ``experiments.runner.sweep``).

Example:
    >>> workers = Workers(2, crashed=lambda task, reason: ...)      # doctest: +SKIP
    >>> workers.submit(config, out, None, None)                    # doctest: +SKIP
    >>> results = list(workers.results()); workers.close()         # doctest: +SKIP
"""

import collections
import contextlib
import multiprocessing
import multiprocessing.connection
import os
import pathlib
import signal
import sys

__all__ = ["OUTPUT", "Workers", "death_reason", "output_to", "tail"]

#: The file of a run folder that gets the output of a run trained in a worker.
OUTPUT = "output.log"


@contextlib.contextmanager
def output_to(path):
    """Send this process's stdout and stderr to ``path`` (appended) while in the block.

    File descriptors 1 and 2 are redirected, not only ``sys.stdout``: what TensorFlow's
    C++ code and glibc write (an abort message before a crash) lands in the file too.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
    finally:
        os.close(fd)
    try:
        yield pathlib.Path(path)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def tail(path, lines=20):
    """The last ``lines`` lines of a text file (an empty list if it cannot be read)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    return text.splitlines()[-lines:]


def death_reason(exitcode):
    """Why a worker process ended, in words, from its ``exitcode``.

    Example:
        >>> death_reason(-6)
        "the run's process was killed by signal 6 (SIGABRT)"
    """
    if exitcode is None:
        return "the run's process ended without an exit status"
    if exitcode < 0:
        try:
            name = f" ({signal.Signals(-exitcode).name})"
        except ValueError:
            name = ""
        return f"the run's process was killed by signal {-exitcode}{name}"
    return f"the run's process exited with status {exitcode}"


def _worker_main(conn, threads):
    """A worker: train the runs it is sent, one at a time, until it is sent None."""
    # Ctrl-C reaches the whole process group: the sweep's process handles it and stops
    # its workers, so a worker ignores it (no traceback per worker on the terminal).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # glibc writes its abort messages ("double free or corruption") to the terminal
    # unless told to use stderr, which is the run's output.log during a run.
    os.environ["LIBC_FATAL_STDERR_"] = "1"
    from experiments.runner import sweep  # imports TensorFlow, Keras and credit

    if threads:
        sweep._worker_init(threads)
    while True:
        try:
            task = conn.recv()
        except EOFError:  # the sweep's process is gone
            return
        if task is None:
            return
        conn.send(sweep.run_one(*task, log=OUTPUT))


class _Worker:
    def __init__(self, context, threads):
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_worker_main, args=(child, threads),
                                       name="sweep-worker", daemon=True)
        self.process.start()
        child.close()


class Workers:
    """Up to ``size`` worker processes that train the submitted runs.

    Args:
        size: the number of workers (runs trained at the same time).
        crashed: ``fn(task, reason) -> RunResult`` for a run whose worker died; the
            task is the tuple given to :meth:`submit`, the reason says how it died.
        threads: TensorFlow threads of each worker (None: TensorFlow's default).

    Attributes:
        started: workers started so far (one more after each crash, when runs remain).
    """

    def __init__(self, size, crashed, threads=None):
        self.size, self.crashed, self.threads = size, crashed, threads
        self.context = multiprocessing.get_context("spawn")
        self.queue = collections.deque()
        self.busy = {}  # worker -> task
        self.started = 0
        # Start them now: their imports overlap the sweep's checks.
        self.idle = [self._start() for _ in range(size)]

    def _start(self):
        self.started += 1
        return _Worker(self.context, self.threads)

    def submit(self, *task):
        """Queue a run: the arguments of :func:`experiments.runner.sweep.run_one`."""
        self.queue.append(task)

    def _dispatch(self):
        while self.queue:
            if not self.idle:
                if len(self.busy) >= self.size:
                    return
                self.idle.append(self._start())  # after a crash: a new worker
            worker = self.idle.pop()
            try:
                worker.conn.send(self.queue[0])
            except OSError:  # it died while idle: drop it, the task stays queued
                worker.process.join()
                worker.conn.close()
                continue
            self.busy[worker] = self.queue.popleft()

    def results(self):
        """Yield a :class:`~experiments.runner.sweep.RunResult` per submitted run, in the
        order they finish; a run whose worker died gives ``crashed(task, reason)``."""
        while self.queue or self.busy:
            self._dispatch()
            handles = {}
            for worker in self.busy:
                handles[worker.conn] = worker
                handles[worker.process.sentinel] = worker
            ready = {handles[h] for h in multiprocessing.connection.wait(list(handles))}
            for worker in ready:
                result = None
                try:
                    if worker.conn.poll():
                        result = worker.conn.recv()
                    elif worker.process.is_alive():
                        continue  # woken for nothing: still training
                except (EOFError, OSError):  # the pipe closed: the worker died
                    result = None
                task = self.busy.pop(worker)
                if result is not None:
                    self.idle.append(worker)
                    yield result
                    continue
                # Reaped first: a claim's owner is then seen dead (a zombie looks alive).
                worker.process.join()
                worker.conn.close()
                yield self.crashed(task, death_reason(worker.process.exitcode))

    def close(self):
        """Stop every worker; one in the middle of a run (after Ctrl-C) is terminated,
        and its run, left without ``done``, is trained again by the next sweep."""
        for worker in self.idle:
            with contextlib.suppress(OSError):
                worker.conn.send(None)
        for worker in self.busy:
            worker.process.terminate()
        for worker in [*self.idle, *self.busy]:
            worker.process.join(10)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.conn.close()
        self.idle, self.busy = [], {}
