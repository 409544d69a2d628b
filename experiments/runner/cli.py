"""The command-line convention shared by the experiment scripts (argparse).

Every script takes:

- ``--quick``: a smoke run of the whole pipeline (one seed, few epochs, small data);
- ``--out DIR``: the output root (default ``results``); a script writes under
  ``DIR/<its name>/``;
- ``--seeds S [S ...]``: the seeds, space- or comma-separated (``--seeds 0 1 2``,
  ``--seeds 0,1,2``, ``--seeds 7``);
- list flags (``--methods``, ``--datasets``, ``--models``, ``--tasks``) take names
  space- or comma-separated.

Sweeps add ``--workers N`` (worker processes), ``--ray [ADDRESS]`` (Ray tasks) and
``--in-process`` (train in the script's own process: no isolation from crashes).
A bad value exits with status 2 and a message naming the flag, the value and the fix.

Example:
    >>> p = argparse.ArgumentParser()
    >>> add_common(p, seeds_default="0 1 2")
    >>> args = p.parse_args(["--seeds", "0,3", "7", "--quick"])
    >>> seeds(args.seeds, p), args.quick, args.out
    ([0, 3, 7], True, 'results')
"""

import argparse
import pathlib

__all__ = ["add_common", "add_parallel", "check_out", "names", "positive_int", "seeds"]


def names(values):
    """Flatten space- and comma-separated names: ``["a,b", "c"]`` -> ``["a", "b", "c"]``."""
    out = []
    for value in values or []:
        out += [v.strip() for v in str(value).split(",") if v.strip()]
    return out


def seeds(values, parser, flag="--seeds"):
    """The seeds of a ``--seeds`` flag as a list of ints; exits on a bad value.

    Seeds are integers >= 0, each given once.
    """
    given = " ".join(str(v) for v in values)
    fix = f"Pass for example {flag} 0 1 2 (or {flag} 0,1,2)."
    try:
        out = [int(v) for v in names(values)]
    except ValueError:
        parser.error(f"{flag}: got {given}; seeds are integers >= 0. {fix}")
    if not out:
        parser.error(f"{flag}: got no seed. {fix}")
    if any(s < 0 for s in out) or len(set(out)) != len(out):
        parser.error(f"{flag}: got {given}; seeds must be distinct integers >= 0, each "
                     f"given once. {fix}")
    return out


def positive_int(text):
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value <= 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}; e.g. 10")
    return value


def add_common(parser, seeds_default, quick_help="a smoke run: one seed, few epochs",
               out_name=None):
    """Add ``--quick``, ``--out DIR`` and ``--seeds`` to ``parser``."""
    where = f"; files go to DIR/{out_name}/" if out_name else ""
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--out", default="results", metavar="DIR",
                        help=f"output root (default results){where}")
    parser.add_argument("--seeds", nargs="+", default=None, metavar="S",
                        help=f"seeds, space- or comma-separated (default {seeds_default})")


def add_parallel(parser):
    """Add ``--workers N``, ``--ray [ADDRESS]``, ``--in-process`` and ``--rerun-stale`` to
    a sweep's parser."""
    parser.add_argument("--workers", type=positive_int, default=1, metavar="N",
                        help="train N runs at a time in worker processes (default 1)")
    parser.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                        help="run the runs as Ray tasks: on a local Ray instance, or on the "
                             "cluster at ADDRESS (needs pip install -e \".[ray]\")")
    parser.add_argument("--in-process", action="store_true",
                        help="train in this process, not in a worker process (for a "
                             "debugger; a crash inside TensorFlow then ends the sweep "
                             "instead of being recorded as a failed run)")
    parser.add_argument("--rerun-stale", action="store_true",
                        help="train again the finished runs that were trained under "
                             "another plan than credit makes for their config now (a "
                             "default changed since); the old folders are kept as "
                             "RUN.stale-N. Without it such runs are kept, with a warning")


def check_out(parser, out):
    """Exit if ``--out`` names an existing file; return the folder as a Path."""
    path = pathlib.Path(out)
    if path.exists() and not path.is_dir():
        parser.error(f"--out: got {out!r}, which is a file; pass a folder.")
    return path
