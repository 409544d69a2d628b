"""Synthetic gradients through time against truncated BPTT (Jaderberg et al. 2016, §3.2).

Jaderberg, Czarnecki, Osindero, Vinyals, Graves, Silver, Kavukcuoglu 2016, "Decoupled
Neural Interfaces using Synthetic Gradients" (ICML 2017), train an LSTM with truncated
backpropagation through time (BPTT) and with a synthetic gradient (DNI) at each
truncation point, for truncation lengths T, on the Copy and Repeat Copy tasks (a
curriculum raises the sequence length each time it is solved; the score is the longest
length solved) and on character-level Penn Treebank (bits per character). Their finding:
DNI extends the time over which the network learns dependencies beyond T.

This script runs that grid with ``credit``: tasks x truncations x methods x seeds.

Tasks:
    ``copy``, ``repeat_copy``: ``credit.data.copy_task`` / ``repeat_copy_task`` (8-bit
    vectors; Repeat Copy with 2 repeats), one sequence per row after another, each
    sequence padded to whole windows (``tbptt_sequence_windows(..., align=True)``) and
    the state reset where each begins. ``credit.data.CopyCurriculum`` starts at length
    1 and raises the length by 1 when the error on a fresh batch of sequences (one per
    row) falls below 0.15 bits per sequence; it is measured every ``chunk_steps``
    training steps. Score: ``max_length_solved``, the longest length solved.
    ``text``: ``credit.data.pydoc_text`` (the Python documentation topics, about 465,000
    characters split like Penn Treebank, which cannot be shipped), next-character
    prediction. Training walks through the training text in pieces of ``chunk_steps``
    windows per row (each row a contiguous stretch of the text, the state reset at the
    start of a piece). Score: ``bpc``, bits per character on the test text, read with
    the state carried through each row of it (``next_step_windows(test, T, batch)``).
Methods:
    ``bptt``: backprop on the stateful LSTM: truncated BPTT (nothing crosses a window).
    ``dni``: ``"dni_through_time"``: a synthesizer (an MLP with one
    hidden layer of 256 ReLU units) on the LSTM's state (h and c together) adds
    ``0.1 * sigma * M(s_T)`` at each window's end (0.1: the factor of Jaderberg et al.'s
    recurrent experiments, as dni-pytorch reports it) and is trained by bootstrapping,
    on targets normalised by their running RMS ``sigma`` (credit's default), with Adam
    at learning rate 1e-3.
    ``cdni``: the same, conditioned on the next window's targets.
    ``dni_aux``: ``dni`` with DNI's auxiliary task (``aux_weight``, 1 by default: a
    linear head on the LSTM's first output of a window predicts the synthetic gradient
    injected at the window's end, and its error is backpropagated into the LSTM).
    The default run has ``bptt``, ``dni`` and ``cdni``; ``--horizon`` all four.
Truncations: T in 2, 3, 4, 5, 8 (the window length).

The horizon run (``--horizon``, written to ``<out>/recurrent/horizon/``): Copy only,
T = 2, 3, 5, seeds 0, 1, 2, every method, 2,500 steps, the curriculum checked every 50
steps. BPTT solves the lengths that fit in its window (a Copy sequence of length L has
2L + 1 steps) within about 1,000 steps; at T = 5 it then stays at its first unsolved
length (bounded by T, not by the budget), at T = 2 and 3 it keeps learning slowly
(results/recurrent/README.md). What the synthetic gradients add is what the run measures. ``copy_intervals.md`` gives each method's longest length with a
95% t-interval over seeds, its paired difference to BPTT, and the error each method
reached at BPTT's first unsolved length (a finer score than the longest length).

Every run takes the same number of optimizer steps (``steps``; one window of every row
per step), so a larger T sees more data. All runs of a seed start from the same weights
(``keras.utils.set_random_seed(seed)`` before building the model); the seed also seeds
the curriculum's sequences and the synthesizer. Each run uses one CPU thread.

Outputs, under ``<out>/recurrent/`` (``<out>/recurrent_quick/`` with --quick, so that a quick
run never overwrites the full tables):
    ``runs/<hash>/``: one folder per run (named by a hash of its config) with
    ``config.json``, ``result.json``, ``curve.csv`` (copy tasks: the length, the error
    and whether it was solved at every evaluation; text: validation bpc), then
    ``done``. A finished run is not trained again: an interrupted sweep resumes.
    ``summary.csv`` / ``.md``: one row per run: ``task, method, truncation, seed,
    max_length_solved, bpc`` (empty where not applicable).
    ``runs.csv`` / ``.md``: the same runs in more detail: ``solved_at`` (the step at
    which the longest length was solved), ``next_error`` (the lowest error reached at
    the next length, in bits per sequence), ``valid_bpc``, ``sg_loss`` (the
    synthesizer's regression loss over the last tenth of training, in units of its
    targets' mean square: 1 is what predicting zero scores), ``steps``, ``seconds``.
    ``copy.md``, ``repeat_copy.md``, ``text.md`` (and ``.csv``): per truncation, each
    method's score (mean ± std over seeds) and DNI's and cDNI's difference to BPTT.
    ``copy_intervals.md`` / ``repeat_copy_intervals.md`` (and ``.csv``): per T and
    method, the longest length with a 95% t-interval over seeds, its paired difference
    to BPTT, and the error reached at BPTT's first unsolved length (with its paired
    difference); ``copy_reference_error.png`` (``repeat_copy_...``) shows that error.
    ``horizon.png``: longest length solved per T (copy tasks) and test bpc per T
    (text); ``curriculum_copy.png``, ``curriculum_repeat_copy.png``: the curriculum's
    length over training, per T.

Usage:
    python -m experiments.recurrent                       # the full run (~50 min, 1 core)
    python -m experiments.recurrent --quick               # smoke run, about 1 minute
    python -m experiments.recurrent --tasks copy --truncations 2,8 --seeds 0 1
    python -m experiments.recurrent --horizon             # the horizon run (2 processes:
    python -m experiments.recurrent --horizon             #  both share the grid), then
    python -m experiments.recurrent --horizon --tables-only  # the tables of all runs
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import hashlib  # noqa: E402
import math  # noqa: E402
import pathlib  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import tensorflow as tf  # noqa: E402

import credit  # noqa: E402
from credit import data as data_lib  # noqa: E402
from credit import results as results_lib  # noqa: E402
from experiments.runner import cli, folders  # noqa: E402
from experiments.runner.configs import canonical_json  # noqa: E402
from experiments.runner.files import (read_json, write_atomic, write_csv,  # noqa: E402
                                      write_json, write_table)

__all__ = ["TASKS", "METHODS", "DEFAULT_METHODS", "TRUNCATIONS", "Settings", "QUICK",
           "HORIZON", "method_spec",
           "build_model", "train_copy", "train_text", "run_one", "run", "summarize",
           "task_table", "reference_errors", "interval_table", "write_outputs", "main"]

TASKS = ("copy", "repeat_copy", "text")
METHODS = ("bptt", "dni", "cdni", "dni_aux")
#: The methods of the default (non-horizon) run, as committed before ``dni_aux`` existed.
DEFAULT_METHODS = ("bptt", "dni", "cdni")
TRUNCATIONS = (2, 3, 4, 5, 8)
DEFAULT_SEEDS = (0,)
SUMMARY_COLUMNS = ["task", "method", "truncation", "seed", "max_length_solved", "bpc"]
RUN_COLUMNS = ["task", "method", "truncation", "seed", "max_length_solved", "solved_at",
               "next_error", "bpc", "valid_bpc", "sg_loss", "steps", "seconds"]


@dataclasses.dataclass(frozen=True)
class Settings:
    """What every run of one invocation shares (part of each run's config and hash).

    Attributes:
        units: LSTM units.
        batch_size: rows (sequences side by side), the stateful batch size.
        steps: optimizer steps per run (one window per row each).
        chunk_steps: steps between two curriculum evaluations (copy tasks) and the
            length of a text piece, in windows per row (text).
        learning_rate: Adam's learning rate for the network.
        clipnorm: gradient-norm clipping of the network's updates (None: off).
        bits: width of the Copy vectors.
        repeats: copies asked for in Repeat Copy.
        embedding: width of the character embedding (text).
        text_evals: validation evaluations over a text run (curve.csv).
        synthesizer: ``"linear"`` or ``"mlp"`` (DNI's synthesizer on the LSTM state).
        hidden_units: the MLP synthesizer's hidden widths.
        sg_learning_rate: the synthesizers' Adam learning rate.
        scale: the factor on the injected synthetic gradient.
        threshold: error (bits per sequence) below which the curriculum counts a Copy
            length as solved.
        aux_weight: weight of DNI's auxiliary task for ``dni_aux`` (the other methods
            ignore it).
    """

    units: int = 128
    batch_size: int = 32
    steps: int = 6000
    chunk_steps: int = 100
    learning_rate: float = 3e-3
    clipnorm: float | None = 1.0
    bits: int = 8
    repeats: int = 2
    embedding: int = 32
    text_evals: int = 4
    synthesizer: str = "mlp"
    hidden_units: tuple = (256,)
    sg_learning_rate: float = 1e-3
    scale: float = 0.1
    threshold: float = data_lib.SOLVED_BITS
    aux_weight: float = 1.0


#: Settings fields added after the first committed run: left out of a run's config (and
#: so of its hash) while they hold these values, so that older run folders still match.
_LATER_FIELDS = {"threshold": data_lib.SOLVED_BITS, "aux_weight": 1.0}

QUICK = Settings(units=32, steps=300, chunk_steps=50, text_evals=2, hidden_units=(64,))
QUICK_TRUNCATIONS = (3,)

#: The horizon run (``--horizon``): Copy only, every method, T = 2 to 5, three seeds,
#: a curriculum checked every 50 steps, and 2,500 steps: about 3 times what BPTT needs
#: for the lengths that fit in its window. Its longest length is then bounded by the
#: truncation at T = 5, not at T = 2 or 3 (results/recurrent/README.md).
HORIZON = Settings(steps=2500, chunk_steps=50)
HORIZON_TASKS = ("copy",)
HORIZON_TRUNCATIONS = (2, 3, 5)
HORIZON_SEEDS = (0, 1, 2)


# ---------------------------------------------------------------------------
# One run


def method_spec(method, settings, seed):
    """The ``compile(method=...)`` argument of a method of :data:`METHODS`.

    ``"bptt"`` is ``"backprop"``; ``"dni"`` and ``"cdni"`` are ``"dni_through_time"``
    and ``"cdni_through_time"``; ``"dni_aux"`` is ``"dni_through_time"`` with DNI's
    auxiliary task at ``settings.aux_weight``.

    Example:
        >>> method_spec("dni_aux", Settings(), 0)["aux_weight"]
        1.0
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not one of {', '.join(METHODS)}; pass for "
                         "example method='dni'.")
    if method == "bptt":
        return "backprop"
    spec = {"name": f"{method.removesuffix('_aux')}_through_time", "seed": seed,
            "synthesizer": settings.synthesizer, "hidden_units": list(settings.hidden_units),
            "optimizer": "adam", "learning_rate": settings.sg_learning_rate,
            "scale": settings.scale}
    if method.endswith("_aux"):
        spec["aux_weight"] = settings.aux_weight
    return spec


