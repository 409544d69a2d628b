"""Per-method hyperparameter tuning on the validation split.

A **tuning grid** maps config keys to lists of values; ``"method_config.<name>"``
tunes a hyperparameter of the method. A grid spec may hold one grid for every method
and per-method grids (under the method's name or alias) that replace or add keys::

    {"learning_rate": [3e-4, 1e-3, 3e-3],
     "dfa": {"learning_rate": [1e-4, 3e-4, 1e-3]},
     "sg": {"method_config.synthesizer_learning_rate": [1e-4, 1e-3]}}

For each (data set, model, method), every point of its grid is trained with the tuning
seeds (each point is a run folder like any other, so tuning resumes), the point with
the best mean validation metric -- at each run's best epoch, read by
``credit.results.run_table`` -- is chosen (ties: the first in grid order; a diverged run
counts as the worst), and the method's final seeds run at that point. The test split
plays no part in the choice.

Example:
    >>> spec = parse_grid(["lr"], None)
    >>> grid_for(spec, "dfa")
    {'learning_rate': [0.0001, 0.0003, 0.001, 0.003, 0.01]}
    >>> [c["learning_rate"] for c in expand({"method": "dfa"}, {"learning_rate": [0.1, 1.0]})]
    [0.1, 1.0]
"""

import copy
import itertools
import json
import math
import pathlib

import pandas as pd

from experiments.runner import configs as configs_lib

__all__ = ["ALIASES", "DEFAULT_GRIDS", "TuneError", "choose", "expand", "grid_for",
           "parse_grid", "point_of", "set_key"]

#: The grid of each key that ``--tune`` may name without a grid spec.
# Learning rates a factor of about 3 apart over two decades: Adam's usual range, wide
# enough that a method's best setting is rarely at an edge of the grid.
DEFAULT_GRIDS = {"learning_rate": [1e-4, 3e-4, 1e-3, 3e-3, 1e-2],
                 "batch_size": [32, 64, 128]}
#: Short names accepted by ``--tune``.
ALIASES = {"lr": "learning_rate", "bs": "batch_size"}
_FIXED = ("method", "dataset", "seed")


class TuneError(ValueError):
    """A tuning grid is invalid."""


def _check_key(key, where):
    if key.startswith("method_config."):
        if not key[len("method_config."):]:
            raise TuneError(f"{where}: key {key!r} names no hyperparameter; write e.g. "
                            "'method_config.scale'.")
        return key
    key = ALIASES.get(key, key)
    if key in _FIXED or key not in configs_lib.REQUIRED + tuple(configs_lib.DEFAULTS):
        valid = [k for k in configs_lib.REQUIRED + tuple(configs_lib.DEFAULTS) if k not in _FIXED]
        raise TuneError(f"{where}: cannot tune {key!r}; tune a config key ({', '.join(valid)}) "
                        "or a method hyperparameter as 'method_config.<name>'.")
    return key


def _check_values(key, values, where):
    if not isinstance(values, list) or not values:
        raise TuneError(f"{where}: the values of {key!r} must be a non-empty list, got "
                        f"{values!r}; e.g. {{\"learning_rate\": [0.0003, 0.001, 0.003]}}.")
    return values


