"""Where DFA's points go on the zoo's transformer: a diagnostic behind results/README §6.

The zoo's transformer (one post-norm encoder block on digits read as 8 steps of 8) is
trained with DFA at its default points -- every block output: the positional
encoding, the attention's output and the two feed-forward layers, the last two being
residual branches that end in an Add -- and with points on the residual stream only
(after the positional encoding and after the first LayerNormalization; everything
between two points then gets the true gradient from the next point). Three seeds, two
learning rates, 15 epochs, test accuracy after the last epoch (no selection: a
diagnostic, not the protocol of the tables). Run from the repository root:

    python results/zoo/dfa_transformer_points.py > results/zoo/dfa_transformer_points.txt
"""
import os
import sys
from types import SimpleNamespace

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.getcwd())

import keras  # noqa: E402

from credit import data  # noqa: E402
from experiments.runner.models import build_model  # noqa: E402

SPEC = {"type": "transformer", "dim": 32, "heads": 2, "layers": 1, "ff": 64,
        "dropout": 0.0, "output_activation": None}
STREAM = ["positional_encoding", "layer_normalization"]

ds = data.load("digits", seed=0)
x, xt = (a.reshape(-1, 8, 8).astype("float32") for a in (ds.x_train, ds.x_test))
view = SimpleNamespace(x_train=x, x_test=xt, y_train=ds.y_train, y_test=ds.y_test,
                       num_classes=10, task="classification", name="digits")


def run(method, learning_rate, seed):
    keras.backend.clear_session()  # the layer names above, in every model
    keras.utils.set_random_seed(seed)
    model = build_model(SPEC, view)
    model.compile(keras.optimizers.Adam(learning_rate), "sparse_categorical_crossentropy",
                  metrics=["accuracy"], method=method)
    model.fit(x, ds.y_train, epochs=15, batch_size=32, verbose=0)
    accuracy = model.evaluate(xt, ds.y_test, verbose=0)[1]
    return accuracy, model.method.points


print("| points | learning rate | seed | test accuracy |")
print("|---|---|---|---|")
for seed in (0, 1, 2):
    for learning_rate in (1e-3, 3e-3):
        for at in (None, STREAM):
            accuracy, points = run({"name": "dfa", "seed": seed, "at": at}, learning_rate, seed)
            print(f"| {', '.join(points)} | {learning_rate:g} | {seed} | {accuracy:.3f} |",
                  flush=True)
