"""Tables of a sweep: the not-applicable and failed runs added, short model names, markdown
views.

Example:
    >>> table = annotate(credit.results.accuracy_table(df), run_results)  # doctest: +SKIP
    >>> print(credit.results.to_markdown(display(table, "test_mean")))    # doctest: +SKIP
"""

import json
import math
import re

import pandas as pd

from experiments.runner.folders import STATUS_FAILED, STATUS_NA

__all__ = ["annotate", "display", "model_key", "short_model", "short_reason"]


def model_key(spec):
    """The ``model`` value that ``credit.results.load_runs`` gives a model spec."""
    if spec is None or isinstance(spec, (str, int, float, bool)):
        return spec
    return json.dumps(spec, sort_keys=True)


def short_model(value):
    """``'{"type": "mlp", ...}'`` -> ``"mlp"``; other values unchanged."""
    try:
        spec = json.loads(value) if isinstance(value, str) else value
    except ValueError:
        return value
    return spec.get("type", value) if isinstance(spec, dict) else value


def short_reason(reason):
    """The first clause of a not-applicable reason without its parentheses, for a cell.

    Example:
        >>> short_reason("layer 'add' (Add) is not part of a chain (it has 2 input(s)); "
        ...              "use backprop")
        "layer 'add' is not part of a chain"
    """
    first = reason.split(";")[0].split(". ")[0]
    previous = None
    while previous != first:  # innermost parentheses first
        previous, first = first, re.sub(r"\s*\([^()]*\)", "", first)
    return " ".join(first.split()).rstrip(".")


def annotate(table, results):
    """Add the not-applicable and the failed runs of a sweep to a table from
    ``credit.results``.

    Every (method, dataset[, model]) that was skipped because it does not apply and
    has no row gets one, with NaN numbers, zero counts and the reason in a ``note``
    column (the other rows get ""). If runs failed (their training raised or their
    process died), a ``failed`` column counts them per row, a row whose runs all failed
    is added like a not-applicable one, and the note gives the first failure's reason.
    Use :func:`display` for the markdown view.

    Args:
        table: ``credit.results.accuracy_table`` or ``convergence_table`` output.
        results: the :class:`experiments.runner.sweep.RunResult` list of a sweep.

    Returns:
        A new table, sorted by dataset (and model) then method.
    """
    table = table.copy()
    table["note"] = ""
    by_model = "model" in table.columns
    keys = ["method", "dataset"] + (["model"] if by_model else [])
    reasons, failed = {}, {}
    for r in results:
        if r.status not in (STATUS_NA, STATUS_FAILED):
            continue
        key = (r.config["method"], r.config["dataset"])
        if by_model:
            key += (model_key(r.config["model"]),)
        if r.status == STATUS_NA:
            reasons.setdefault(key, f"not applicable: {short_reason(r.reason)}")
        else:
            failed[key] = failed.get(key, 0) + 1
            reasons.setdefault(key, f"failed: {r.reason}")
    if failed:
        table["failed"] = 0
    rows = []
    for key, note in reasons.items():
        mask = pd.Series(True, index=table.index)
        for column, value in zip(keys, key):
            mask &= table[column] == value
        if mask.any():
            table.loc[mask, "note"] = note
            if key in failed:
                table.loc[mask, "failed"] = failed[key]
            continue
        row = {c: math.nan for c in table.columns}
        row.update(dict(zip(keys, key)), note=note)
        same = table[table["dataset"] == key[1]]
        for column in ("metric", "target"):  # per data set, not per method
            if column in same and len(same):
                row[column] = same[column].iloc[0]
        for c in ("n", "n_reached", "n_pairs", "diverged"):
            if c in table.columns:
                row[c] = 0
        if failed:
            row["failed"] = failed.get(key, 0)
        if "reached" in table.columns:
            row["reached"] = "0/0"
        if "diff_significant" in table.columns:
            row["diff_significant"] = False
        rows.append(row)
    if rows:
        extra = pd.DataFrame(rows, columns=table.columns)
        table = pd.concat([table, extra], ignore_index=True) if len(table) else extra
        for c in ("n", "n_reached", "n_pairs", "diverged", "failed"):
            if c in table.columns:
                table[c] = table[c].astype("int64")
        if "diff_significant" in table.columns:
            table["diff_significant"] = table["diff_significant"].astype(bool)
    order = ["dataset"] + (["model"] if by_model else []) + ["method"]
    return table.sort_values(order, kind="stable").reset_index(drop=True)


def display(table, value_column="test_mean"):
    """A copy for markdown: not-applicable rows and rows whose runs all failed show
    ``n/a (not applicable: ...)`` or ``n/a (failed: ...)`` in ``value_column``, model
    specs their type name, and the ``note`` column is dropped."""
    shown = table.copy()
    if "model" in shown.columns:
        shown["model"] = shown["model"].map(short_model)
    if "note" not in shown.columns:
        return shown
    skipped = (shown["note"].str.startswith(("not applicable", "failed"))
               & shown[value_column].isna())
    if skipped.any():
        shown[value_column] = shown[value_column].astype(object)
        shown.loc[skipped, value_column] = "n/a (" + shown.loc[skipped, "note"] + ")"
    return shown.drop(columns=["note"])
