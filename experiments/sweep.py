"""Compatibility name of :mod:`experiments.runner` (the runner now lives in small modules).

Example:
    >>> from experiments.sweep import run_sweep, write_atomic   # same as experiments.runner
"""

from experiments.runner import *  # noqa: F401,F403
from experiments.runner import __all__  # noqa: F401
