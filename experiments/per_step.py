"""DFA and DRTP per time step ("random e-prop") against the whole-sequence rule and BPTT.

A small sequence-to-sequence task with a memory of ``lag`` steps: two input features per
step, Gaussian; the class at step t is ``2 [x_t,0 > 0] + [x_{t-lag},0 > 0]`` (4 classes,
chance 0.25; before step ``lag`` the second bit is 0). A loss at every step. Model:
``LSTM(32, return_sequences=True)`` then ``Dense(4)``, T = 10 steps, 1,024 training and
512 test sequences, Adam (learning rate 0.01; 0.003 for DRTP, whose signal is not divided
by the batch), batch 32, 10 epochs.

Methods: backprop (BPTT); DFA with ``through_time="eprop"`` (the default on this model:
each step's error projected to that step's hidden state, the LSTM keeping only its carry
through time), ``"per_step"`` (every state cut) and ``"bptt"`` (the whole sequence's
error projected once, BPTT inside the LSTM); DRTP with ``"eprop"``.

Run: ``python -m experiments.per_step [--seeds 0 1 2] [--lags 1 3] [--out results]``
(``--quick``: one seed, lag 1, 2 epochs, into ``<out>/per_step_quick``). Writes
``<out>/per_step/per_step.csv`` (one row per run: lag, seed, method, test accuracy) and
``per_step.md`` (mean and per-seed accuracy per lag and method).
"""

import argparse
import os

import numpy as np

METHODS = (
    ("backprop (BPTT)", "backprop"),
    ("DFA, eprop", {"name": "dfa", "through_time": "eprop"}),
    ("DFA, per_step", {"name": "dfa", "through_time": "per_step"}),
    ("DFA, bptt (whole sequence)", {"name": "dfa", "through_time": "bptt"}),
    ("DRTP, eprop", {"name": "drtp", "through_time": "eprop"}),
)


def task(lag, n, steps, seed):
    """``(x, y)``: ``x`` of shape (n, steps, 2), ``y`` the class per step (n, steps)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, steps, 2)).astype("float32")
    previous = np.concatenate([np.zeros((n, lag)), x[:, :-lag, 0]], axis=1)
    y = (x[:, :, 0] > 0).astype("int32") * 2 + (previous > 0).astype("int32")
    return x, y


def run(lag, seed, method, epochs=10, steps=10):
    """Test accuracy of one run."""
    import keras

    import credit

    x, y = task(lag, 1024, steps, 100 + seed)
    xt, yt = task(lag, 512, steps, 200 + seed)
    keras.utils.set_random_seed(seed)
    if isinstance(method, dict):
        method = dict(method, seed=seed)
    model = credit.Sequential([keras.Input((steps, 2)),
                               keras.layers.LSTM(32, return_sequences=True),
                               keras.layers.Dense(4)])
    drtp = isinstance(method, dict) and method["name"] == "drtp"
    model.compile(keras.optimizers.Adam(0.003 if drtp else 0.01),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"], method=method)
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    return float(model.evaluate(xt, yt, verbose=0)[1])


def table(rows):
    """Markdown: per lag, each method's mean test accuracy and the per-seed values."""
    import pandas as pd

    frame = pd.DataFrame(rows, columns=["lag", "seed", "method", "accuracy"])
    lines = ["| lag | method | mean accuracy | per seed |", "|---|---|---|---|"]
    for (lag, method), group in frame.groupby(["lag", "method"], sort=False):
        values = ", ".join(f"{v:.3f}" for v in group.sort_values("seed")["accuracy"])
        lines.append(f"| {lag} | {method} | {group['accuracy'].mean():.3f} | {values} |")
    return frame, "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--lags", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--out", default="results")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    epochs = 10
    folder = os.path.join(args.out, "per_step")
    if args.quick:
        args.seeds, args.lags, epochs = args.seeds[:1], args.lags[:1], 2
        folder += "_quick"
    os.makedirs(folder, exist_ok=True)
    rows = []
    for lag in args.lags:
        for seed in args.seeds:
            for label, method in METHODS:
                accuracy = run(lag, seed, method, epochs=epochs)
                rows.append((lag, seed, label, accuracy))
                print(f"lag {lag} seed {seed} {label}: {accuracy:.3f}", flush=True)
    frame, text = table(rows)
    frame.to_csv(os.path.join(folder, "per_step.csv"), index=False)
    header = (f"Test accuracy per step (chance 0.25), LSTM(32), T = 10, {epochs} epochs "
              f"(`python -m experiments.per_step`; seeds {args.seeds}).\n\n")
    with open(os.path.join(folder, "per_step.md"), "w") as f:
        f.write(header + text)
    print(text)
    return frame


if __name__ == "__main__":
    main()