def parse_grid(names, spec, where="--tune-grid"):
    """The grid spec of ``--tune NAMES`` and ``--tune-grid SPEC``.

    Args:
        names: keys to tune with their :data:`DEFAULT_GRIDS` (``["lr"]``), or None.
        spec: None, a dict, JSON text, or the path of a JSON file (see the module
            docstring). Its grids win over the defaults.
        where: the flag named in error messages.

    Returns:
        ``{"*": common grid, canonical method name: grid, ...}``.

    Raises:
        TuneError: naming the bad key or value and the fix.
    """
    grids = {"*": {}}
    for name in names or []:
        key = _check_key(name, "--tune")
        if key not in DEFAULT_GRIDS:
            raise TuneError(f"--tune: {name!r} has no default grid (defaults exist for "
                            f"{', '.join(DEFAULT_GRIDS)}); give its values with "
                            f"--tune-grid '{{\"{key}\": [...]}}'.")
        grids["*"][key] = list(DEFAULT_GRIDS[key])
    if spec is None:
        return grids
    if isinstance(spec, (str, pathlib.Path)):
        text = str(spec)
        if not text.lstrip().startswith("{"):
            path = pathlib.Path(text)
            if not path.is_file():
                raise TuneError(f"{where}: {text!r} is neither JSON text nor a file; pass "
                                "e.g. '{\"learning_rate\": [0.001, 0.003]}' or grid.json.")
            text = path.read_text()
        try:
            spec = json.loads(text)
        except ValueError as err:
            raise TuneError(f"{where}: not valid JSON ({err}); pass e.g. "
                            "'{\"learning_rate\": [0.001, 0.003]}'.") from None
    if not isinstance(spec, dict):
        raise TuneError(f"{where}: a grid spec is a JSON object, got {spec!r}.")
    import credit

    for key, value in spec.items():
        if isinstance(value, dict):
            try:
                method = configs_lib.complete({"method": key})["method"]
                credit.get(method)
            except (ValueError, TypeError) as err:
                raise TuneError(f"{where}: {key!r} is neither a config key nor a method "
                                f"({err}).") from None
            grid = grids.setdefault(method, {})
            for k, values in value.items():
                grid[_check_key(k, f"{where} ({key})")] = _check_values(k, values, where)
        else:
            grids["*"][_check_key(key, where)] = _check_values(key, value, where)
    return grids


def grid_for(grids, method):
    """The grid of one method: the common grid updated by the method's own."""
    method = configs_lib.complete({"method": method})["method"]
    return {**grids.get("*", {}), **grids.get(method, {})}


def set_key(config, key, value):
    """Set ``key`` (``"learning_rate"`` or ``"method_config.scale"``) in a config copy."""
    config = copy.deepcopy(config)
    if key.startswith("method_config."):
        config["method_config"] = {**config.get("method_config", {}),
                                   key[len("method_config."):]: value}
    else:
        config[key] = value
    return config


def point_of(config, keys):
    """The values of ``keys`` in a config, as a dict."""
    out = {}
    for key in keys:
        if key.startswith("method_config."):
            out[key] = config.get("method_config", {}).get(key[len("method_config."):])
        else:
            out[key] = config.get(key)
    return out


def expand(config, grid):
    """The configs of every point of ``grid`` (cartesian product, in grid order)."""
    keys = list(grid)
    out = []
    for values in itertools.product(*(grid[k] for k in keys)):
        c = config
        for key, value in zip(keys, values):
            c = set_key(c, key, value)
        out.append(c)
    return out


def choose(candidates, runs, task_of):
    """Pick each group's best grid point on the validation split.

    Args:
        candidates: ``{group: [(point dict, [run ids of the tuning seeds]), ...]}`` in
            grid order.
        runs: ``credit.results.run_table`` output covering those runs.
        task_of: ``fn(group) -> "classification" or "regression"``.

    Returns:
        ``(chosen {group: point dict}, table)``: one table row per group and point:
        the point's values, ``val_mean`` (mean validation metric of its seeds; NaN if
        one diverged), ``n``, ``diverged`` and ``chosen``.
    """
    values = runs.set_index("run")
    chosen, rows = {}, []
    for group, points in candidates.items():
        higher = task_of(group) == "classification"
        best, best_score = None, -math.inf
        for point, run_ids in points:
            present = values.loc[values.index.intersection(run_ids)]
            diverged = int((present["status"] == "diverged").sum())
            val = present["val"]
            score = float(val.mean()) if len(val) and not diverged and val.notna().all() else math.nan
            rank = (score if higher else -score) if math.isfinite(score) else -math.inf
            if best is None or rank > best_score:
                best, best_score = point, rank
            rows.append({"group": group, **point, "val_mean": score, "n": len(present),
                         "diverged": diverged})
        chosen[group] = best
        for row in rows:
            if row["group"] == group:
                row["chosen"] = all(row.get(k) == v for k, v in best.items())
    return chosen, pd.DataFrame(rows)
