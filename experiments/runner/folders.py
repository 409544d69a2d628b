"""Run folders: ``done`` markers, finished status, and claims for concurrent workers.

A run lives in ``<out>/<run_id>/``; it is finished when it holds ``done`` (written
last). Before training a run, a worker **claims** it: it creates the file
``<out>/.claims/<run_id>`` with ``O_CREAT | O_EXCL`` (atomic: of two workers, exactly
one succeeds), holding the owner's host, process id and the process's start time. The
claim is removed after ``done`` is written. A claim whose owner process is dead (same
host, and no process with that id and start time) is **stale**: the worker that finds
it takes the run over and redoes it from scratch. Taking over is done under an
``fcntl.flock`` lock on ``<out>/.claims/.lock`` so that two workers cannot both break
the same stale claim. A claim made on another host is never taken as stale (its
process cannot be checked from here); delete the file by hand if that host is gone.

A run that **failed** (its training raised, or its process died: a segmentation fault
or an abort inside TensorFlow) holds a ``failed`` file with the reason and no ``done``:
it is not a result, and the next sweep on the folder trains it again.

Example:
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp())
    >>> claim = try_claim(out, "abc123")
    >>> claim is not None, try_claim(out, "abc123") is None   # held: a second claim fails
    (True, True)
    >>> claim.release(); try_claim(out, "abc123") is not None
    True
"""

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import pathlib
import socket

__all__ = ["Claim", "CLAIMS", "FAILED", "STATUS_DONE", "STATUS_DIVERGED", "STATUS_FAILED",
           "STATUS_NA", "claim_owner", "failure", "finished", "finished_status", "is_done",
           "is_stale", "try_claim"]

STATUS_DONE, STATUS_DIVERGED, STATUS_NA = "done", "diverged", "not_applicable"
#: A run whose training raised or whose process died; not finished (no ``done``).
STATUS_FAILED = "failed"
#: The marker file of a failed run: its reason, then the details (traceback, output).
FAILED = "failed"
#: The folder of the claim files, inside the sweep's output folder.
CLAIMS = ".claims"


def is_done(folder):
    """True if the run folder holds its ``done`` marker."""
    return (pathlib.Path(folder) / "done").exists()


def finished_status(folder):
    """"done", "diverged" or "not_applicable" for a finished run folder, read from its
    markers and config.json."""
    return finished(folder)[0]


def finished(folder):
    """``(status, reason)`` of a finished run folder; reason is None unless the engine
    refused the model (status "not_applicable")."""
    folder = pathlib.Path(folder)
    if (folder / "diverged").exists():
        return STATUS_DIVERGED, None
    try:
        with open(folder / "config.json") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return STATUS_DONE, None
    return record.get("status", STATUS_DONE), record.get("reason")


def failure(folder):
    """The reason (first line of the ``failed`` file) of a failed run, or None."""
    try:
        with open(pathlib.Path(folder) / FAILED) as f:
            return f.readline().rstrip("\n") or None
    except OSError:
        return None


def _start_time(pid):
    """The start time of process ``pid`` (clock ticks since boot), or None if unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    # Field 22; the command name (field 2) is in parentheses and may hold spaces.
    return int(stat[stat.rindex(")") + 2:].split()[19])


def _alive(pid, start):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    now = _start_time(pid)
    return start is None or now is None or now == start


def _me():
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "start": _start_time(pid)}


def claim_owner(path):
    """The owner dict of a claim file ({host, pid, start}), or None if it is gone or
    unreadable (being written)."""
    try:
        with open(path) as f:
            return json.loads(f.read())
    except (OSError, ValueError):
        return None


def is_stale(owner):
    """True if a claim's owner process is known to be dead (same host only)."""
    if owner is None or owner.get("host") != socket.gethostname():
        return False
    return not _alive(int(owner["pid"]), owner.get("start"))


@dataclasses.dataclass
class Claim:
    """A held claim on one run. ``release()`` removes it (after ``done`` is written).

    Attributes:
        path: the claim file.
        stolen: the owner of the stale claim this one replaced, or None.
    """

    path: pathlib.Path
    stolen: dict | None = None

    def release(self):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


@contextlib.contextmanager
def _lock(folder):
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _create(path, owner):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(owner))
        f.flush()
        os.fsync(f.fileno())


def try_claim(out, run):
    """Claim run ``run`` of the sweep in ``out``; a :class:`Claim`, or None if another
    live process holds it.

    A stale claim (its owner process is dead) is replaced, and the returned claim's
    ``stolen`` names the dead owner: the caller must then redo the run from scratch.
    """
    folder = pathlib.Path(out) / CLAIMS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / run
    with _lock(folder):  # serialises claiming and taking over on this host
        try:
            _create(path, _me())
            return Claim(path)
        except OSError as err:
            if err.errno != errno.EEXIST:
                raise
        owner = claim_owner(path)
        if not is_stale(owner):
            return None
        os.unlink(path)
        _create(path, _me())
        return Claim(path, stolen=owner)
