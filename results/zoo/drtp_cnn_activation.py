"""DRTP on the zoo's CNN with ReLU (the zoo's default) and tanh (the DRTP authors'
default for convolutional and hidden layers, ChFrenkel/DirectRandomTargetProjection,
main.py): a diagnostic behind results/README §6.

DRTP's signal y B does not shrink as the fit improves; tanh bounds the activations it
pushes, ReLU does not (a likely reason for the difference, not measured). Three seeds, two learning rates, 20
epochs (the zoo's), test accuracy after the last epoch (no selection: a diagnostic,
not the protocol of the tables). Run from the repository root:

    python results/zoo/drtp_cnn_activation.py > results/zoo/drtp_cnn_activation.txt
"""
import os
import sys
from types import SimpleNamespace

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.getcwd())

import keras  # noqa: E402

from credit import data  # noqa: E402
from experiments.runner.models import build_model  # noqa: E402

ds = data.load("digits", seed=0)
x, xt = (a.reshape(-1, 8, 8, 1).astype("float32") for a in (ds.x_train, ds.x_test))
view = SimpleNamespace(x_train=x, x_test=xt, y_train=ds.y_train, y_test=ds.y_test,
                       num_classes=10, task="classification", name="digits")

print("| activation | learning rate | seed | test accuracy |")
print("|---|---|---|---|")
for activation in ("relu", "tanh"):
    spec = {"type": "cnn", "activation": activation, "dense": [64], "filters": [16, 32],
            "kernel_size": 3, "output_activation": None}
    for learning_rate in (1e-3, 3e-3):
        for seed in (0, 1, 2):
            keras.backend.clear_session()
            keras.utils.set_random_seed(seed)
            model = build_model(spec, view)
            model.compile(keras.optimizers.Adam(learning_rate),
                          "sparse_categorical_crossentropy", metrics=["accuracy"],
                          method={"name": "drtp", "seed": seed})
            model.fit(x, ds.y_train, epochs=20, batch_size=32, verbose=0)
            accuracy = model.evaluate(xt, ds.y_test, verbose=0)[1]
            print(f"| {activation} | {learning_rate:g} | {seed} | {accuracy:.3f} |", flush=True)
