"""The experiment runner: configs -> one folder per run, resumable, parallel; tables.

Modules, by concern:

- :mod:`~experiments.runner.files`: atomic writing (``write_atomic``, ``write_json``,
  ``write_csv``, ``write_table``), shared by every experiment script;
- :mod:`~experiments.runner.folders`: run folders, ``done`` markers, claims;
- :mod:`~experiments.runner.configs`: config keys and defaults, hashes, grids, checks;
- :mod:`~experiments.runner.models`: the model zoo (mlp, cnn, resnet, transformer,
  lstm, gru) and what data each reads;
- :mod:`~experiments.runner.data`: load, subsample, validation split, views, batches;
- :mod:`~experiments.runner.training`: one run (callbacks, history.csv);
- :mod:`~experiments.runner.sweep`: validation of a sweep, execution in worker processes
  / in-process / as Ray tasks with claims, failed runs recorded, progress bar;
- :mod:`~experiments.runner.isolation`: the worker processes (a crash fails one run);
- :mod:`~experiments.runner.tuning`: per-method grids chosen on the validation split;
- :mod:`~experiments.runner.tables`: not-applicable rows and markdown views;
- :mod:`~experiments.runner.cli`: the shared command-line flags.

Example:
    >>> from experiments import runner
    >>> configs = runner.grid(["backprop", "dfa"], ["digits"], [0, 1], epochs=5)
    >>> results = runner.run_sweep(configs, "/tmp/demo/runs", workers=2)   # doctest: +SKIP
"""

from experiments.runner.configs import (DEFAULTS, RESERVED, ConfigError, canonical_json,
                                        complete, grid, run_id)
from experiments.runner.data import Splits, load_data
from experiments.runner.files import read_json, write_atomic, write_csv, write_json, write_table
from experiments.runner.models import MODELS, NotApplicable, build_model, register_model
from experiments.runner.sweep import RunResult, run_one, run_sweep, validate
from experiments.runner.tables import annotate, display

__all__ = ["DEFAULTS", "MODELS", "RESERVED", "ConfigError", "NotApplicable", "RunResult",
           "Splits", "annotate", "build_model", "canonical_json", "complete", "display",
           "grid", "load_data", "read_json", "register_model", "run_id", "run_one",
           "run_sweep", "validate", "write_atomic", "write_csv", "write_json", "write_table"]
