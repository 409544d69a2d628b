"""DFA's default points on a 2-block post-norm transformer encoder over digits.

The zoo's transformer with two encoder blocks (post-norm: attention, Add,
LayerNormalization, feed-forward, Add, LayerNormalization) reads each 8x8 digit as 8
steps of 8 features. It is trained with backprop and with DFA at three placements:
the default ``at="stream"`` (after the positional encoding, and one point per encoder
block, after its second layer normalisation: LightOn's "macro" placement),
``at="residuals"`` (after each of the four residual merges and their normalisation) and
``at="blocks"`` (the earlier default: every block output, the attention and both
feed-forward layers of each residual branch included). Adam 1e-3, batch 32, 10 epochs,
three seeds; test accuracy after the last epoch (no selection: a diagnostic, not the
protocol of the tables). Run from the repository root (about 15 minutes on 2 cores):

    python results/zoo/dfa_stream_points.py > results/zoo/dfa_stream_points.txt
"""
import os
import sys
import time
from types import SimpleNamespace

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.getcwd())

import keras  # noqa: E402

from credit import data  # noqa: E402
from experiments.runner.models import build_model  # noqa: E402

SPEC = {"type": "transformer", "dim": 32, "heads": 2, "layers": 2, "ff": 64,
        "dropout": 0.0, "output_activation": None}
EPOCHS = int(os.environ.get("EPOCHS", 10))
SEEDS = [int(s) for s in os.environ.get("SEEDS", "0,1,2").split(",")]

ds = data.load("digits", seed=0)
x, xt = (a.reshape(-1, 8, 8).astype("float32") for a in (ds.x_train, ds.x_test))
view = SimpleNamespace(x_train=x, x_test=xt, y_train=ds.y_train, y_test=ds.y_test,
                       num_classes=10, task="classification", name="digits")


def run(method, seed, learning_rate=1e-3):
    keras.backend.clear_session()  # the same layer names in every model
    keras.utils.set_random_seed(seed)
    model = build_model(SPEC, view)
    model.compile(keras.optimizers.Adam(learning_rate), "sparse_categorical_crossentropy",
                  metrics=["accuracy"], method=method)
    model.fit(x, ds.y_train, epochs=EPOCHS, batch_size=32, verbose=0)
    accuracy = model.evaluate(xt, ds.y_test, verbose=0)[1]
    return accuracy, model.method.points


print(f"{EPOCHS} epochs, Adam 1e-3, batch 32, {len(x)} training and {len(xt)} test digits")
print()
print("| method | points | seed | test accuracy | seconds |")
print("|---|---|---|---|---|")
for seed in SEEDS:
    for label, method in (("backprop", "backprop"),
                          ("dfa (default: stream)", {"name": "dfa", "seed": seed}),
                          ("dfa at='residuals'", {"name": "dfa", "seed": seed,
                                                  "at": "residuals"}),
                          ("dfa at='blocks'", {"name": "dfa", "seed": seed, "at": "blocks"})):
        start = time.time()
        accuracy, points = run(method, seed)
        print(f"| {label} | {', '.join(points) or '-'} | {seed} | {accuracy:.3f} | "
              f"{time.time() - start:.0f} |", flush=True)