def build_model(task, truncation, settings, seed, vocab_size=None):
    """The stateful LSTM of a task (uncompiled), its weights drawn from ``seed``.

    Copy tasks: ``Input(batch_shape=(batch, T, inputs)) -> LSTM(units, stateful) ->
    Dense(targets)`` (logits). Text: ``Input(batch_shape=(batch, T)) ->
    Embedding(vocab, embedding) -> LSTM -> Dense(vocab)`` (logits).
    """
    keras.utils.set_random_seed(seed)
    b, t = settings.batch_size, truncation
    if task == "text":
        head = [keras.Input(batch_shape=(b, t), dtype="int32"),
                keras.layers.Embedding(vocab_size, settings.embedding, name="embedding")]
        outputs = vocab_size
    else:
        extra = 1 if task == "copy" else 2       # delimiter (and repeat count)
        head = [keras.Input(batch_shape=(b, t, settings.bits + extra))]
        outputs = settings.bits + extra - 1      # bits (and the end marker)
    return credit.Sequential(head + [
        keras.layers.LSTM(settings.units, stateful=True, return_sequences=True, name="lstm"),
        keras.layers.Dense(outputs, name="readout"),
    ], name=f"{task}_lstm{settings.units}_T{truncation}")


def _compile(model, task, method, settings, seed):
    loss = (keras.losses.SparseCategoricalCrossentropy(from_logits=True) if task == "text"
            else keras.losses.BinaryCrossentropy(from_logits=True))
    model.compile(keras.optimizers.Adam(settings.learning_rate, clipnorm=settings.clipnorm),
                  loss, method=method_spec(method, settings, seed))


def copy_error(model, windows):
    """Bits per sequence of ``model`` on Copy windows (state reset per sequence)."""
    logits = model.predict(windows.inputs, batch_size=windows.batch_size, verbose=0,
                           callbacks=[credit.recurrent.StatefulWindows(windows)])
    return data_lib.bits_error(windows.to_rows(windows.targets), windows.to_rows(logits),
                               windows.to_rows(windows.mask), from_logits=True)


def train_copy(task, method, truncation, seed, settings, log=None):
    """Train one Copy / Repeat Copy run under the curriculum.

    Returns:
        ``(result, curve)``: a dict with ``max_length_solved`` and the last length
        tried, and a DataFrame with one row per evaluation (step, length, error in
        bits per sequence, solved).
    """
    model = build_model(task, truncation, settings, seed)
    _compile(model, task, method, settings, seed)
    curriculum = data_lib.CopyCurriculum(task, bits=settings.bits, repeats=settings.repeats,
                                         max_repeats=max(settings.repeats, 10),
                                         threshold=settings.threshold, seed=seed)
    b, t = settings.batch_size, truncation
    steps, rows = 0, []
    while steps < settings.steps:
        length = curriculum.length
        windows_per_sequence = -(-_sequence_steps(task, length, settings) // t)
        per_row = max(1, min(settings.chunk_steps, settings.steps - steps)
                      // windows_per_sequence)
        train = data_lib.tbptt_sequence_windows(curriculum.batch(per_row * b), window=t,
                                                batch_size=b, align=True)
        history = model.fit(train, epochs=1, verbose=0)
        steps += train.n_windows
        loss = history.history["loss"][-1]
        if not np.isfinite(loss):
            rows.append({"step": steps, "length": length, "error": math.nan,
                         "solved": False, "loss": loss, "sg_loss": math.nan})
            break
        check = data_lib.tbptt_sequence_windows(curriculum.batch(b), window=t,
                                                batch_size=b, align=True)
        error = copy_error(model, check)
        solved = curriculum.update(error)
        rows.append({"step": steps, "length": length, "error": error, "solved": solved,
                     "loss": loss, "sg_loss": history.history.get("sg_loss", [math.nan])[-1]})
        if log and solved:
            log(f"    step {steps}: length {length} solved ({error:.3f} bits)")
    return ({"max_length_solved": curriculum.longest_solved, "last_length": curriculum.length,
             "steps": steps, "diverged": bool(rows and not np.isfinite(rows[-1]["error"]))},
            pd.DataFrame(rows, columns=["step", "length", "error", "solved", "loss",
                                        "sg_loss"]))


def _sequence_steps(task, length, settings):
    if task == "copy":
        return 2 * length + 1
    return length + 1 + settings.repeats * length + 1


def text_bpc(model, ids, truncation, batch_size):
    """Bits per character of ``model`` on ``ids``, the state carried through each row."""
    windows = data_lib.next_step_windows(ids, window=truncation, batch_size=batch_size)
    logits = model.predict(windows.inputs, batch_size=batch_size, verbose=0,
                           callbacks=[credit.recurrent.StatefulWindows(windows)])
    return data_lib.bits_per_character(windows.targets, logits, from_logits=True)


def train_text(method, truncation, seed, settings, log=None):
    """Train one character-level language model run.

    Returns:
        ``(result, curve)``: a dict with the test ``bpc`` (and validation bpc), and a
        DataFrame of the validation bpc over training.
    """
    corpus = data_lib.pydoc_text()
    model = build_model("text", truncation, settings, seed, vocab_size=corpus.vocab_size)
    _compile(model, "text", method, settings, seed)
    b, t = settings.batch_size, truncation
    piece = settings.chunk_steps * b * t               # characters per piece
    marks = {round(settings.steps * (k + 1) / settings.text_evals)
             for k in range(settings.text_evals)}
    steps, start, rows, diverged, pieces = 0, 0, [], False, []
    while steps < settings.steps:
        size = min(settings.chunk_steps, settings.steps - steps) * b * t
        if start + size + 1 > len(corpus.train):
            start = 0
        windows = data_lib.next_step_windows(corpus.train[start:start + size + 1], t, b)
        start += piece
        history = model.fit(windows, epochs=1, verbose=0)
        before, steps = steps, steps + windows.n_windows
        pieces.append((history.history["loss"][-1],
                       history.history.get("sg_loss", [math.nan])[-1]))
        if not np.isfinite(history.history["loss"][-1]):
            diverged = True
            break
        if any(before < m <= steps for m in marks):
            valid = text_bpc(model, corpus.valid, t, b)
            loss, sg_loss = np.mean(pieces, axis=0)
            rows.append({"step": steps, "valid_bpc": valid, "train_bpc": loss / math.log(2),
                         "sg_loss": sg_loss})
            pieces = []
            if log:
                log(f"    step {steps}: validation {valid:.3f} bpc")
    bpc = math.nan if diverged else text_bpc(model, corpus.test, t, b)
    valid = rows[-1]["valid_bpc"] if rows else math.nan
    return ({"bpc": bpc, "valid_bpc": valid, "steps": steps, "diverged": diverged},
            pd.DataFrame(rows, columns=["step", "valid_bpc", "train_bpc", "sg_loss"]))


# ---------------------------------------------------------------------------
# Run folders


def run_config(task, method, truncation, seed, settings):
    """The config of one run: what its folder's hash is made of."""
    fields = {k: v for k, v in dataclasses.asdict(settings).items()
              if k not in _LATER_FIELDS or v != _LATER_FIELDS[k]}
    return {"experiment": "recurrent", "task": task, "method": method,
            "truncation": int(truncation), "seed": int(seed), "settings": fields}


def run_key(config):
    """The run's folder name: the first 12 hex digits of its config's SHA-256."""
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()[:12]


def run_one(config, runs, log=print):
    """Train one run into ``runs/<key>/`` unless it is done; return its result dict.

    The run is claimed first (a second sweep on the same folder skips it); a folder
    without ``done`` (an interrupted run) is trained again from scratch.
    """
    key = run_key(config)
    folder = runs / key
    if folders.is_done(folder):
        return read_json(folder / "result.json")
    claim = folders.try_claim(runs, key)
    if claim is None:
        log(f"  {key} is being trained by another process; skipped")
        return None
    try:
        if folders.is_done(folder):
            return read_json(folder / "result.json")
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        write_json(folder / "config.json", config)
        settings = Settings(**{**config["settings"],
                               "hidden_units": tuple(config["settings"]["hidden_units"])})
        begin = time.perf_counter()
        keras.backend.clear_session()
        if config["task"] == "text":
            result, curve = train_text(config["method"], config["truncation"],
                                       config["seed"], settings, log)
        else:
            result, curve = train_copy(config["task"], config["method"],
                                       config["truncation"], config["seed"], settings, log)
        result.update({k: config[k] for k in ("task", "method", "truncation", "seed")})
        result["seconds"] = round(time.perf_counter() - begin, 1)
        write_csv(curve, folder / "curve.csv")
        write_json(folder / "result.json", result)
        write_atomic(folder / "done", "")
        return result
    finally:
        claim.release()


def run(tasks, methods, truncations, seeds, settings, out, log=print, train=True):
    """Train (or read back) every run of the grid; return the summary DataFrame.

    With ``train=False`` only finished runs are read back; the others are left out.
    """
    runs = pathlib.Path(out) / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    grid = [(task, truncation, seed, method) for task in tasks for truncation in truncations
            for seed in seeds for method in methods]
    results, begin = [], time.perf_counter()
    for i, (task, truncation, seed, method) in enumerate(grid, 1):
        config = run_config(task, method, truncation, seed, settings)
        cached = folders.is_done(runs / run_key(config))
        log(f"[{i}/{len(grid)}] {task} T={truncation} {method} seed {seed}"
            f"{' (done)' if cached else ''}  ({time.perf_counter() - begin:.0f} s)")
        if not cached and not train:
            log("    not finished: left out (--tables-only)")
            continue
        result = run_one(config, runs, log)
        if result is not None:
            results.append(result)
            if not cached:
                score = (f"max length solved {result['max_length_solved']}"
                         if task != "text" else f"test {result['bpc']:.3f} bpc")
                log(f"    {score} in {result['seconds']:.0f} s")
    return summarize(results)


# ---------------------------------------------------------------------------
# Tables and figures


def _sorted(frame):
    order = {m: i for i, m in enumerate(METHODS)}
    tasks = {t: i for i, t in enumerate(TASKS)}
    return frame.sort_values(
        ["task", "truncation", "method", "seed"],
        key=lambda c: c.map(tasks) if c.name == "task" else
        c.map(order) if c.name == "method" else c).reset_index(drop=True)


def summarize(results):
    """One row per run: ``task, method, truncation, seed, max_length_solved, bpc``."""
    rows = [{"task": r["task"], "method": r["method"], "truncation": r["truncation"],
             "seed": r["seed"], "max_length_solved": r.get("max_length_solved"),
             "bpc": r.get("bpc")} for r in results]
    frame = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    frame["max_length_solved"] = frame["max_length_solved"].astype("Int64")
    frame["bpc"] = frame["bpc"].astype(float)
    return _sorted(frame)


def run_table(out, configs):
    """The finished runs of ``configs`` in detail (see the module docstring)."""
    rows = []
    for config in configs:
        folder = pathlib.Path(out) / "runs" / run_key(config)
        if not folders.is_done(folder):
            continue
        result = read_json(folder / "result.json")
        curve = pd.read_csv(folder / "curve.csv")
        row = {k: config[k] for k in ("task", "method", "truncation", "seed")}
        row.update({k: result.get(k) for k in ("max_length_solved", "bpc", "valid_bpc",
                                               "steps", "seconds")})
        tail = curve["sg_loss"].iloc[-max(1, len(curve) // 10):] if len(curve) else []
        row["sg_loss"] = float(np.mean(tail)) if len(tail) else math.nan
        if config["task"] != "text" and len(curve):
            solved = curve[curve["solved"].astype(bool)]
            row["solved_at"] = int(solved["step"].max()) if len(solved) else None
            after = curve[curve["length"] == result["max_length_solved"] + 1]
            row["next_error"] = float(after["error"].min()) if len(after) else math.nan
        rows.append(row)
    frame = pd.DataFrame(rows, columns=RUN_COLUMNS)
    frame["max_length_solved"] = frame["max_length_solved"].astype("Int64")
    frame["solved_at"] = frame["solved_at"].astype("Int64")
    return _sorted(frame)


def task_table(summary, task):
    """Per truncation: each method's score (mean and std over seeds) and the paired
    difference of DNI and cDNI to BPTT (same seeds)."""
    column = "bpc" if task == "text" else "max_length_solved"
    rows = summary[summary["task"] == task].copy()
    rows[column] = rows[column].astype(float)
    table = []
    for truncation, group in rows.groupby("truncation", sort=True):
        row = {"T": int(truncation)}
        wide = group.pivot_table(index="seed", columns="method", values=column)
        for method in METHODS:
            values = wide[method].dropna() if method in wide else pd.Series(dtype=float)
            row[f"{method}_mean"] = values.mean() if len(values) else math.nan
            row[f"{method}_std"] = values.std(ddof=1) if len(values) > 1 else math.nan
        for method in METHODS[1:]:
            if method in wide and "bptt" in wide:
                diff = (wide[method] - wide["bptt"]).dropna()
                row[f"{method}_minus_bptt_mean"] = diff.mean() if len(diff) else math.nan
                row[f"{method}_minus_bptt_std"] = diff.std(ddof=1) if len(diff) > 1 else math.nan
        row["seeds"] = int(wide.shape[0])
        table.append(row)
    return pd.DataFrame(table)


def reference_errors(out, configs):
    """Per copy-task run, the lowest error (bits per sequence) it reached at its
    seed's *reference length*: the longest length BPTT solved on that task, T and seed,
    plus one (BPTT's first unsolved length). A method that solved the reference length
    scores its error there (below the threshold); one that never reached it, NaN.

    Returns:
        Columns ``task, method, truncation, seed, reference_length, reference_error``.
    """
    done = {}
    for config in configs:
        folder = pathlib.Path(out) / "runs" / run_key(config)
        if config["task"] != "text" and folders.is_done(folder):
            done[config["task"], config["method"], config["truncation"], config["seed"]] = (
                read_json(folder / "result.json"), folder)
    rows = []
    for (task, method, truncation, seed), (result, folder) in sorted(done.items()):
        base = done.get((task, "bptt", truncation, seed))
        if base is None:
            continue
        length = int(base[0]["max_length_solved"]) + 1
        curve = pd.read_csv(folder / "curve.csv")
        errors = curve.loc[curve["length"] == length, "error"].dropna()
        rows.append({"task": task, "method": method, "truncation": truncation, "seed": seed,
                     "reference_length": length,
                     "reference_error": float(errors.min()) if len(errors) else math.nan})
    return pd.DataFrame(rows, columns=["task", "method", "truncation", "seed",
                                       "reference_length", "reference_error"])


def interval_table(summary, errors, task, confidence=0.95):
    """Per truncation and method: the longest length solved (mean and Student-t
    interval over seeds), its paired difference to BPTT (same seeds), and the error at
    BPTT's first unsolved length (:func:`reference_errors`) with its paired difference.

    A difference marked significant (``*`` in markdown) has an interval that excludes 0
    (:func:`credit.results.paired_differences`).
    """
    runs = summary[summary["task"] == task].copy()
    runs["max_length_solved"] = runs["max_length_solved"].astype(float)
    errors = errors[errors["task"] == task]
    diffs = {value: results_lib.paired_differences(
        frame, baseline="bptt", value=value, by=("truncation",), confidence=confidence)
        for value, frame in (("max_length_solved", runs), ("reference_error", errors))}
    table = []
    for (truncation, method), group in runs.groupby(["truncation", "method"], sort=False):
        row = {"T": int(truncation), "method": method, "n": len(group)}
        row["longest_mean"], row["longest_ci"] = results_lib.mean_ci(
            group["max_length_solved"], confidence)
        lengths = errors.loc[errors["truncation"] == truncation, "reference_length"]
        row["reference_length"] = "/".join(str(v) for v in sorted(set(lengths)))
        mine = errors[(errors["truncation"] == truncation) & (errors["method"] == method)]
        row["error_mean"], row["error_ci"] = results_lib.mean_ci(
            mine["reference_error"], confidence)
        for name, value in (("diff", "max_length_solved"), ("error_diff", "reference_error")):
            match = diffs[value][(diffs[value]["method"] == method)
                                 & (diffs[value]["truncation"] == truncation)]
            if len(match):
                row[f"{name}_mean"] = match["diff_mean"].iloc[0]
                row[f"{name}_ci"] = match["diff_ci"].iloc[0]
                row[f"{name}_significant"] = bool(match["diff_significant"].iloc[0])
            else:
                row[f"{name}_mean"] = row[f"{name}_ci"] = math.nan
                row[f"{name}_significant"] = False
        table.append(row)
    order = {m: i for i, m in enumerate(METHODS)}
    frame = pd.DataFrame(table)
    if len(frame):
        frame = frame.sort_values(["T", "method"], key=lambda c: c.map(order)
                                  if c.name == "method" else c).reset_index(drop=True)
    return frame


def _figure(width, height):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plot_scores(summary, path):
    """Score per truncation, one line per method: the longest length solved (copy
    tasks) or test bpc (text); mean over seeds, min-max band."""
    tasks = [t for t in TASKS if t in set(summary["task"])]
    fig = _figure(4.2 * len(tasks), 3.4)
    axes = fig.subplots(1, len(tasks), squeeze=False)[0]
    for ax, task in zip(axes, tasks):
        column = "bpc" if task == "text" else "max_length_solved"
        rows = summary[summary["task"] == task]
        for method in METHODS:
            stats = rows[rows["method"] == method].groupby("truncation")[column].agg(
                lambda s: s.astype(float).mean())
            if not len(stats):
                continue
            spread = rows[rows["method"] == method].groupby("truncation")[column]
            low = spread.agg(lambda s: s.astype(float).min())
            high = spread.agg(lambda s: s.astype(float).max())
            line = ax.plot(stats.index, stats.values, "-o", label=method, markersize=4)[0]
            ax.fill_between(stats.index, low.values, high.values, alpha=0.2,
                            color=line.get_color(), linewidth=0)
        ax.set_xlabel("truncation T")
        ax.set_ylabel("test bits per character" if task == "text" else
                      "longest length solved")
        ax.set_title(task)
        ax.set_xticks(sorted(set(rows["truncation"])))
        ax.legend(fontsize="small")
    path = pathlib.Path(path)
    fig.savefig(path, format="png", dpi=100)
    return path


def plot_reference_errors(errors, task, path, confidence=0.95):
    """Per truncation, each method's error at BPTT's first unsolved length
    (:func:`reference_errors`): mean over seeds with a Student-t interval, and the
    seeds as dots."""
    rows = errors[errors["task"] == task]
    methods = [m for m in METHODS if m in set(rows["method"])]
    truncations = sorted(set(rows["truncation"]))
    fig = _figure(5.0, 3.4)
    ax = fig.subplots()
    width = 0.8 / max(1, len(methods))
    for i, method in enumerate(methods):
        for j, truncation in enumerate(truncations):
            values = rows[(rows["method"] == method) & (rows["truncation"] == truncation)][
                "reference_error"].dropna()
            if not len(values):
                continue
            x = j + (i - (len(methods) - 1) / 2) * width
            mean, half = results_lib.mean_ci(values, confidence)
            ax.bar(x, mean, width, color=f"C{i}", alpha=0.6,
                   label=method if j == 0 else None,
                   yerr=None if math.isnan(half) else half, capsize=2)
            ax.plot([x] * len(values), values, "k.", markersize=3)
    ax.axhline(data_lib.SOLVED_BITS, color="gray", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(truncations)), [f"T={t}" for t in truncations])
    ax.set_ylabel("error at BPTT's first unsolved\nlength (bits per sequence)")
    ax.set_title(f"{task}: mean ± {confidence:.0%} t-interval; dots: seeds")
    ax.legend(fontsize="small")
    path = pathlib.Path(path)
    fig.savefig(path, format="png", dpi=100)
    return path


def curriculum_frame(out, configs):
    """The copy tasks' curricula as a frame :func:`credit.results.plot_curves` reads:
    one "data set" per task and T, the training step as "epoch", the length as metric."""
    frames = []
    for config in configs:
        if config["task"] == "text":
            continue
        folder = pathlib.Path(out) / "runs" / run_key(config)
        if not folders.is_done(folder):
            continue
        curve = pd.read_csv(folder / "curve.csv")
        # A check lands a few steps past its multiple of chunk_steps (whole sequences
        # per row); round, so that the seeds of a method line up in the mean.
        chunk = config["settings"]["chunk_steps"]
        frames.append(pd.DataFrame({
            "dataset": f"{config['task']} T={config['truncation']}",
            "method": config["method"], "seed": config["seed"], "status": "done",
            "epoch": (curve["step"] / chunk).round().astype(int) * chunk,
            "length": curve["length"]}))
    return pd.concat(frames, ignore_index=True) if frames else None


def write_outputs(summary, out, configs):
    """Write ``summary``, the runs in detail, the per-task tables (CSV + markdown) and
    the figures."""
    out = pathlib.Path(out)
    written = [write_table(summary, out, "summary", floatfmt=".3f"),
               write_table(run_table(out, configs), out, "runs", floatfmt=".3f")]
    for task in TASKS:
        if task not in set(summary["task"]):
            continue
        what = ("test bits per character (lower is better)" if task == "text" else
                "longest sequence length solved (error below 0.15 bits per sequence)")
        caption = (f"{task}: {what}, per truncation T; mean ± std over seeds; "
                   "*_minus_bptt: paired difference to BPTT on the same seeds.")
        written.append(write_table(task_table(summary, task), out, task,
                                   floatfmt=".3f" if task == "text" else ".1f",
                                   caption=caption))
    errors = reference_errors(out, configs)
    for task in ("copy", "repeat_copy"):
        if task not in set(summary["task"]):
            continue
        caption = (f"{task}: longest length solved per T and method, mean ± 95% "
                   "t-interval over seeds (longest); diff: paired difference to BPTT on "
                   "the same seeds (* its interval excludes 0); reference_length: BPTT's "
                   "longest + 1 on each seed; error: the lowest error reached there, bits "
                   "per sequence (n/a: never reached); error_diff: paired, to BPTT.")
        written.append(write_table(interval_table(summary, errors, task), out,
                                   f"{task}_intervals", floatfmt=".2f", caption=caption))
        if errors["reference_error"][errors["task"] == task].notna().any():
            written.append(plot_reference_errors(errors, task,
                                                 out / f"{task}_reference_error.png"))
    if len(summary):
        written.append(plot_scores(summary, out / "horizon.png"))
    curves = curriculum_frame(out, configs)
    for task in ("copy", "repeat_copy"):
        rows = None if curves is None else curves[curves["dataset"].str.startswith(task + " ")]
        if rows is not None and len(rows):
            written.append(results_lib.plot_curves(
                rows, out / f"curriculum_{task}.png", metric="length",
                xlabel="training step"))
    return written


# ---------------------------------------------------------------------------
# Command line


def _parser():
    parser = argparse.ArgumentParser(
        prog="python -m experiments.recurrent",
        description="Truncated BPTT against synthetic gradients through time (DNI, cDNI) "
                    "on Copy, Repeat Copy and character-level text, per truncation "
                    "length (Jaderberg et al. 2016); writes tables and figures under "
                    "<out>/recurrent/.")
    parser.add_argument("--tasks", nargs="+", default=None, metavar="NAME",
                        help=f"tasks: {', '.join(TASKS)} (default all)")
    parser.add_argument("--methods", nargs="+", default=None, metavar="NAME",
                        help=f"methods: {', '.join(METHODS)} (default "
                             f"{' '.join(DEFAULT_METHODS)}; all with --horizon)")
    parser.add_argument("--truncations", nargs="+", default=None, metavar="T",
                        help=f"truncation lengths (default {' '.join(map(str, TRUNCATIONS))}; "
                             f"quick {' '.join(map(str, QUICK_TRUNCATIONS))})")
    parser.add_argument("--steps", type=cli.positive_int, default=None,
                        help=f"optimizer steps per run (default {Settings().steps}; quick "
                             f"{QUICK.steps})")
    parser.add_argument("--horizon", action="store_true",
                        help="the horizon run: Copy, methods bptt dni cdni dni_aux, T 2 3 5, "
                             f"seeds 0 1 2, {HORIZON.steps} steps, the curriculum checked "
                             f"every {HORIZON.chunk_steps} steps; files go to "
                             "DIR/recurrent/horizon/ (other flags override its choices). "
                             "Two processes of the same command share the grid; a last one "
                             "after both writes the tables of all runs")
    parser.add_argument("--tables-only", action="store_true",
                        help="train nothing: write the tables and figures of the runs of "
                             "the grid that have finished (e.g. while, or after, other "
                             "processes train the rest)")
    parser.add_argument("--threads", type=cli.positive_int, default=1,
                        help="TensorFlow threads (default 1: one core)")
    cli.add_common(parser, seeds_default="0",
                   quick_help="smoke run: small LSTM, 300 steps, T=3: under 5 minutes",
                   out_name="recurrent (recurrent_quick with --quick)")
    return parser


def _names(parser, flag, values, valid):
    names = cli.names(values) if values else list(valid)
    bad = [n for n in names if n not in valid]
    if bad or len(set(names)) != len(names) or not names:
        parser.error(f"{flag}: got {' '.join(names) or 'nothing'}; choose distinct names "
                     f"from {', '.join(valid)}. Pass for example {flag} {valid[0]}.")
    return names


def parse_args(argv=None):
    """Parse and check the command line; exit with a message naming a bad flag.

    Returns:
        ``(args, settings, tasks, methods, truncations, seeds, out)``.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if args.quick and args.horizon:
        parser.error("--quick and --horizon: pick one (--quick is a smoke run of the "
                     "default grid; for a small horizon run pass --horizon --steps 100 "
                     "--truncations 2 --seeds 0).")
    settings = QUICK if args.quick else HORIZON if args.horizon else Settings()
    if args.steps is not None:
        settings = dataclasses.replace(settings, steps=args.steps)
    tasks = _names(parser, "--tasks", args.tasks or (HORIZON_TASKS if args.horizon else None),
                   TASKS)
    methods = _names(parser, "--methods",
                     args.methods or (None if args.horizon else DEFAULT_METHODS), METHODS)
    truncations = (QUICK_TRUNCATIONS if args.quick else
                   HORIZON_TRUNCATIONS if args.horizon else TRUNCATIONS)
    if args.truncations is not None:
        try:
            truncations = [int(v) for v in cli.names(args.truncations)]
        except ValueError:
            truncations = []
        if not truncations or any(t < 1 for t in truncations) \
                or len(set(truncations)) != len(truncations):
            parser.error(f"--truncations: got {' '.join(args.truncations)}; truncation "
                         "lengths are distinct integers >= 1. Pass for example "
                         "--truncations 2 3 4 5 8.")
    seeds = (cli.seeds(args.seeds, parser) if args.seeds is not None else
             list(HORIZON_SEEDS if args.horizon else DEFAULT_SEEDS))
    # A quick run gets a folder of its own, so that it never overwrites the full tables;
    # the horizon run has its own under recurrent/.
    out = cli.check_out(parser, args.out) / ("recurrent_quick" if args.quick else "recurrent")
    if args.horizon:
        out = out / "horizon"
    return args, settings, tasks, methods, list(truncations), seeds, out


def main(argv=None):
    """Run the experiment from the command line (see the module docstring).

    Returns:
        The summary DataFrame.
    """
    args, settings, tasks, methods, truncations, seeds, out = parse_args(argv)
    try:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    except RuntimeError:  # TensorFlow already started in this process (e.g. under pytest)
        print(f"--threads {args.threads}: TensorFlow is already running in this process; "
              "its thread pools are kept as they are.", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    begin = time.perf_counter()
    print(f"tasks {tasks}, methods {methods}, T {truncations}, seeds {seeds}; LSTM "
          f"{settings.units}, {settings.steps} steps per run", flush=True)
    try:
        summary = run(tasks, methods, truncations, seeds, settings, out,
                      log=lambda line: print(line, flush=True), train=not args.tables_only)
    except KeyboardInterrupt:
        print(f"\nInterrupted. Finished runs are kept in {out / 'runs'}; run the same "
              "command again to resume.", file=sys.stderr)
        raise SystemExit(130) from None
    configs = [run_config(task, method, t, seed, settings) for task in tasks
               for t in truncations for seed in seeds for method in methods]
    write_outputs(summary, out, configs)
    for task in tasks:
        print(f"\n## {task}\n")
        print(results_lib.to_markdown(task_table(summary, task),
                                      floatfmt=".3f" if task == "text" else ".1f"))
    print(f"\nwrote {out} in {time.perf_counter() - begin:.0f} s")
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
